"""What every section of the evidence report shares: the papers' figures, cell formatting, tables, paired
gaps with their verdicts, a :class:`Section`, and :class:`ReportBase` (the study, its runs and the settings
that more than one section reads). The sections (:mod:`miro.shapes.study.claims`) and the frame
(:mod:`miro.shapes.study.report`) build on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig

from miro.shapes.study import plots
from miro.shapes.study.plan import Study
from miro.shapes.study.results import OVERALL, Evaluation, Runs, collect
from miro.shapes.study.stats import (
    Spread,
    across_seeds,
    mean_of_gaps_se,
    paired_differences,
    paired_gap,
    resolution,
)

ROLE_LABEL = {"miro": "MIRO", "baseline": "baseline"}
Figure = Callable[[], plots.plt.Figure]

# The papers' figures (MIRO: arXiv 2510.25897; Chunk-GRPO: arXiv 2510.21583), next
# to which the report puts ours.
PAPER = {
    "speedup": "up to 19x faster convergence (aesthetic score), 360M model, CC12M + LAION-Aesthetics",
    "geneval": "GenEval 52 -> 57 over the same model without reward conditioning",
    "best_of": "one sample beats the baseline's best-of-128 (aesthetic, HPSv2)",
    "guidance": "w = 7; negative branch: every reward at 0 (released pipeline: also an empty prompt); "
    "pushing one reward (only it low in the negative branch, aesthetic at 0.625): GenEval 68 -> 75",
    "control": "the measured reward follows each requested target (every reward, its own sweep)",
    "grpo": "HPSv3 on FLUX: base 13.804, step-level 15.080, chunk 15.236, chunk + weighted sampling 15.373",
}
VERDICT_LABEL = {
    "speedup": "Convergence speed-up",
    "geneval": "Accuracy over the baseline",
    "control": "Control",
    "best_of": "Best-of-N",
    "guidance": "Guidance",
    "grpo": "GRPO",
}


# -- cells ------------------------------------------------------------------------------------------
def short(s: Spread, digits: int = 3) -> str:
    """mean ± std (without the range): for wide tables."""
    if s.n == 0:
        return "n/a"
    return f"{s.mean:.{digits}f}" if s.n == 1 else f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def steps_cell(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def ratio_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def share_words(fraction: float) -> str:
    """ "all of" for 1, else a percentage: how much of the baseline's gain X stands for."""
    return "all of" if fraction == 1 else f"{fraction:.0%} of"


def count_words(n: int) -> str:
    """2_600_000 -> "2.6M", 1234 -> "1.2k"."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def categories(evaluations: Sequence[Evaluation | None]) -> list[str]:
    """The benchmark categories found in any evaluation (benchmark order), overall first."""
    seen: dict[str, None] = {OVERALL: None}
    for e in evaluations:
        for category in e.accuracy if e else []:
            seen.setdefault(category, None)
    return list(seen)


def accuracy_of(e: Evaluation | None, category: str = OVERALL) -> float | None:
    return e.accuracy.get(category) if e else None


def reward_of(e: Evaluation | None, name: str) -> float | None:
    return e.reward(name) if e else None


def signed(x: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.{digits}f}"


@dataclass(frozen=True)
class Gap:
    """One paired comparison (A − B, same items and noise, per training seed), as the report states it:
    the seed spread of the per-seed gaps, the evaluation's own paired standard error (image by image),
    and the gap the paper reports in relative terms at B's level."""

    label: str
    seeds: Spread  # per-seed A − B
    eval_se: float  # SE of the seed mean from the evaluations alone (paired image by image); NaN: unknown
    reference: float  # the paper's relative gap times B's seed-mean level; NaN: no paper figure

    @property
    def se(self) -> float:
        """The larger of the two estimates of the seed mean's SE (over seeds, and from the images):
        with few seeds the seed spread alone can be small by chance."""
        known = [x for x in (self.seeds.se, self.eval_se) if math.isfinite(x)]
        return max(known) if known else float("nan")

    @property
    def resolution(self) -> float:
        return resolution(self.se, self.reference)

    def cells(self) -> list[str]:
        return [
            self.label,
            short(self.seeds),
            "n/a" if not math.isfinite(self.eval_se) else f"{self.eval_se:.3f}",
            "n/a" if not math.isfinite(self.se) else f"{self.se:.3f}",
            "n/a" if not math.isfinite(self.reference) else f"{self.reference:.3f}",
            "n/a" if not math.isfinite(self.resolution) else f"{self.resolution:.2f}",
        ]


GAP_HEADER = ["comparison (A − B)", "A − B over seeds", "eval SE (paired)", "SE used", "paper's gap here",
              "SE / paper's gap"]  # fmt: skip


