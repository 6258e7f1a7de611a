"""Which annotated samples to train on: filters by stored score and by image size.

MIRO trained on CC12M plus LAION-Aesthetics filtered at aesthetic >= 6. The filters read what the data
stages already stored (``rewards.json``'s raw scores; ``KEY.json``'s image size, or the image header when
the json has none) and are applied while the shards are read, so no shard is ever rewritten and the
threshold can change from one run to the next.

A filter is a list of rules; a sample is kept when every rule that applies to its shard keeps it. A rule
may be limited to some shards by a file-name pattern, which is how one threshold covers only one part of
a mixed data set (``{shards: "laion-*", min_scores: {aesthetic: 6}}``). A sample without the score a rule
needs is dropped (it cannot be shown to pass) and counted under its own reason. Every dropped sample is
counted by the first reason that dropped it; :class:`FilterCounts` is what the run logs and saves.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from miro.data.shards import IMAGE_EXTS, ShardInputError, split_key

# img2dataset's KEY.json: the source size first (what "image size" means for a filter), then the stored.
SIZE_FIELDS = (("original_width", "original_height"), ("width", "height"))


class FilterConfigError(ValueError):
    """A malformed filter rule; the message names the rule and field."""


class SampleSizeError(ValueError):
    """A size filter met a sample whose size is recorded nowhere (no KEY.json size, no image)."""


@dataclass(frozen=True)
class FilterRule:
    """Keep a sample when every stored score is within its bounds and the image is large enough."""

    shards: str = "*"  # fnmatch pattern on the shard's file name; the rule applies only there
    min_scores: Mapping[str, float] = field(default_factory=dict)  # raw score >= value
    max_scores: Mapping[str, float] = field(default_factory=dict)  # raw score <= value
    min_width: int | None = None
    min_height: int | None = None

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], where: str) -> FilterRule:
        known = {"shards", "min_scores", "max_scores", "min_width", "min_height"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise FilterConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        try:
            bounds = {
                name: {str(k): float(v) for k, v in dict(raw.get(name) or {}).items()}
                for name in ("min_scores", "max_scores")
            }
            sizes = {
                name: None if raw.get(name) is None else int(raw[name])
                for name in ("min_width", "min_height")
            }
        except (TypeError, ValueError) as err:
            raise FilterConfigError(f"{where}: bounds must be numbers ({err})") from None
        for name, value in sizes.items():
            if value is not None and value < 1:
                raise FilterConfigError(f"{where}: {name} must be >= 1, got {value}")
        return cls(shards=str(raw.get("shards", "*")), **bounds, **sizes)

    @property
    def needs_size(self) -> bool:
        return self.min_width is not None or self.min_height is not None

    def applies_to(self, shard: str) -> bool:
        return fnmatch.fnmatch(os.path.basename(str(shard)), self.shards)

    def reject(self, sample: Mapping[str, Any], scores: Mapping[str, Any] | None) -> str | None:
        """Why this rule drops ``sample`` (a short reason, the counting key), or None to keep it."""
        for name, bound in self.min_scores.items():
            reason = _score_reason(scores, name, bound, below=True)
            if reason:
                return reason
        for name, bound in self.max_scores.items():
            reason = _score_reason(scores, name, bound, below=False)
            if reason:
                return reason
        if self.needs_size:
            width, height = sample_size(sample)
            if self.min_width is not None and width < self.min_width:
                return f"width < {self.min_width}"
            if self.min_height is not None and height < self.min_height:
                return f"height < {self.min_height}"
        return None


def _score_reason(scores: Mapping[str, Any] | None, name: str, bound: float, below: bool) -> str | None:
    value = None if scores is None else scores.get(name)
    try:
        value = None if value is None else float(value)
    except (TypeError, ValueError):
        value = None
    if value is None or math.isnan(value):
        return f"no {name} score"
    if below and value < bound:
        return f"{name} < {bound:g}"
    if not below and value > bound:
        return f"{name} > {bound:g}"
    return None


def sample_size(sample: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) of a sample's image: from KEY.json (source size first), else the image header."""
    key = sample.get("__key__", "?")
    meta = sample.get("json")
    if meta is not None:
        try:
            data = json.loads(meta)
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        for w_field, h_field in SIZE_FIELDS:
            w, h = data.get(w_field), data.get(h_field)
            if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
                return int(w), int(h)
    image = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
    if image is not None:
        try:
            with Image.open(io.BytesIO(image)) as img:  # reads the header only
                return img.size
        except Exception:  # PIL raises many types for corrupt files
            pass
    raise SampleSizeError(
        f"sample {key}: a size filter is set but its size is unknown (no width/height in {key}.json and "
        "no readable image); cached shards keep neither unless cache-latents kept the image"
    )


