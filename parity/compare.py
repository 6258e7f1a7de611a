"""The harness's arithmetic: score differences, grey-level differences, tolerances, the result table.

Pure functions on tensors and dicts, so the default test suite can check them on hand-made inputs
(tests/test_parity_compare.py) without the originals' venvs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

# The tolerances: end-to-end scores within 1e-4 relative, preprocessing within 1 grey level.
SCORE_RTOL = 1e-4
GREY_LEVEL_TOL = 1.0
# Relative differences are taken against max(|reference|, SCORE_FLOOR): a score near zero (a cosine,
# a standardised reward) would otherwise turn float32 noise into a large ratio.
SCORE_FLOOR = 1e-2


def relative_difference(ours: torch.Tensor, reference: torch.Tensor, floor: float = SCORE_FLOOR) -> float:
    """max_i |ours_i - ref_i| / max(|ref_i|, floor), in float64."""
    ours, reference = ours.double().flatten(), reference.double().flatten()
    if ours.shape != reference.shape:
        raise ValueError(f"score counts differ: {ours.numel()} vs {reference.numel()}")
    return float(((ours - reference).abs() / reference.abs().clamp_min(floor)).max())


def grey_levels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised pixels [N, 3, H, W] back to 0..255 grey levels."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return (pixels.double() * s + m) * 255.0


def grey_level_difference(
    ours: torch.Tensor, reference: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> float:
    """Largest per-pixel difference in grey levels between two normalised batches."""
    if ours.shape != reference.shape:
        raise ValueError(f"preprocessed shapes differ: {tuple(ours.shape)} vs {tuple(reference.shape)}")
    return float((grey_levels(ours, mean, std) - grey_levels(reference, mean, std)).abs().max())


@dataclass
class ParityRow:
    """One reward's result. ``None`` in a number: not compared (``note`` says why)."""

    reward: str
    original: str
    model_only: float | None = None
    end_to_end: float | None = None
    grey_levels: float | None = None
    strict: bool | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def passed(self) -> bool | None:
        """Within tolerance (None when the original could not be run)."""
        if self.end_to_end is None:
            return None
        return (
            self.end_to_end <= SCORE_RTOL
            and (self.grey_levels is None or self.grey_levels <= GREY_LEVEL_TOL)
            and bool(self.strict)
        )


def _number(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def markdown_table(rows: Sequence[ParityRow], versions: Mapping[str, str] | None = None) -> str:
    """The table docs/rewards.md carries, followed by the versions the run used."""
    lines = [
        "| reward | original | model only (rel.) | end to end (rel.) | preprocessing (grey levels) "
        "| strict load | dropped keys | within tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dropped = ", ".join(f"{n} {reason}" for reason, n in r.dropped.items()) or "none"
        verdict = {True: "yes", False: "**no**", None: "not run"}[r.passed()]
        strict = {True: "yes", False: "**no**", None: "n/a"}[r.strict]
        grey = "n/a" if r.grey_levels is None else f"{r.grey_levels:.2g}"
        note = f" ({r.note})" if r.note else ""
        lines.append(
            f"| {r.reward} | {r.original}{note} | {_number(r.model_only)} | {_number(r.end_to_end)} "
            f"| {grey} | {strict} | {dropped} | {verdict} |"
        )
    if versions:
        lines += ["", "Versions: " + "; ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "."]
    return "\n".join(lines)


__all__ = [
    "GREY_LEVEL_TOL",
    "SCORE_FLOOR",
    "SCORE_RTOL",
    "ParityRow",
    "grey_level_difference",
    "grey_levels",
    "markdown_table",
    "relative_difference",
]
