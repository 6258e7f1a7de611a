"""The scoring stage: annotate shards with raw reward scores (``KEY.rewards.json``).

One input shard becomes one output shard with the same file name, its samples in the same order
(every original file byte for byte, minus samples that cannot be scored, see below) and one more file
per sample::

    KEY.rewards.json = {"scores": {name: raw score or null}, "versions": {name: reward version}}

Guarantees the rest of the pipeline builds on:

* **Restartable.** Output shards and their reports appear atomically (temporary name, rename) and a
  shard is finished when both exist, so a run killed at any moment and started again skips finished
  shards, redoes the one in flight and ends with exactly the bytes of an uninterrupted run. A finished
  shard is one made from the input as it is now *with the settings asked now* (rewards and versions,
  image limits, decode size: ``settings`` in its report); ``recompute=True`` redoes every shard.
* **Bad samples are reported, not fatal.** A sample whose image does not decode or claims more pixels
  than ``image_limits`` (checked from the header, never decoded), without a caption, with a duplicate
  key or an unsafe member name, or that a reward raises on (a failed batch is retried one sample at a
  time), is left out of the output and listed (key, reason) in the shard's report,
  ``REPORTS/NAME.json``. A reward failing on most of a shard is a bug and stops the run
  (:class:`RewardFailureError`). A truncated input shard is reported and never marked finished.
* **Merging.** A sample that already has ``rewards.json`` keeps its scores; only rewards it lacks, or
  scored with another version of the reward, are computed (a separate VQAScore pass adds ``vqa`` to
  shards scored before). ``recompute=True`` scores everything again.
* **Sharding across processes.** Under torchrun, rank ``i`` of ``W`` takes shards ``i, i + W, ...``.

The shard loop, resuming and the reports are :mod:`miro.data.shard_stage`'s, shared with latent caching.

Rewards are named: scores are stored under the name a reward has in the Hydra group ``conf/rewards``
(or its registered name when built from a name, see :func:`reward_specs`).
"""

from __future__ import annotations

import json
import logging
import math
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from miro.data.image_limits import ImageLimits, ImageTooLargeError, open_rgb
from miro.data.shard_stage import RunSummary, StageConfigError, StageReport, map_shard, run_shards
from miro.data.shards import (
    IMAGE_EXTS,
    ShardInputError,
    TruncatedShardError,
    archive_end_is_clean,
    expand_shards,
    split_key,
    unsafe_member_name,
)
from miro.rewards.base import RewardModel, build_reward, resolve_name

log = logging.getLogger(__name__)

REWARDS_EXT = "rewards.json"


class ScoringConfigError(StageConfigError):
    """A scoring or fitting request that cannot work (no rewards, bad reward config, scores that
    cannot be fitted); the message says what to change."""


class RewardFailureError(ScoringConfigError):
    """A reward that raised on most of a shard's samples: a bug in the reward or its config, not bad
    data, so the stage stops (one bad sample is skipped and reported instead)."""


@dataclass(frozen=True)
class RewardFailurePolicy:
    """When per-sample reward failures stop the run: a reward that failed on more than
    ``max_fraction`` of the samples it was given in one shard, once it was given ``min_samples``
    (checked after every batch, so a broken reward stops early). ``conf/score.yaml: reward_failures``."""

    max_fraction: float = 0.5
    min_samples: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_fraction <= 1.0 or self.min_samples < 1:
            raise ScoringConfigError(
                f"reward_failures needs 0 <= max_fraction <= 1 and min_samples >= 1, got "
                f"max_fraction={self.max_fraction} min_samples={self.min_samples}"
            )


# --------------------------------------------------------------------------------------------------
# The annotation format


