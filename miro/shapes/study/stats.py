"""The evidence study's statistics, all of them: spread over training seeds, standard errors (of a mean
over seeds, of one evaluation's accuracy, of a gap between two seed means), differences paired by seed,
steps to a threshold, speed-ups and where one sample matches a best-of-N.

Everything here is plain arithmetic on lists of floats (``None`` or NaN = a run that is missing or a
value that is undefined), so it can be checked by hand and reused on any saved numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Value = float | None


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n - 1) and range of one quantity over seeds.

    ``std`` is NaN for fewer than two values (a spread cannot be estimated from one run); every field
    is NaN when no value is available.
    """

    mean: float
    std: float
    lo: float
    hi: float
    n: int

    @property
    def se(self) -> float:
        """Standard error of the mean over seeds (NaN for fewer than two)."""
        return self.std / math.sqrt(self.n) if self.n > 1 else float("nan")

    def format(self, digits: int = 3) -> str:
        """``0.420 ± 0.031 [0.390, 0.450]``: mean ± std [min, max]; one value alone; n/a for none."""
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def _finite(values: Sequence[Value]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def across_seeds(values: Sequence[Value]) -> Spread:
    """The spread of one quantity measured once per seed; missing or non-finite values are left out."""
    v = _finite(values)
    nan = float("nan")
    if not v:
        return Spread(nan, nan, nan, nan, 0)
    std = statistics.stdev(v) if len(v) > 1 else nan
    return Spread(statistics.fmean(v), std, min(v), max(v), len(v))


def paired_differences(a: Sequence[Value], b: Sequence[Value]) -> list[Value]:
    """``a[i] - b[i]`` for every seed ``i`` where both are known (else ``None``): the seeds pair the two."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one per seed on both sides, got {len(a)} and {len(b)}")
    return [None if x is None or y is None else x - y for x, y in zip(a, b, strict=True)]


def distinguishable(differences: Spread, z: float = 2.0) -> bool | None:
    """Whether a mean paired difference exceeds ``z`` standard errors; ``None`` when it cannot be judged
    (fewer than two seeds, or no spread at all)."""
    if differences.n < 2 or not differences.std > 0:
        return None
    return abs(differences.mean) > z * differences.se


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent images."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.sqrt(p * (1 - p) / n)


def gap_se(se_one: float, seeds: int) -> float:
    """Standard error of the gap between two means over ``seeds`` runs each, every run measured with
    standard error ``se_one`` (similar values on both sides): ``se_one * sqrt(2 / seeds)``."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    return se_one * math.sqrt(2 / seeds)


def mean_curve(curves: Sequence[Sequence[Value]]) -> list[float]:
    """Pointwise mean over seeds of equally long curves (NaN where no seed has a value)."""
    if not curves:
        return []
    length = len(curves[0])
    if any(len(c) != length for c in curves):
        raise ValueError(f"curves of different lengths: {[len(c) for c in curves]}")
    return [across_seeds([c[i] for c in curves]).mean for i in range(length)]


def steps_to_reach(steps: Sequence[float], values: Sequence[Value], threshold: float) -> float | None:
    """Training steps a curve needs to reach ``threshold`` (higher is better), interpolated linearly
    between the last point below and the first point at or above it.

    The first evaluated point already at the threshold gives its own step (an upper bound: the curve
    was not measured earlier). ``None`` when the curve never reaches the threshold. Points without a
    value are skipped.
    """
    if len(steps) != len(values):
        raise ValueError(f"{len(steps)} steps but {len(values)} values")
    points = sorted(
        (float(s), float(v))
        for s, v in zip(steps, values, strict=True)
        if v is not None and math.isfinite(float(v))
    )
    previous: tuple[float, float] | None = None
    for step, value in points:
        if value >= threshold:
            if previous is None:
                return step
            s0, v0 = previous
            return s0 + (threshold - v0) / (value - v0) * (step - s0)
        previous = (step, value)
    return None


def speedup(baseline_steps: float | None, miro_steps: float | None) -> float | None:
    """Steps the baseline needs divided by the steps MIRO needs; ``None`` when either never gets there."""
    if baseline_steps is None or miro_steps is None or miro_steps <= 0:
        return None
    return baseline_steps / miro_steps


def threshold_at(first: float, final: float, fraction: float) -> float | None:
    """The value ``fraction`` of the way from a curve's first to its final value; ``None`` when the curve
    does not improve (a threshold on the way up is then undefined)."""
    if not (math.isfinite(first) and math.isfinite(final)) or final <= first:
        return None
    return first + fraction * (final - first)


def single_sample_matches(single: float, best_of: Sequence[Value]) -> int:
    """The largest N for which one sample (``single``) is at least as good as the best of N samples of
    the other model (``best_of[N - 1]``); 0 when even the other model's single sample is better."""
    matched = 0
    for n, value in enumerate(best_of, start=1):
        if value is None or not math.isfinite(float(value)) or single < float(value):
            break
        matched = n
    return matched


# -- pairing and power: how small a gap the study can resolve -------------------------------------------
@dataclass(frozen=True)
class PairedGap:
    """Mean of image-by-image differences ``a_i - b_i`` (same prompt and noise on both sides) and its
    standard error ``std(a_i - b_i) / sqrt(n)``; NaN when fewer than two pairs are known."""

    mean: float
    se: float
    n: int


def paired_gap(a: Sequence[Value], b: Sequence[Value]) -> PairedGap:
    """The paired difference of two evaluations of the same items, image by image (pairs where either
    side is missing or non-finite are left out). Pairing removes the variance the two sides share
    (the prompt's difficulty, the noise), so its SE is at most the unpaired one when they correlate."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same items on both sides, got {len(a)} and {len(b)}")
    d = [
        float(x) - float(y)
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    nan = float("nan")
    if len(d) < 2:
        return PairedGap(statistics.fmean(d) if d else nan, nan, len(d))
    return PairedGap(statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d)), len(d))


def mean_of_gaps_se(ses: Sequence[Value]) -> float:
    """Standard error of the mean over seeds of independent per-seed gaps with standard errors ``ses``:
    ``sqrt(sum se^2) / k`` (the evaluation's own noise only; the seed spread is the other part)."""
    v = _finite(ses)
    return math.sqrt(sum(s * s for s in v)) / len(v) if v else float("nan")


def planned_gap_se(level: float, relative_gap: float, images: int, seeds: int) -> float:
    """Standard error of the seed-mean accuracy gap when both sides score ``images`` images per seed,
    the baseline at accuracy ``level`` and the other ``relative_gap`` above it, judged image by image
    (binomial) with no correlation between the sides (the unpaired bound: pairing only lowers it):
    ``sqrt((p0 (1 - p0) + p1 (1 - p1)) / (images * seeds))`` with ``p1 = level * (1 + relative_gap)``."""
    if images < 1 or seeds < 1:
        raise ValueError(f"images and seeds must be at least 1, got {images} and {seeds}")
    p0, p1 = level, min(1.0, level * (1 + relative_gap))
    return math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / (images * seeds))


def images_for_gap(level: float, relative_gap: float, seeds: int, fraction: float = 1 / 3) -> int:
    """The fewest images per evaluation (per model and seed) for which :func:`planned_gap_se` is at
    most ``fraction`` of the gap ``level * relative_gap`` (a third: a gap of the paper's relative size
    then lies 3 standard errors from zero)."""
    if not 0 < level < 1 or relative_gap <= 0 or fraction <= 0:
        raise ValueError(
            f"need 0 < level < 1, relative_gap > 0, fraction > 0; got {level}, {relative_gap}, {fraction}"
        )
    p0, p1 = level, min(1.0, level * (1 + relative_gap))
    target = fraction * level * relative_gap
    return math.ceil((p0 * (1 - p0) + p1 * (1 - p1)) / (seeds * target * target) - 1e-9)


def resolution(se: float, reference_gap: float) -> float:
    """The standard error as a fraction of a reference gap (the paper's, at our level): at most 1/3
    means an effect of that size would stand 3 standard errors from zero; NaN when undefined."""
    if not (math.isfinite(se) and math.isfinite(reference_gap)) or reference_gap == 0:
        return float("nan")
    return se / abs(reference_gap)
