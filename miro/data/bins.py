"""Reward bins: raw scores -> equal-frequency levels -> conditioning values in [0, 1].

MIRO never conditions on raw scores: every reward has its own scale (a JPEG size in kB, a cosine, a
probability), so each is cut into ``n_bins`` equal-frequency bins fitted on the training data and a
score in level ``k`` of ``L`` becomes ``k / (L - 1)``. Quantile bins are unchanged by any increasing
rescaling of a reward, which is why raw scores are all the shards need to store.

Edges are data values: with the fitted scores sorted as ``x[0] <= ... <= x[N-1]``, level ``k`` starts
at ``x[ceil(k N / B)]`` for ``k = 1 .. B-1`` and a score's level is the number of edges at or below it.
Ties make some of those edges equal; they are merged, and edges at the minimum are dropped (they would
leave the lowest level empty). So every level holds data, and a reward with many ties gets fewer
levels than ``n_bins``: a near-binary reward gets two, mapped to 0 and 1. ``n_levels`` records the
effective number; values are always spread over the full [0, 1].
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from miro.data.shards import write_bytes_atomic
from miro.scoring import ScoringConfigError, read_scores

log = logging.getLogger(__name__)

FORMAT = "miro.bins/1"
# The most bins a reward may be cut into. MIRO uses 64; edges are fitted with one pass per bin and a
# model conditions on n_levels values, so a larger request (n_bins=1e9) is a typo, not a plan.
MAX_N_BINS = 4096


class BinsFileError(ValueError):
    """A bins.json (or an exported model's bins) that is not what fit-bins writes: malformed, tampered
    with or damaged. The message names the file and the field."""


def check_n_bins(n_bins: object) -> int:
    """``n_bins`` as an int in 1..MAX_N_BINS, or ScoringConfigError saying what was given."""
    if isinstance(n_bins, float) and n_bins.is_integer():
        n_bins = int(n_bins)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or not 1 <= n_bins <= MAX_N_BINS:
        raise ScoringConfigError(f"n_bins must be an integer from 1 to {MAX_N_BINS}, got {n_bins!r}")
    return int(n_bins)


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner edges (strictly increasing, all data values above the minimum) of equal-frequency bins.

    Non-finite values are ignored. At most ``n_bins - 1`` edges; fewer when there are ties.
    """
    n_bins = check_n_bins(n_bins)
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros(0)
    n = x.size
    starts = np.array([min(-(-k * n // n_bins), n - 1) for k in range(1, n_bins)], dtype=np.int64)
    edges = np.unique(x[starts]) if starts.size else np.zeros(0)
    return edges[edges > x[0]]


@dataclass
class RewardBin:
    """Fitted bins of one reward."""

    edges: np.ndarray  # inner edges, strictly increasing; n_levels = len(edges) + 1
    counts: list[int]  # fitted scores per level
    version: str | None = None  # the reward's version when its scores were computed
    n_missing: int = 0  # fitted records without a (finite) score for this reward
    min: float = math.nan
    max: float = math.nan

    @property
    def n_levels(self) -> int:
        return len(self.edges) + 1

    def levels(self, raw: np.ndarray) -> np.ndarray:
        """Level of each score (int64); -1 where the score is NaN."""
        raw = np.asarray(raw, dtype=np.float64)
        level = np.searchsorted(self.edges, raw, side="right").astype(np.int64)
        return np.where(np.isnan(raw), -1, level)

    def values(self, raw: np.ndarray) -> np.ndarray:
        """Conditioning value ``level / (n_levels - 1)`` of each score (float32); NaN where missing.

        A reward that was constant on the fitted data has one level and carries no information; it
        maps to 0.5, between the "low" and "high" targets guidance contrasts.
        """
        level = self.levels(raw)
        if self.n_levels == 1:
            value = np.full(level.shape, 0.5)
        else:
            value = level / (self.n_levels - 1)
        return np.where(level < 0, np.nan, value).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "n_levels": self.n_levels,
            "version": self.version,
            "n_missing": int(self.n_missing),
            "min": _json_float(self.min),
            "max": _json_float(self.max),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> RewardBin:
        """Parse and check one reward's bins: everything a hand edit or damage could break (finite,
        strictly increasing edges; one non-negative count per level; a consistent ``n_levels``)."""
        if not isinstance(data, Mapping):
            raise BinsFileError(f"{where}: expected an object, got {type(data).__name__}")
        edges_in, counts_in = data.get("edges"), data.get("counts")
        if not isinstance(edges_in, list) or not all(_is_number(e) for e in edges_in):
            raise BinsFileError(f"{where}: edges must be a list of numbers, got {edges_in!r:.80}")
        if not isinstance(counts_in, list) or not all(_is_int(c) and c >= 0 for c in counts_in):
            raise BinsFileError(
                f"{where}: counts must be a list of non-negative integers, got {counts_in!r:.80}"
            )
        if len(edges_in) >= MAX_N_BINS:
            raise BinsFileError(f"{where}: {len(edges_in)} edges, more than n_bins can be ({MAX_N_BINS})")
        edges = np.asarray(edges_in, dtype=np.float64).reshape(-1)
        if not np.isfinite(edges).all() or (edges.size and not np.all(np.diff(edges) > 0)):
            raise BinsFileError(f"{where}: edges must be finite and strictly increasing")
        if len(counts_in) != edges.size + 1:
            raise BinsFileError(f"{where}: {len(counts_in)} counts for {edges.size + 1} levels")
        if "n_levels" in data and data["n_levels"] != edges.size + 1:
            raise BinsFileError(f"{where}: n_levels {data['n_levels']!r} but {edges.size + 1} levels")
        version = data.get("version")
        if version is not None and not isinstance(version, str):
            raise BinsFileError(f"{where}: version must be a string or null, got {version!r}")
        n_missing = data.get("n_missing", 0)
        if not _is_int(n_missing) or n_missing < 0:
            raise BinsFileError(f"{where}: n_missing must be a non-negative integer, got {n_missing!r}")
        low, high = (_optional_float(data.get(k), f"{where}: {k}") for k in ("min", "max"))
        if low > high:
            raise BinsFileError(f"{where}: min {low} is above max {high}")
        return cls(edges=edges, counts=[int(c) for c in counts_in], version=version, n_missing=int(n_missing),
                   min=low, max=high)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _optional_float(x: Any, where: str) -> float:
    """A finite number, or NaN for null (no finite score was fitted)."""
    if x is None:
        return math.nan
    if not _is_number(x) or not math.isfinite(x):
        raise BinsFileError(f"{where} must be a finite number or null, got {x!r}")
    return float(x)


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _float_or_nan(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass
class RewardBins:
    """Per-reward quantile bins, fitted once on training scores and saved as ``bins.json``."""

    rewards: dict[str, RewardBin]
    n_bins: int
    shards: list[str] = field(default_factory=list)  # the shards the scores came from
    n_records: int = 0  # records the fit used

    @classmethod
    def fit(
        cls,
        scores: Mapping[str, np.ndarray],
        n_bins: int = 64,
        versions: Mapping[str, str | None] | None = None,
        shards: Iterable[str] = (),
    ) -> RewardBins:
        """Fit ``n_bins`` equal-frequency bins per reward; NaN marks a record without that score."""
        rewards: dict[str, RewardBin] = {}
        n_records = 0
        for name in sorted(scores):
            raw = np.asarray(scores[name], dtype=np.float64).ravel()
            n_records = max(n_records, raw.size)
            finite = raw[np.isfinite(raw)]
            if finite.size == 0:
                raise ValueError(f"reward {name!r}: no finite score in {raw.size} records, cannot fit bins")
            edges = quantile_edges(finite, n_bins)
            bin_ = RewardBin(
                edges=edges,
                counts=[],
                version=(versions or {}).get(name),
                n_missing=int(raw.size - finite.size),
                min=float(finite.min()),
                max=float(finite.max()),
            )
            bin_.counts = np.bincount(bin_.levels(finite), minlength=bin_.n_levels).tolist()
            if bin_.n_levels < n_bins:
                log.warning(
                    "reward %r: ties leave %d of %d levels (%d distinct scores)",
                    name, bin_.n_levels, n_bins, np.unique(finite).size,
                )
            rewards[name] = bin_
        return cls(rewards=rewards, n_bins=int(n_bins), shards=list(shards), n_records=n_records)

    @property
    def names(self) -> list[str]:
        return list(self.rewards)

    def _bin(self, name: str) -> RewardBin:
        try:
            return self.rewards[name]
        except KeyError:
            raise KeyError(f"no bins for reward {name!r}; fitted rewards: {', '.join(self.names)}") from None

    def n_levels(self, name: str) -> int:
        return self._bin(name).n_levels

    def to_level(self, name: str, raw: float | None) -> int:
        """Level of one raw score; -1 for a missing (None or NaN) score."""
        return int(self._bin(name).levels(np.array(math.nan if raw is None else raw))[()])

    def to_value(self, name: str, raw: float | None) -> float:
        """Conditioning value in [0, 1] of one raw score; NaN for a missing (None or NaN) score."""
        return float(self._bin(name).values(np.array(math.nan if raw is None else raw))[()])

    def levels(self, name: str, raw: Iterable[float | None] | np.ndarray) -> np.ndarray:
        """Vectorised :meth:`to_level` (int64)."""
        return self._bin(name).levels(_as_float_array(raw))

    def values(self, name: str, raw: Iterable[float | None] | np.ndarray) -> np.ndarray:
        """Vectorised :meth:`to_value` (float32)."""
        return self._bin(name).values(_as_float_array(raw))

    def data_range(self, name: str) -> tuple[float, float]:
        """(min, max) of the fitted raw scores: what "within the range of the training data" means."""
        b = self._bin(name)
        return b.min, b.max

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "n_bins": self.n_bins,
            "n_records": self.n_records,
            "shards": list(self.shards),
            "rewards": {name: b.to_json() for name, b in self.rewards.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write ``bins.json`` atomically (a reader never sees half a file)."""
        write_bytes_atomic(path, (json.dumps(self.to_json(), indent=1) + "\n").encode("utf-8"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "bins") -> RewardBins:
        """Parse and check a bins file; :class:`BinsFileError` naming the field for anything that is
        not what :meth:`save` writes (training conditions on these numbers: a bad one must not load)."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise BinsFileError(f"{where}: not a MIRO bins file (format {found!r}, expected {FORMAT!r})")
        n_bins, n_records = data.get("n_bins"), data.get("n_records", 0)
        if not _is_int(n_bins) or not 1 <= n_bins <= MAX_N_BINS:
            raise BinsFileError(f"{where}: n_bins must be an integer from 1 to {MAX_N_BINS}, got {n_bins!r}")
        if not _is_int(n_records) or n_records < 0:
            raise BinsFileError(f"{where}: n_records must be a non-negative integer, got {n_records!r}")
        rewards_in, shards = data.get("rewards", {}), data.get("shards", [])
        if not isinstance(rewards_in, Mapping):
            found = type(rewards_in).__name__
            raise BinsFileError(f"{where}: rewards must be an object name -> bins, got {found}")
        if not isinstance(shards, list) or not all(isinstance(s, str) for s in shards):
            raise BinsFileError(f"{where}: shards must be a list of paths")
        rewards = {
            name: RewardBin.from_json(b, f"{where}: reward {name!r}") for name, b in rewards_in.items()
        }
        for name, b in rewards.items():
            if b.n_levels > n_bins:
                raise BinsFileError(
                    f"{where}: reward {name!r} has {b.n_levels} levels, more than n_bins {n_bins}"
                )
        return cls(rewards=rewards, n_bins=n_bins, shards=list(shards), n_records=n_records)

    @classmethod
    def load(cls, path: str | Path) -> RewardBins:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"bins file not found: {path} (run fit-bins first)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise BinsFileError(f"{path}: not valid JSON ({err})") from None
        return cls.from_json(data, str(path))


def _as_float_array(raw: Iterable[float | None] | np.ndarray) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        return raw.astype(np.float64, copy=False)
    return np.array([math.nan if v is None else float(v) for v in raw], dtype=np.float64)


def fit_from_shards(
    inputs: str | list[str],
    n_bins: int = 64,
    max_samples: int | None = 100_000,
    seed: int = 0,
    rewards: Iterable[str] | None = None,
) -> RewardBins:
    """Fit bins on the scores in annotated shards (all records, or a seeded sample of ``max_samples``).

    ``rewards`` restricts the fit to some rewards (default: every reward found). Scores of one reward
    computed by different versions of it are not comparable, so that is an error naming them.
    """
    n_bins = check_n_bins(n_bins)
    table = read_scores(inputs, max_samples=max_samples, seed=seed)
    names = sorted(table.scores) if rewards is None else list(rewards)
    missing = [n for n in names if n not in table.scores]
    if missing:
        found = sorted(table.scores)
        raise ScoringConfigError(f"no scores for reward(s) {missing} in the shards; found {found}")
    empty = [n for n in names if not np.isfinite(table.scores[n]).any()]
    if empty:
        raise ScoringConfigError(f"reward(s) {empty} have no finite score in {table.n_records} records")
    mixed = {n: sorted(table.versions[n]) for n in names if len(table.versions[n]) > 1}
    if mixed:
        raise ScoringConfigError(
            f"scores from different reward versions {mixed}; rescore with recompute=true before fitting bins"
        )
    versions = {n: next(iter(table.versions[n]), None) for n in names}
    bins = RewardBins.fit({n: table.scores[n] for n in names}, n_bins, versions, table.shards)
    log.info(
        "fitted %d bins for %s on %d records from %d shards",
        n_bins, names, table.n_records, len(table.shards),
    )
    return bins