def encode_rewards(scores: Mapping[str, float | None], versions: Mapping[str, str]) -> bytes:
    """``rewards.json`` bytes: sorted keys, no whitespace, non-finite scores as null (= missing)."""
    clean = {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in scores.items()}
    data = {"scores": dict(sorted(clean.items())), "versions": dict(sorted(versions.items()))}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_rewards(data: bytes, key: str = "?") -> tuple[dict[str, float | None], dict[str, str]]:
    """Scores and versions from ``rewards.json`` bytes; ValueError naming the sample if malformed."""
    try:
        obj = json.loads(data)
        scores = {str(k): (None if v is None else float(v)) for k, v in obj["scores"].items()}
        scores = {k: (v if v is None or math.isfinite(v) else None) for k, v in scores.items()}
        versions = {str(k): str(v) for k, v in obj.get("versions", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise ValueError(f"sample {key}: malformed {REWARDS_EXT} ({err!r})") from None
    return scores, versions


DEFAULT_LIMITS = ImageLimits()
DEFAULT_FAILURES = RewardFailurePolicy()


# --------------------------------------------------------------------------------------------------
# Choosing and building rewards


def reward_specs(rewards: str | Sequence[str] | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The rewards to build: {name: config with ``_target_`` (or ``name`` of a registered reward)}.

    Takes what the Hydra group ``conf/rewards`` composes (a mapping name -> config), or registered
    reward names and aliases (stored under the canonical name, so ``sharp`` and ``sharpness`` agree);
    a ``null`` config also means "the registered reward of that name".
    """
    if isinstance(rewards, (DictConfig, ListConfig)):
        rewards = OmegaConf.to_container(rewards, resolve=True)  # type: ignore[assignment]
    if isinstance(rewards, str):
        rewards = [rewards]
    specs: dict[str, dict[str, Any]] = {}
    if isinstance(rewards, Mapping):
        if "_target_" in rewards:
            raise ScoringConfigError(
                "a reward config is not nested under its name: a file conf/rewards/NAME.yaml must read "
                "'NAME:' then its indented '_target_: ...' and settings"
            )
        for name, config in rewards.items():
            if config is None:
                canonical = resolve_name(str(name))
                specs[canonical] = {"name": canonical}
            elif isinstance(config, Mapping) and ("_target_" in config or "name" in config):
                specs[str(name)] = dict(config)
            else:
                raise ScoringConfigError(f"reward {name!r}: config needs a _target_, got {config!r}")
    else:
        for name in rewards:
            canonical = resolve_name(str(name))
            specs[canonical] = {"name": canonical}
    if not specs:
        raise ScoringConfigError("no rewards selected; pass e.g. rewards=[alignment,sharpness]")
    return specs


def expand_reward_sets(names: Sequence[str], rewards_dir: Path | None = None) -> list[str]:
    """Reward names with every reward set of ``conf/rewards/`` (a file that only lists others, such as
    ``offline`` or ``miro7``) replaced by the names it lists, in order, without repeats."""
    import yaml

    if rewards_dir is None:
        from miro.config import CONF_DIR

        rewards_dir = CONF_DIR / "rewards"
    out: list[str] = []

    def add(name: str, seen: tuple[str, ...]) -> None:
        path = Path(rewards_dir) / f"{name}.yaml"
        known = path.is_file() and name not in seen
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if known else None
        members = data.get("defaults") if isinstance(data, dict) and set(data) == {"defaults"} else None
        if isinstance(members, list) and all(isinstance(m, str) for m in members):
            for member in members:
                add(member, (*seen, name))
        else:
            out.append(name)

    for name in names:
        add(name.strip(), ())
    return list(dict.fromkeys(out))


def build_rewards(specs: Mapping[str, Mapping[str, Any]], device: str = "cpu") -> dict[str, RewardModel]:
    """Instantiate every spec on ``device`` (unless the spec sets its own ``device``)."""
    built: dict[str, RewardModel] = {}
    for name, spec in specs.items():
        kwargs = {} if "device" in spec else {"device": device}
        try:
            built[name] = build_reward(dict(spec), **kwargs)
        except (TypeError, ValueError) as err:  # unknown or invalid settings
            raise ScoringConfigError(f"reward {name!r}: bad config {dict(spec)} ({err})") from None
    return built


# --------------------------------------------------------------------------------------------------
# Scoring one shard


@dataclass(kw_only=True)
class ShardReport(StageReport):
    """A scored shard: which rewards (and versions) scored it, and how many scores were computed now
    rather than kept from the input."""

    n_scored: int = 0
    rewards: dict[str, str] = field(default_factory=dict)  # name -> version
    computed: dict[str, int] = field(default_factory=dict)  # name -> scores computed now
    reused: dict[str, int] = field(default_factory=dict)  # name -> scores kept from the input
    failed: dict[str, int] = field(default_factory=dict)  # name -> samples it raised on (skipped)


@dataclass
class _Item:
    sample: dict[str, Any]
    image: torch.Tensor  # uint8 [3, H, W]
    caption: str
    scores: dict[str, float | None]
    versions: dict[str, str]


def _prepare(sample: dict[str, Any], limits: ImageLimits | None = None, decode_size: int | None = None
             ) -> _Item | str:
    """A decoded sample, or the reason it cannot be scored."""
    key = sample["__key__"]
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        return f"no image ({'/'.join(IMAGE_EXTS)})"
    try:
        arr = np.asarray(open_rgb(sample[ext], limits, decode_size))
    except ImageTooLargeError as err:
        return f"{ext}: {err}"
    except Exception as err:  # PIL raises many types for corrupt files
        return f"cannot decode {ext}: {type(err).__name__}: {err}"
    if "txt" not in sample:
        return "no caption (txt)"
    try:
        caption = sample["txt"].decode("utf-8")
    except UnicodeDecodeError:
        return "caption (txt) is not UTF-8"
    if not caption.strip():
        return "empty caption (txt)"
    scores: dict[str, float | None] = {}
    versions: dict[str, str] = {}
    if REWARDS_EXT in sample:
        try:
            scores, versions = decode_rewards(sample[REWARDS_EXT], key)
        except ValueError as err:
            return str(err).removeprefix(f"sample {key}: ")
    image = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return _Item(sample, image, caption, scores, versions)


def _failure(name: str, err: Exception) -> str:
    message = " ".join(str(err).split())
    return f"reward {name!r} failed: {type(err).__name__}: {message[:300]}"


def _score_group(reward: RewardModel, name: str, items: list[_Item], index: list[int]) -> list[float | str]:
    """Scores of ``items[i]`` for ``i`` in ``index``, one batch; when the batch raises, each sample
    alone, so only the sample(s) the reward fails on lose their score (as the reason)."""
    try:
        return reward.score(torch.stack([items[i].image for i in index]),
                            [items[i].caption for i in index]).tolist()
    except Exception as err:
        if len(index) == 1:
            return [_failure(name, err)]
    out: list[float | str] = []
    for i in index:
        try:
            out.append(float(reward.score(items[i].image[None], [items[i].caption])[0]))
        except Exception as err:
            out.append(_failure(name, err))
    return out


def _score_pending(
    items: list[_Item], rewards: Mapping[str, RewardModel], recompute: bool, report: ShardReport,
    policy: RewardFailurePolicy,
) -> list[str | None]:
    """Fill in each item's missing (or stale) scores, one reward and one image size at a time; per
    item, None or why it is skipped (a reward raised on it). Stops with :class:`RewardFailureError`
    when a reward fails on more of the shard than ``policy`` allows."""
    failed: list[str | None] = [None] * len(items)
    for name, reward in rewards.items():
        todo = [
            i for i, it in enumerate(items)
            if failed[i] is None
            and (recompute or name not in it.scores or it.versions.get(name) != reward.version)
        ]
        report.reused[name] = report.reused.get(name, 0) + len(items) - len(todo)
        report.computed.setdefault(name, 0)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i in todo:
            by_size.setdefault(tuple(items[i].image.shape), []).append(i)
        for index in by_size.values():
            for i, value in zip(index, _score_group(reward, name, items, index), strict=True):
                if isinstance(value, str):
                    failed[i] = value
                    report.failed[name] = report.failed.get(name, 0) + 1
                    continue
                report.computed[name] += 1
                items[i].scores[name] = value if math.isfinite(value) else None
                items[i].versions[name] = reward.version
            _check_failures(name, report, policy, next((f for f in failed if f), ""))
    return failed


def _check_failures(name: str, report: ShardReport, policy: RewardFailurePolicy, example: str) -> None:
    n_failed = report.failed.get(name, 0)
    asked = n_failed + report.computed.get(name, 0)
    if asked >= policy.min_samples and n_failed > policy.max_fraction * asked:
        raise RewardFailureError(
            f"reward {name!r} failed on {n_failed} of {asked} samples of {report.input} ({example}); "
            "failing on most samples is a bug in the reward or its config, not bad data "
            f"(limit: reward_failures.max_fraction={policy.max_fraction})"
        )


def scoring_settings(
    rewards: Mapping[str, RewardModel], limits: ImageLimits | None, decode_size: int | None
) -> dict[str, Any]:
    """The options that change a scored shard's bytes, recorded in its report (resume compares them)."""
    return {
        "rewards": {name: r.version for name, r in sorted(rewards.items())},
        "image_limits": limits.to_json() if limits is not None else None,
        "decode_size": decode_size,
    }


def score_shard(
    input_path: str | Path,
    output_path: str | Path,
    report_path: str | Path,
    rewards: Mapping[str, RewardModel],
    batch_size: int = 256,
    recompute: bool = False,
    on_samples: Callable[[int], None] | None = None,
    limits: ImageLimits | None = DEFAULT_LIMITS,
    decode_size: int | None = None,
    failures: RewardFailurePolicy = DEFAULT_FAILURES,
) -> ShardReport:
    """Score one shard into ``output_path`` and write its report; returns the report.

    ``limits``: images whose header claims more are skipped, not decoded (None: no limit);
    ``decode_size``: decode JPEGs at the smallest DCT scale with both sides >= this (None: full size).
    """
    if batch_size < 1:
        raise ScoringConfigError(f"batch_size must be >= 1, got {batch_size}")
    if decode_size is not None and decode_size < 1:
        raise ScoringConfigError(f"decode_size must be >= 1 or null, got {decode_size}")
    report = ShardReport(
        shard=Path(output_path).name,
        input=str(input_path),
        rewards={name: r.version for name, r in rewards.items()},
        settings=scoring_settings(rewards, limits, decode_size),
    )

    def score(items: list[_Item]) -> list[dict[str, Any] | str]:
        failed = _score_pending(items, rewards, recompute, report, failures)
        report.n_scored += sum(reason is None for reason in failed)
        return [
            reason or {**it.sample, REWARDS_EXT: encode_rewards(it.scores, it.versions)}
            for it, reason in zip(items, failed, strict=True)
        ]

    map_shard(
        input_path, output_path, report_path, report, lambda s: _prepare(s, limits, decode_size), score,
        batch_size, on_samples,
    )
    log.info("%s: scored %d, skipped %d -> %s", input_path, report.n_scored, report.n_skipped, output_path)
    return report


# --------------------------------------------------------------------------------------------------
# Scoring many shards


@dataclass
class ScoringSummary(RunSummary):
    """A scoring run over many shards; ``n_scored`` counts the samples written with their scores."""

    @property
    def n_scored(self) -> int:
        return self.total("n_scored")

    @property
    def rewards_held(self) -> list[str]:
        """The rewards every written shard was scored with (what the summary may claim)."""
        held = [set(r.rewards) for r in self.reports if not r.truncated]
        return sorted(set.intersection(*held)) if held else []


def score_shards(
    inputs: str | Sequence[str],
    output_dir: str | Path,
    rewards: Mapping[str, RewardModel],
    batch_size: int = 256,
    report_dir: str | Path | None = None,
    recompute: bool = False,
    rank: int = 0,
    world_size: int = 1,
    on_samples: Callable[[int], None] | None = None,
    on_shard: Callable[[int, int, str], None] | None = None,
    limits: ImageLimits | None = DEFAULT_LIMITS,
    decode_size: int | None = None,
    failures: RewardFailurePolicy = DEFAULT_FAILURES,
) -> ScoringSummary:
    """Score this rank's share of ``inputs`` into ``output_dir``, skipping finished shards: those an
    earlier run completed with the same settings (rewards and versions, image limits, decode size).
    ``recompute=True`` redoes every shard and every score.

    ``on_samples(n)`` is called as samples are processed and ``on_shard(i, total, name)`` before each
    shard (for progress bars).
    """
    if not rewards:
        raise ScoringConfigError("no rewards selected; pass e.g. rewards=[alignment,sharpness]")
    reports, resumed, reports_in = run_shards(
        inputs, output_dir, report_dir, rank, world_size,
        lambda path, out, report: score_shard(
            path, out, report, rewards, batch_size, recompute, on_samples=on_samples, limits=limits,
            decode_size=decode_size, failures=failures,
        ),
        ShardReport.load, skip_finished=not recompute, done="scored", on_shard=on_shard,
        settings=scoring_settings(rewards, limits, decode_size),
    )  # fmt: skip
    return ScoringSummary(str(output_dir), str(reports_in), reports, resumed)


# --------------------------------------------------------------------------------------------------
# Reading scores back (for fitting bins)


@dataclass
class ScoreTable:
    """Raw scores of many records: one float64 array per reward, NaN where a record lacks it."""

    scores: dict[str, np.ndarray]
    versions: dict[str, set[str]]  # every version seen per reward
    shards: list[str]  # shards read
    n_records: int


def iter_reward_annotations(path: str | Path) -> Iterable[tuple[str, bytes]]:
    """(key, rewards.json bytes) of one shard, reading no image data. A shard that ends early raises
    :class:`TruncatedShardError` (fitting on part of it would be silent); a repeated key is read once."""
    try:
        tar = tarfile.open(path, "r")
    except (OSError, tarfile.TarError, EOFError) as err:
        raise ShardInputError(f"cannot read shard {path}: {err}") from None
    seen: set[str] = set()
    with tar:
        try:
            for member in tar:
                if member.isfile() and not unsafe_member_name(member.name):
                    key, ext = split_key(member.name)
                    if ext == REWARDS_EXT and key not in seen:
                        seen.add(key)
                        handle = tar.extractfile(member)
                        yield key, handle.read() if handle is not None else b""
            clean = archive_end_is_clean(tar)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise TruncatedShardError(f"shard {path} is truncated or damaged: {err}") from None
    if not clean:
        raise TruncatedShardError(f"shard {path} is truncated: the archive ends at byte {tar.offset} "
                                  "without its end-of-archive block")


def read_scores(inputs: str | Sequence[str], max_samples: int | None = None, seed: int = 0) -> ScoreTable:
    """Scores of every record, or of a seeded random sample of up to ``max_samples`` records.

    Sampling reads whole shards in a seeded random order until it has ``max_samples`` records, then
    draws ``max_samples`` of those uniformly, so fitting on 100k records of a 12M-record data set
    reads ~100k records' annotations, not all of them.
    """
    shards = expand_shards(inputs)
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        if max_samples < 1:
            raise ScoringConfigError(f"max_samples must be >= 1 (or null for all), got {max_samples}")
        shards = [shards[i] for i in rng.permutation(len(shards))]
    records: list[tuple[dict[str, float | None], dict[str, str]]] = []
    used: list[str] = []
    for path in shards:
        if max_samples is not None and len(records) >= max_samples:
            break
        used.append(path)
        for key, data in iter_reward_annotations(path):
            try:
                records.append(decode_rewards(data, key))
            except ValueError as err:  # a hand-edited or damaged annotation: name the shard and sample
                raise ShardInputError(f"{path}: {err}") from None
    if not records:
        raise ShardInputError(f"no {REWARDS_EXT} in the {len(used)} shard(s) of {inputs!r}; score them first")
    if max_samples is not None and len(records) > max_samples:
        keep = np.sort(rng.choice(len(records), size=max_samples, replace=False))
        records = [records[i] for i in keep]
    names = sorted({name for scores, _ in records for name in scores})
    table = {name: np.full(len(records), np.nan) for name in names}
    versions: dict[str, set[str]] = {name: set() for name in names}
    for row, (scores, vers) in enumerate(records):
        for name, value in scores.items():
            table[name][row] = np.nan if value is None else value
            if name in vers:
                versions[name].add(vers[name])
    return ScoreTable(table, versions, sorted(used), len(records))
