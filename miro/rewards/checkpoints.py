"""Strict, explained loading of reward checkpoints.

Real checkpoints carry things tiny test models do not: buffers that older transformers saved
(``position_ids``), aliases of tied weights, heads the score never uses, wrapper prefixes
(``module.``), half-precision storage. A loader that silently skips keys can load a checkpoint into the
wrong layout and still produce numbers; one that refuses every extra key cannot load real files. So
every MIRO loader drops only keys that a named :class:`DropRule` explains, records each dropped key with
its reason (:class:`LoadReport`, logged at INFO), and loads everything else strictly: any other extra or
missing key, or a shape mismatch, fails with one line naming the file and the first offending key.
Half-precision storage is not a mismatch: ``load_state_dict`` copies into the module's own dtype.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


class RewardCheckpointError(ValueError):
    """A checkpoint does not fit the reward's model; the message is one line naming file and key."""


@dataclass(frozen=True)
class DropRule:
    """Keys matching ``pattern`` (a regular expression, searched) are dropped, for ``reason``."""

    pattern: str
    reason: str

    def matches(self, key: str) -> bool:
        return re.search(self.pattern, key) is not None


@dataclass
class LoadReport:
    """What one loader did with one file: every dropped key and why; ``strict`` when nothing else was."""

    file: str
    dropped: dict[str, str] = field(default_factory=dict)

    def drop(self, key: str, reason: str) -> None:
        self.dropped[key] = reason

    def reasons(self) -> dict[str, int]:
        """Reason -> number of keys dropped for it."""
        counts: dict[str, int] = {}
        for reason in self.dropped.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def log(self, reward: str) -> None:
        if not self.dropped:
            log.info("%s: %s loaded strictly, no key dropped", reward, self.file)
            return
        for reason, n in self.reasons().items():
            keys = [k for k, r in self.dropped.items() if r == reason]
            log.info("%s: %s: dropped %d key(s) (%s): %s", reward, self.file, n, reason, ", ".join(keys))


def drop_keys(
    state: Mapping[str, torch.Tensor], rules: Iterable[DropRule], report: LoadReport
) -> dict[str, torch.Tensor]:
    """``state`` without the keys a rule explains; each dropped key goes into ``report``."""
    rules = tuple(rules)
    kept = {}
    for key, value in state.items():
        rule = next((r for r in rules if r.matches(key)), None)
        if rule is None:
            kept[key] = value
        else:
            report.drop(key, rule.reason)
    return kept


def _first(keys: list[str], n_word: str) -> str:
    more = f" ({len(keys)} {n_word} in all)" if len(keys) > 1 else ""
    return f"{keys[0]!r}{more}"


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    reward: str,
    file: str | Path,
    part: str = "",
    assign: bool = False,
) -> None:
    """``module.load_state_dict(state)``, every problem reported as one :class:`RewardCheckpointError` line.

    ``part`` names the key prefix ``state`` had in the file (so the message shows the file's own key).
    """
    where = f"{reward}: checkpoint {file}"
    try:
        result = module.load_state_dict(dict(state), strict=False, assign=assign)
    except RuntimeError as err:  # shape mismatches are raised even with strict=False
        match = re.search(r"size mismatch for ([^:]+): (.*?)(?:\.\s*$|\n)", str(err))
        detail = f"{part}{match.group(1)}: {match.group(2)}" if match else str(err).splitlines()[0]
        raise RewardCheckpointError(f"{where}: shape mismatch for {detail}") from None
    if result.unexpected_keys:
        keys = [part + k for k in result.unexpected_keys]
        raise RewardCheckpointError(f"{where}: unexpected key {_first(keys, 'unexpected')}")
    if result.missing_keys:
        keys = [part + k for k in result.missing_keys]
        raise RewardCheckpointError(f"{where}: missing key {_first(keys, 'missing')}")


def unexpected(reward: str, file: str | Path, key: str, count: int = 1) -> RewardCheckpointError:
    """The error for a key that fits no part of the model (for loaders that split a file by prefix)."""
    more = f" ({count} unexpected in all)" if count > 1 else ""
    return RewardCheckpointError(f"{reward}: checkpoint {file}: unexpected key {key!r}{more}")


def hf_loading_report(reward: str, folder: str | Path, info: Mapping[str, list], report: LoadReport) -> None:
    """Check the ``output_loading_info`` of a transformers ``from_pretrained``: strict, one line.

    transformers already drops the keys its model class declares as ignorable (``position_ids`` buffers of
    older checkpoints, tied aliases); those never reach ``info``. Anything left is an error.
    """
    where = f"{reward}: checkpoint {folder}"
    for kind, word in (("unexpected_keys", "unexpected"), ("missing_keys", "missing")):
        keys = sorted(info.get(kind) or [])
        if keys:
            raise RewardCheckpointError(f"{where}: {word} key {_first(keys, word)}")
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        key, *shapes = mismatched[0]
        raise RewardCheckpointError(f"{where}: shape mismatch for {key!r} {shapes}")
    report.log(reward)


__all__ = [
    "DropRule",
    "LoadReport",
    "RewardCheckpointError",
    "drop_keys",
    "hf_loading_report",
    "load_strict",
    "unexpected",
]