def gap_of(
    label: str, a: Sequence[Evaluation | None], b: Sequence[Evaluation | None], metric: str,
    value: Callable[[Evaluation | None], float | None], relative: float,
) -> Gap:  # fmt: skip
    """A − B on ``metric`` for evaluations of the same items paired by seed (``value`` reads a seed's
    mean); the evaluation SE pairs the two image by image where results.json holds per-image values."""
    per_seed = across_seeds(paired_differences([value(e) for e in a], [value(e) for e in b]))
    ses = []
    for ea, eb in zip(a, b, strict=True):
        xa, xb = (ea.images(metric) if ea else None), (eb.images(metric) if eb else None)
        if xa and xb and len(xa) == len(xb):
            ses.append(paired_gap(xa, xb).se)
    eval_se = mean_of_gaps_se(ses) if ses and len(ses) == per_seed.n else float("nan")
    level = across_seeds([value(e) for e in b]).mean
    reference = abs(level) * relative if math.isfinite(level) and relative else float("nan")
    return Gap(label, per_seed, eval_se, reference)


def conclude(gaps: Sequence[Gap], fraction: float) -> list[str]:
    """What a reader may and may not conclude from paired gaps, worded from the numbers: a gap beyond
    2 SE is a measured difference; one within is not, and it says nothing about an effect of the
    paper's size unless the SE is at most ``fraction`` of that effect."""
    lines = []
    for g in gaps:
        se, m = g.se, g.seeds.mean
        if g.seeds.n == 0:
            continue
        if not se > 0:  # NaN (one seed, no per-image values) or no spread at all: nothing to judge by
            lines.append(
                f"- {g.label}: {signed(m)} from {g.seeds.n} seed(s) without a usable standard error: "
                "**may not** conclude anything from it."
            )
            continue
        if abs(m) > 2 * se:
            said = f"**may** conclude A {'>' if m > 0 else '<'} B ({signed(m)}, |gap| > 2 SE = {2 * se:.3f})"
        else:
            said = f"**may not** conclude a difference ({signed(m)}, within 2 SE = {2 * se:.3f})"
        if abs(m) > 2 * se:
            if math.isfinite(g.reference):
                said += (
                    f"; SE / the paper's relative gap at this level ({g.reference:.3f}) {g.resolution:.2f}"
                )
        elif math.isfinite(g.reference):
            if g.resolution <= fraction:
                said += (
                    f"; the resolution suffices for an effect of the paper's relative size ({g.reference:.3f}"
                    f" here, SE/gap {g.resolution:.2f} ≤ {fraction:.2f})" + ", so its absence is informative"
                )
            else:
                said += (
                    f"; **may not** conclude that an effect of the paper's relative size ({g.reference:.3f} "
                    f"here) is absent: SE/gap {g.resolution:.2f} > {fraction:.2f}"
                )
        if g.seeds.n < 2:
            said += " (one training seed: the spread between seeds is unknown)"
        lines.append(f"- {g.label}: {said}.")
    if not lines:
        return []
    return ["What a reader may and may not conclude (computed from the numbers above):", "", *lines, ""]


def gap_table(gaps: Sequence[Gap]) -> list[str]:
    return table(GAP_HEADER, [g.cells() for g in gaps])


@dataclass
class Section:
    """Markdown lines of one section, the figures it draws and its verdicts for the summary."""

    lines: list[str] = field(default_factory=list)
    plots: dict[str, Figure] = field(default_factory=dict)
    lines_after: list[str] = field(default_factory=list)  # conclusions collected while building a table
    verdicts: dict[str, str] = field(default_factory=dict)

    def figure(self, plot_dir: str, name: str, draw: Figure, alt: str) -> None:
        self.plots[name] = draw
        self.lines += [f"![{alt}]({plot_dir}/{name})", ""]


class ReportBase:
    """The state every section reads: the study, its configuration and its saved runs (nothing is run)."""

    def __init__(self, study: Study, plot_dir_name: str, runs: Runs | None = None) -> None:
        self.study, self.cfg, self.layout = study, study.cfg, study.layout
        self.seeds = study.seeds
        self.plot_dir = plot_dir_name
        self.rewards = list(self.cfg.measured_rewards)
        self.runs = collect(study) if runs is None else runs
        a = self.cfg.analysis
        self.relative = float(a.paper.relative_gap)  # GenEval 52 -> 57: the paper's gap over its baseline
        self.fraction = float(a.resolve_fraction)

    def last_profile(self) -> DictConfig:
        """The evaluation settings of the convergence curves' last point (plan.Study.convergence_profile)."""
        e = self.cfg.eval
        return e.convergence_last if e.get("convergence_last") is not None else e.convergence

    def model_guidance(self) -> float | None:
        """The scale the negative-branch evaluations ran at: the model's own (they pass no --guidance)."""
        return next(
            (e.guidance for es in self.runs.negatives.values() for e in es if e and e.guidance is not None),
            None,
        )

    def guided_settings(self) -> str:
        s = self.runs.sampling
        w = self.model_guidance()
        if w is None:
            return "the model's own guidance settings were not recorded"
        guided = s.get("guided_rewards")
        if guided is None:
            return (
                f"the model samples at w = {w:g} with every reward at 0 in the negative branch, as MIRO does"
            )
        return (
            f"the model's recipe samples at w = {w:g} and guides only {', '.join(guided) or 'no reward'} "
            "(the other rewards keep their targets in the negative branch)"
        )