@dataclass
class FilterCounts:
    """How many samples a filter kept and dropped, the dropped ones by reason."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str | None) -> None:
        if reason is None:
            self.kept += 1
        else:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_json(self) -> dict[str, Any]:
        by_reason = dict(sorted(self.dropped.items()))
        return {"kept": self.kept, "dropped": self.n_dropped, "dropped_by": by_reason}

    def summary(self) -> str:
        total = self.kept + self.n_dropped
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.dropped.items())) or "none"
        return f"data filter kept {self.kept} of {total} samples, dropped {self.n_dropped} ({reasons})"


class SampleFilter:
    """The rules of ``data.filters`` applied to raw samples (bytes per field, as the shards hold them)."""

    def __init__(self, rules: Sequence[FilterRule]) -> None:
        self.rules = list(rules)

    @classmethod
    def from_config(cls, raw: Iterable[Mapping[str, Any]] | Mapping[str, Any] | None) -> SampleFilter | None:
        """None or [] -> None (no filtering); a single mapping is one rule."""
        if not raw:
            return None
        items = [raw] if isinstance(raw, Mapping) else list(raw)
        return cls([FilterRule.from_config(dict(r), f"data.filters[{i}]") for i, r in enumerate(items)])

    @property
    def needs_size(self) -> bool:
        return any(rule.needs_size for rule in self.rules)

    def reject(self, sample: Mapping[str, Any], shard: str) -> str | None:
        """The first reason a rule that applies to ``shard`` drops ``sample``; None keeps it."""
        rules = [rule for rule in self.rules if rule.applies_to(shard)]
        if not rules:
            return None
        scores = stored_scores(sample)
        for rule in rules:
            reason = rule.reject(sample, scores)
            if reason is not None:
                return reason
        return None

    def fields(self) -> set[str]:
        """The sample fields the filter reads (a census reads only these)."""
        wanted = {"rewards.json"}
        if self.needs_size:
            wanted |= {"json", *IMAGE_EXTS}
        return wanted


def stored_scores(sample: Mapping[str, Any]) -> dict[str, Any] | None:
    """``rewards.json``'s raw scores, or None when the sample has none (or they are unreadable)."""
    raw = sample.get("rewards.json")
    if raw is None:
        return None
    try:
        scores = json.loads(raw)["scores"]
    except (ValueError, KeyError, TypeError):
        return None
    return scores if isinstance(scores, dict) else None


def iter_fields(path: str, wanted: set[str]) -> Iterator[dict[str, Any]]:
    """Samples of one shard holding only the ``wanted`` fields: the other members' bytes are skipped,
    so counting what a score filter keeps reads a few hundred bytes per sample, not the images."""
    try:
        tar = tarfile.open(path, "r")
    except (OSError, tarfile.TarError) as err:
        raise ShardInputError(f"cannot read shard {path}: {err}") from None
    current: dict[str, Any] | None = None
    with tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_key(member.name)
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            if ext in wanted:
                handle = tar.extractfile(member)
                current[ext] = handle.read() if handle is not None else b""
        if current is not None:
            yield current


def census(shards: Sequence[str], sample_filter: SampleFilter) -> FilterCounts:
    """Count what ``sample_filter`` keeps over every sample of ``shards`` (the streaming mode's report:
    its endless resampled stream never finishes a pass to count on)."""
    counts = FilterCounts()
    wanted = sample_filter.fields()
    for path in shards:
        for sample in iter_fields(path, wanted):
            counts.add(sample_filter.reject(sample, path))
    return counts


def keep_sample(sample_filter: SampleFilter, sample: Mapping[str, Any]) -> bool:
    """webdataset ``select`` predicate (module level, so worker processes can pickle it)."""
    return sample_filter.reject(sample, str(sample.get("__url__", ""))) is None
