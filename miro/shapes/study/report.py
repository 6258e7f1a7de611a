"""The evidence report (docs/results.md): the prose and tables around the study's saved runs.

Reads nothing itself: it renders :class:`~miro.shapes.study.results.Runs` (every results.json read once)
with the statistics of :mod:`~miro.shapes.study.stats`, and asks :mod:`~miro.shapes.study.plots` for the
figures. Each point is the mean ± standard deviation over seeds with the range [min, max]; missing runs
are listed by name with the command that makes them, and their cells read "n/a". Verdicts (a speed-up,
a single sample matching a best-of-N, chunk-level against step-level GRPO) are computed from the
numbers and may well be negative. What the prose says about the setting (model size, image size, steps,
rewards, guidance) is read from the configuration and the runs, so it holds at every scale.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig

from miro.config import CONF_DIR
from miro.data.shards import write_bytes_atomic
from miro.eval.study import Step
from miro.shapes.study import plots
from miro.shapes.study.plan import ROLES, Study, compose_study_config
from miro.shapes.study.results import OVERALL, Change, Evaluation, Runs, collect, wall_seconds
from miro.shapes.study.stats import (
    Spread,
    across_seeds,
    binomial_se,
    distinguishable,
    gap_se,
    images_for_gap,
    mean_curve,
    mean_of_gaps_se,
    paired_differences,
    paired_gap,
    planned_gap_se,
    resolution,
    single_sample_matches,
    speedup,
    steps_to_reach,
    threshold_at,
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


def _steps(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _share(fraction: float) -> str:
    """ "all of" for 1, else a percentage: how much of the baseline's gain X stands for."""
    return "all of" if fraction == 1 else f"{fraction:.0%} of"


def _count(n: int) -> str:
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


def _accuracy(e: Evaluation | None, category: str = OVERALL) -> float | None:
    return e.accuracy.get(category) if e else None


def _reward(e: Evaluation | None, name: str) -> float | None:
    return e.reward(name) if e else None


def _signed(x: float, digits: int = 3) -> str:
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
                f"- {g.label}: {_signed(m)} from {g.seeds.n} seed(s) without a usable standard error: "
                "**may not** conclude anything from it."
            )
            continue
        if abs(m) > 2 * se:
            said = f"**may** conclude A {'>' if m > 0 else '<'} B ({_signed(m)}, |gap| > 2 SE = {2 * se:.3f})"
        else:
            said = f"**may not** conclude a difference ({_signed(m)}, within 2 SE = {2 * se:.3f})"
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


class Report:
    """Builds the report's Markdown and figures from a :class:`Study`'s saved runs (nothing is run)."""

    def __init__(self, study: Study, plot_dir_name: str, runs: Runs | None = None) -> None:
        self.study, self.cfg, self.layout = study, study.cfg, study.layout
        self.seeds = study.seeds
        self.plot_dir = plot_dir_name
        self.rewards = list(self.cfg.measured_rewards)
        self.runs = collect(study) if runs is None else runs
        a = self.cfg.analysis
        self.relative = float(a.paper.relative_gap)  # GenEval 52 -> 57: the paper's gap over its baseline
        self.fraction = float(a.resolve_fraction)

    # -- 1. convergence -----------------------------------------------------------------------------
    def convergence(self) -> Section:
        sec = Section(["## 1. Convergence: MIRO against the unconditioned baseline", "",
                       f"Paper: {PAPER['speedup']}; {PAPER['geneval']}.", ""])  # fmt: skip
        steps = self.study.export_steps
        res = self.runs.convergence
        found = [e for role in ROLES for per_seed in res[role] for e in per_seed if e]
        if not found:
            return Section(sec.lines + ["No convergence results yet (see Missing runs).", ""])
        cats = categories(found)
        metrics: dict[str, Callable[[Evaluation | None], float | None]] = {
            f"accuracy {c}": (lambda e, c=c: _accuracy(e, c)) for c in cats
        }
        metrics |= {name: (lambda e, n=name: _reward(e, n)) for name in self.rewards}
        curves = {
            role: {m: [[get(e) for e in per_seed] for per_seed in res[role]] for m, get in metrics.items()}
            for role in ROLES
        }
        conv, last = self.cfg.eval.convergence, self._last_profile()
        sizes = f"{conv.per_category} benchmark prompts per category x {conv.samples_per_prompt} images"
        if last is not conv:
            sizes += (
                f" ({last.per_category} x {last.samples_per_prompt} at the last step, where the two models "
                "are compared)"
            )  # fmt: skip
        sec.lines += [
            f"Both runs train {self.cfg.train.steps} steps on the same data with the same seeds; the "
            f"exports (EMA weights) at steps {', '.join(map(str, steps))} are evaluated on {sizes}. MIRO "
            "is sampled with every reward target at 10; the baseline has no reward input. Cells: mean ± std "
            "over seeds.",
            "",
        ]
        overall = f"accuracy {OVERALL}"

        def at(role: str, metric: str, i: int) -> Spread:
            return across_seeds([c[i] for c in curves[role][metric]])

        rows = [
            [
                str(n),
                *(short(at(role, overall, i)) for role in ROLES),
                *(short(at(role, r, i)) for r in self.rewards for role in ROLES),
            ]
            for i, n in enumerate(steps)
        ]
        header = [
            "step",
            "accuracy MIRO",
            "accuracy baseline",
            *(f"{r} {ROLE_LABEL[role]}" for r in self.rewards for role in ROLES),
        ]
        sec.lines += [
            "Benchmark accuracy (every fact holds) and mean rewards against training steps:",
            "",
            *table(header, rows),
            *self._evaluation_noise(curves["miro"][overall], len(cats) - 1),
        ]
        gaps = [
            gap_of(f"accuracy at step {n}", [c[i] for c in res["miro"]], [c[i] for c in res["baseline"]],
                   "accuracy", _accuracy, self.relative)
            for i, n in enumerate(steps)
        ]  # fmt: skip
        final = [
            gap_of(f"{r} at step {steps[-1]}", [c[-1] for c in res["miro"]], [c[-1] for c in res["baseline"]],
                   r, lambda e, r=r: _reward(e, r), self.relative)
            for r in self.rewards
        ]  # fmt: skip
        sec.lines += [
            "MIRO − baseline, paired: both are evaluated on the same benchmark items with the same noise "
            "(evaluation seed), so each seed's gap is a difference image by image; its SE from the images "
            "(eval SE) and from the seed spread are both shown, the larger is used. The paper's gap here is "
            f"its relative gain (GenEval 52 -> 57: {self.relative:+.1%}) at the baseline's level; the study "
            f"is powered when SE / paper's gap ≤ {self.fraction:.2f}.",
            "",
            *gap_table([*gaps, *final]),
            *conclude([gaps[-1], *final], self.fraction),
        ]
        g = gaps[-1]
        if g.seeds.n:
            se = "n/a" if not math.isfinite(g.se) else f"{g.se:.3f}"
            ratio = "n/a" if not math.isfinite(g.resolution) else f"{g.resolution:.2f}"
            if not math.isfinite(g.se):
                told = "no usable SE"
            elif abs(g.seeds.mean) > 2 * g.se:
                told = "a difference beyond 2 SE"
            else:
                told = "no difference shown (within 2 SE)"
            sec.verdicts["geneval"] = (
                f"MIRO − baseline {short(g.seeds)} at step {steps[-1]}, paired (SE {se}; SE / the paper's "
                f"relative gap at our level {ratio}): {told}"
            )

        def panels(names: Sequence[str]) -> dict[str, dict[str, list]]:
            return {m: {ROLE_LABEL[role]: curves[role][m] for role in ROLES} for m in names}

        accuracy_panels = panels([f"accuracy {c}" for c in cats])
        reward_panels = panels(self.rewards)
        sec.figure(
            self.plot_dir, "convergence_accuracy.png",
            lambda: plots.curves_figure(steps, accuracy_panels, "training step"), "accuracy against steps",
        )  # fmt: skip
        sec.figure(
            self.plot_dir, "convergence_rewards.png",
            lambda: plots.curves_figure(steps, reward_panels, "training step"), "rewards against steps",
        )  # fmt: skip
        sec.lines += self._speedups(steps, curves, [overall, *self.rewards], sec)
        last = len(steps) - 1
        rows = [[c, *(short(at(role, f"accuracy {c}", last)) for role in ROLES)] for c in cats]
        sec.lines += [
            f"Accuracy per category at step {steps[-1]}:",
            "",
            *table(["category", "MIRO", "baseline"], rows),
        ]
        return sec

    def _evaluation_noise(
        self, miro_accuracy: Sequence[Sequence[float | None]], n_categories: int
    ) -> list[str]:
        """One evaluation's sampling error, so that a reader does not read a crossing of two curves
        closer than that as a result."""
        final = across_seeds([c[-1] for c in miro_accuracy])
        last = self._last_profile()
        images = last.per_category * last.samples_per_prompt * n_categories
        if final.n == 0 or images == 0:
            return []
        se = binomial_se(final.mean, images)
        gap = gap_se(se, final.n)  # MIRO's seed mean minus the baseline's, similar accuracies
        conv = self.cfg.eval.convergence
        earlier = conv.per_category * conv.samples_per_prompt * n_categories
        before = ""
        if earlier != images and earlier > 0:  # the curve's other points use fewer images
            e_se = binomial_se(final.mean, earlier)
            before = (
                f" (at the earlier steps {earlier} images: about {e_se:.3f} and "
                f"{gap_se(e_se, final.n):.3f})"
            )  # fmt: skip
        return [
            f"Sampling error: one evaluation at the last step scores {images} images, so an accuracy near "
            f"{final.mean:.2f} has a binomial standard error of about {se:.3f}, and the gap between the "
            f"two {final.n}-seed mean curves one of about {gap:.3f}{before}; gaps under twice that, and the "
            "speed-ups read off them, are within the noise.",
            "",
        ]

    def _speedups(
        self, steps: Sequence[int], curves: dict, metrics: Sequence[str], sec: Section
    ) -> list[str]:
        fractions = [float(f) for f in self.cfg.analysis.threshold_fractions]
        rows = []
        for metric in metrics:
            base_mean = mean_curve(curves["baseline"][metric])
            miro_mean = mean_curve(curves["miro"][metric])
            for f in fractions:
                x = threshold_at(base_mean[0], base_mean[-1], f) if base_mean else None
                if x is None:
                    rows.append(
                        [metric, f"{f:g}", "n/a", "n/a", "n/a", "n/a (no baseline gain: X undefined)", ""]
                    )
                    continue
                b, m = steps_to_reach(steps, base_mean, x), steps_to_reach(steps, miro_mean, x)
                per_seed = [
                    speedup(steps_to_reach(steps, bc, x), steps_to_reach(steps, mc, x))
                    for bc, mc in zip(curves["baseline"][metric], curves["miro"][metric], strict=True)
                ]
                ratio = speedup(b, m)
                never = "MIRO" if m is None else "the baseline"
                rows.append(
                    [
                        metric,
                        f"{f:g}",
                        f"{x:.3f}",
                        _steps(b),
                        _steps(m),
                        _ratio(ratio) if ratio is not None else f"n/a ({never} never reaches X)",
                        ", ".join(_ratio(p) for p in per_seed),
                    ]  # fmt: skip
                )
                if f == fractions[-1]:
                    known = [p for p in per_seed if p is not None]
                    if len(known) == len(per_seed) and all(p > 1 for p in known):
                        said = f"**may** conclude MIRO gets there sooner: faster on all {len(known)} seeds"
                    elif known and all(p < 1 for p in known) and len(known) == len(per_seed):
                        said = f"**may** conclude MIRO gets there later: slower on all {len(known)} seeds"
                    else:
                        said = "**may not** conclude a speed-up either way: the seeds disagree or miss X"
                    sec.lines_after.append(f"- {metric} (X = {_share(f)} the baseline's gain): {said}.")
                if metric == f"accuracy {OVERALL}" and f == fractions[-1]:
                    sec.verdicts["speedup"] = (
                        f"{_ratio(ratio)} on benchmark accuracy "
                        f"(X = {x:.3f}: {_share(f)} the baseline's gain; per seed "
                        f"{', '.join(_ratio(p) for p in per_seed)}): {said}"
                        if ratio is not None
                        else f"n/a: {never} never reaches X = {x:.3f} on accuracy"
                    )
        told = sec.lines_after
        sec.lines_after = []
        return [
            "Speed-up = steps for the baseline to reach X / steps for MIRO to reach X, on the seed-mean "
            "curves (linear interpolation between evaluated steps; a curve already past X at its first point "
            "counts that step, an upper bound). X lies the given fraction of the way from the baseline's "
            "first to its final value (fraction 1: the baseline's final value). Per-seed ratios use the same "
            "X on each seed's own curves.",
            "",
            *table(["metric", "fraction", "X", "baseline steps", "MIRO steps", "speed-up", "per seed"], rows),
            *(
                ["What a reader may and may not conclude about convergence speed (computed from the per-seed "
                 "ratios; a speed-up read off curves whose gaps lie within 2 SE above is not a result):", "",
                 *told, ""]
                if told else []
            ),
        ]  # fmt: skip

    # -- 2 and 3. control and best-of-N -------------------------------------------------------------
    def control(self) -> Section:
        sec = Section(["## 2. Control: measured reward against requested target", "",
                       f"Paper: {PAPER['control']}.", ""])  # fmt: skip
        finals = [e for e in self.runs.finals if e]
        if not finals:
            return Section(sec.lines + ["No final evaluations yet (see Missing runs).", ""])
        names = [n for n in self.rewards if any(n in e.sweeps for e in finals)]
        targets = sorted({p.target for e in finals for points in e.sweeps.values() for p in points})

        def at(e: Evaluation, name: str, target: float, accuracy: bool = False) -> float | None:
            point = next((p for p in e.sweeps.get(name, []) if p.target == target), None)
            return None if point is None else point.accuracy if accuracy else point.mean

        rows = [
            [
                f"{t:g}",
                *(across_seeds([at(e, n, t) for e in finals]).format() for n in names),
                across_seeds([at(e, "alignment", t, accuracy=True) for e in finals]).format(),
            ]
            for t in targets
        ]
        sec.lines += [
            "Each reward's target swept with the others at 10 (final model of every seed). Cells: mean ± std "
            "[min, max] over seeds of the per-seed mean.",
            "",
            *table(["target", *names, "accuracy (alignment sweep)"], rows),
        ]
        rows = []
        data_range = finals[0].data_range
        for n in names:
            contrasts = [e.contrast(n) for e in finals]
            rng = data_range.get(n)
            rows.append(
                [
                    n,
                    across_seeds([c.difference for c in contrasts]).format(),
                    f"{sum(c.rises for c in contrasts)}/{len(contrasts)}",
                    "n/a" if not rng else f"[{rng[0]:.3g}, {rng[1]:.3g}]",
                ]
            )
        sec.lines += [
            "Top − bottom target (paired within each seed) and the seeds where it exceeds 2 standard errors:",
            "",
            *table(["reward", "top − bottom", "seeds z > 2", "training data range"], rows),
        ]
        sec.verdicts["control"] = ", ".join(f"{r[0]} {r[2]}" for r in rows) + " seeds rise with the target"
        told = []
        for n in names:
            contrasts = [e.contrast(n) for e in finals]
            rising = sum(c.rises for c in contrasts)
            if rising == len(contrasts):
                said = (
                    "**may** conclude that it follows its target "
                    f"(top > bottom beyond 2 SE on all {rising} seeds)"
                )
            elif rising == 0:
                said = "**may not** conclude that it follows its target: no seed's top − bottom exceeds 2 SE"
            else:
                said = (
                    f"**may not** conclude control in general: {rising} of {len(contrasts)} seeds rise "
                    "beyond "
                    "2 SE"
                )
            told.append(f"- {n}: {said}.")
        sec.lines += [
            "What a reader may and may not conclude (from the paired top − bottom contrasts):", "", *told,
            "- The sweep's levels are bins of the training data's scores: a target outside the data's range "
            "(the table's last column) asks for what no training image showed.",
            "",
        ]  # fmt: skip
        panels = {}
        for n in names:
            ts = sorted({p.target for e in finals for p in e.sweeps.get(n, [])})
            panels[n] = (ts, [[at(e, n, t) for t in ts] for e in finals])
        sec.figure(
            self.plot_dir, "control.png", lambda: plots.control_figure(panels, data_range), "reward control"
        )
        return sec

    def best_of_n(self) -> Section:
        sec = Section(["## 3. Best-of-N: MIRO against the baseline", "", f"Paper: {PAPER['best_of']}.", ""])
        finals = [e for e in self.runs.finals if e and (e.best_of or e.baseline_best_of)]
        if not finals:
            return Section(sec.lines + ["No best-of-N results yet (see Missing runs).", ""])

        def curves(e: Evaluation, role: str) -> dict[str, list[float]]:
            return e.baseline_best_of if role == "baseline" else e.best_of

        names = [n for n in self.rewards if any(n in e.best_of for e in finals)]
        longest = max((len(c) for e in finals for c in e.best_of.values()), default=0)
        ns = [int(n) for n in self.cfg.analysis.best_of_ns if int(n) <= longest]
        rows = []
        for n in ns:
            cells = []
            for name in names:
                for role in ROLES:
                    values = [(curves(e, role).get(name) or [])[n - 1 : n] for e in finals]
                    cells.append(short(across_seeds([v[0] if v else None for v in values])))
            rows.append([str(n), *cells])
        header = ["N", *(f"{name} {ROLE_LABEL[role]}" for name in names for role in ROLES)]
        sec.lines += [
            "Expected best reward among N samples per prompt "
            f"({self.cfg.eval.final.get('best_of_prompts', '')} "
            "prompts, MIRO at every target 10). Cells: mean ± std over seeds.",
            "",
            *table(header, rows),
        ]
        matches = []
        for name in names:
            per_seed = []
            for e in finals:
                miro, base = e.best_of.get(name), e.baseline_best_of.get(name)
                per_seed.append(None if not miro or not base else single_sample_matches(miro[0], base))
            known = [m for m in per_seed if m is not None]
            if not known:
                text = "n/a (no baseline curve)"
            elif max(known) == 0:
                text = "no: the baseline's single sample is already better"
            else:
                text = "N = " + ", ".join(str(m) for m in known) + " (per seed)"
            matches.append([name, text])
        sec.lines += [
            "Largest N for which one MIRO sample is at least the baseline's best-of-N, per seed (0: the "
            "baseline's single sample is already better):",
            "",
            *table(["reward", "single MIRO sample ≥ baseline best-of-N"], matches),
        ]
        sec.verdicts["best_of"] = "; ".join(f"{m[0]}: {m[1]}" for m in matches)
        gaps = []
        for name in names:
            for n in sorted({1, ns[-1]} if ns else set()):

                def single(e: Evaluation | None, name: str = name) -> float | None:
                    return (e.best_of.get(name) or [None])[0] if e else None

                def best(e: Evaluation | None, name: str = name, n: int = n) -> float | None:
                    curve = (e.baseline_best_of.get(name) or []) if e else []
                    return curve[n - 1] if len(curve) >= n else None

                per_seed = across_seeds(
                    paired_differences([single(e) for e in finals], [best(e) for e in finals])
                )
                level = across_seeds([best(e) for e in finals]).mean
                reference = abs(level) * self.relative if math.isfinite(level) else float("nan")
                gaps.append(
                    Gap(f"{name}: one MIRO sample − baseline best-of-{n}", per_seed, float("nan"), reference)
                )
        sec.lines += [
            "One MIRO sample against the baseline's best-of-N, paired by seed (the same prompts and noise "
            "within a seed; the curves are means over prompts, so only the seed spread gives an SE here):",
            "",
            *gap_table(gaps),
            *conclude(gaps, self.fraction),
        ]  # fmt: skip
        panels = {
            name: {ROLE_LABEL[role]: [curves(e, role).get(name) or [] for e in finals] for role in ROLES}
            for name in names
        }
        sec.figure(self.plot_dir, "best_of_n.png", lambda: plots.best_of_figure(panels), "best of N")
        return sec

    # -- 4. guidance --------------------------------------------------------------------------------
    def model_guidance(self) -> float | None:
        """The scale the negative-branch evaluations ran at: the model's own (they pass no --guidance)."""
        return next(
            (e.guidance for es in self.runs.negatives.values() for e in es if e and e.guidance is not None),
            None,
        )

    def guidance(self) -> Section:
        sec = Section(["## 4. Guidance: scale and negative branch", "", f"Paper: {PAPER['guidance']}.", ""])
        g = self.cfg.guidance
        by_scale, by_negative = self.runs.guidance, self.runs.negatives
        scales = list(by_scale)
        if not any(e for es in [*by_scale.values(), *by_negative.values()] for e in es):
            return Section(sec.lines + ["No guidance results yet (see Missing runs).", ""])

        def row(label: str, evaluations: list[Evaluation | None]) -> list[str]:
            return [
                label,
                across_seeds([_accuracy(e) for e in evaluations]).format(),
                *(short(across_seeds([_reward(e, n) for e in evaluations])) for n in self.rewards),
            ]

        header = ["accuracy", *self.rewards]
        sec.lines += [
            "Final MIRO model, every target 10, with the model's own negative branch (the recipe's "
            "`sampling.guided_rewards`) at each guidance scale:",
            "",
            *table(["scale", *header], [row(f"{w:g}", by_scale[w]) for w in scales]),
        ]
        default_w = self.model_guidance()
        rows = []
        if default_w is not None and float(default_w) in by_scale:
            rows.append(row("the model's own", by_scale[float(default_w)]))
        for variant, flags in g.negatives.items():
            described = ", ".join(f"{k} {json.dumps(v)}" for k, v in flags.items())
            rows.append(row(f"{variant} ({described})", by_negative[variant]))
        scale_text = "n/a" if default_w is None else f"{float(default_w):g}"
        guided = self.runs.sampling.get("guided_rewards")
        own_is = (
            f" With one guided reward ({guided[0]}) the model's own branch is the paper's "
            '"push one reward" trick on that reward.'
            if isinstance(guided, list) and len(guided) == 1
            else ""
        )
        sec.lines += [
            f"Negative branches at the model's scale ({scale_text}); unnamed negative rewards are 0, so "
            '`negative_rewards ""` is MIRO\'s default (every reward low). '
            f"The model's own: {self._guided()}." + own_is,
            "",
            *table(["negative branch", *header], rows),
        ]
        if default_w is not None and float(default_w) in by_scale:
            own = by_scale[float(default_w)]
            gaps = [
                gap_of(f"{variant} − the model's own, {metric}", by_negative[variant], own, metric,
                       _accuracy if metric == "accuracy" else (lambda e, m=metric: _reward(e, m)),
                       self.relative)
                for variant in g.negatives
                for metric in ["accuracy", *self.rewards]
            ]  # fmt: skip
            sec.lines += [
                "Each negative branch against the model's own at the same scale, paired (same items and "
                "noise within a seed):",
                "",
                *gap_table(gaps),
                *conclude([x for x in gaps if x.label.endswith(", accuracy")], self.fraction),
            ]
        best = max(rows, key=lambda r: float(r[1].split()[0]) if r[1] != "n/a" else -math.inf)
        name = best[0].split(" (")[0]  # the variant's name, without its flags
        sec.verdicts["guidance"] = f"best accuracy with the negative branch '{name}' ({best[1]})"
        n_seeds = len(self.seeds)
        panels = {"accuracy": [[_accuracy(by_scale[w][i]) for w in scales] for i in range(n_seeds)]}
        panels |= {
            n: [[_reward(by_scale[w][i], n) for w in scales] for i in range(n_seeds)] for n in self.rewards
        }
        sec.figure(
            self.plot_dir, "guidance.png", lambda: plots.guidance_figure(scales, panels), "guidance scale"
        )
        return sec

    # -- 5. GRPO ------------------------------------------------------------------------------------
    def grpo(self) -> Section:
        g = self.cfg.grpo
        sec = Section(["## 5. GRPO: chunk-level against step-level", "", f"Paper: {PAPER['grpo']}.", ""])
        optimised = str(g.reward)
        before, changes = self.runs.grpo_before, self.runs.grpo_changes
        if not any(c for cs in changes.values() for c in cs):
            return Section(sec.lines + ["No GRPO results yet (see Missing runs).", ""])
        names = [optimised, *(n for n in self.rewards if n != optimised)]
        r = self.runs.rollouts
        rollouts = (
            "rollout counts not recorded yet"
            if r is None
            else f"{r.iterations} iterations x {r.prompts} prompts x {r.group_size} samples = "
            f"{r.total} rollouts"
        )
        sec.lines += [
            f"From each seed's final MIRO model, {g.iterations} GRPO iterations optimising `{optimised}`; "
            f"every variant makes the same rollouts ({rollouts}). Evaluated on the benchmark's "
            "prompts, which GRPO's prompt pool excludes. Cells: after − before, mean ± std over seeds "
            "(before: "
            + ", ".join(f"{n} {short(across_seeds([_reward(b, n) for b in before]))}" for n in names)
            + ").",
            "",
        ]

        def deltas(cs: list[Change | None], name: str) -> Spread:
            return across_seeds([c.delta.get(name) if c else None for c in cs])

        rows = [
            [
                variant,
                self.runs.chunks.get(variant, "n/a"),
                *(short(deltas(cs, n)) for n in names),
                short(across_seeds([c.accuracy_delta if c else None for c in cs])),
            ]
            for variant, cs in changes.items()
        ]
        header = ["variant", "chunks (seed 0)", f"{optimised} (optimised)", *names[1:], "accuracy"]
        sec.lines += table(header, rows)
        sec.lines += self._chunk_vs_step(changes, optimised, sec)
        after = self.runs.grpo_after
        if "step" in after:
            relative = {k: float(v) for k, v in self.cfg.analysis.paper.grpo_relative_gap.items()}
            gaps = [
                gap_of(f"{variant} − step, {optimised}", after[variant], after["step"], optimised,
                       lambda e: _reward(e, optimised), relative.get(variant, float("nan")))
                for variant in after
                if variant != "step"
            ]  # fmt: skip
            sec.lines += [
                "Against step-level GRPO after the same rollouts, paired (same held-out items and noise "
                "within a seed); the paper's gap is its HPSv3 gain over step-level in relative terms at our "
                "step-level "
                "value:",
                "",
                *gap_table(gaps),
                *conclude(gaps, self.fraction),
            ]
        panels = {n: {variant: deltas(cs, n) for variant, cs in changes.items()} for n in names}
        sec.figure(
            self.plot_dir,
            "grpo.png",
            lambda: plots.bars_figure(panels, "{name}: after − before"),
            "GRPO changes",
        )
        return sec

    def _chunk_vs_step(
        self, changes: dict[str, list[Change | None]], optimised: str, sec: Section
    ) -> list[str]:
        if "step" not in changes:
            return []
        lines = []
        step = [c.after.get(optimised) if c else None for c in changes["step"]]
        for variant in [v for v in changes if v != "step"]:
            after = [c.after.get(optimised) if c else None for c in changes[variant]]
            d = across_seeds(paired_differences(after, step))
            judged = distinguishable(d)
            if judged is None:
                verdict = f"too few seeds ({d.n}) to judge"
            else:
                verdict = (
                    "distinguishable" if judged else "NOT distinguishable"
                ) + f" from step-level with {d.n} seeds (|mean| vs 2 SE = {2 * d.se:.3f})"
            lines.append(
                f"- {variant} − step, `{optimised}` after GRPO (paired by seed): {d.format()}: {verdict}."
            )
            said = f"{variant} − step: {short(d)}, {verdict}"
            sec.verdicts["grpo"] = f"{sec.verdicts['grpo']}; {said}" if "grpo" in sec.verdicts else said
        return [*lines, ""]

    def _last_profile(self) -> DictConfig:
        """The evaluation settings of the convergence curves' last point (plan.Study.convergence_profile)."""
        e = self.cfg.eval
        return e.convergence_last if e.get("convergence_last") is not None else e.convergence

    # -- power: the resolution of every comparison, planned from the study's sizes ----------------------
    def resolution(self) -> list[str]:
        """The standard error each evaluation profile can reach on an accuracy gap, against the paper's
        relative gap at our accuracy level, and the images that a third of it would need."""
        a = self.cfg.analysis
        level, seeds = float(a.accuracy_level), len(self.seeds)
        gap = level * self.relative
        need = images_for_gap(level, self.relative, seeds, self.fraction)
        rows = []
        profiles = ["convergence", "convergence_last", "final", "guidance", "grpo"]
        for profile in [p for p in profiles if self.cfg.eval.get(p) is not None]:
            e = self.cfg.eval[profile]
            images = int(a.categories) * int(e.per_category) * int(e.samples_per_prompt)
            se = planned_gap_se(level, self.relative, images, seeds)
            rows.append([
                profile, str(images), f"{se:.4f}", f"{resolution(se, gap):.2f}",
                "yes"
                if resolution(se, gap) <= self.fraction + 1e-9
                else f"no (resolves {3 * se / level:.1%} relative)",
            ])  # fmt: skip
        world = int(self.cfg.data.max_objects)
        recorded = sorted({
            e.benchmark.get("max_count") for es in self.runs.convergence.values() for per in es for e in per
            if e and e.benchmark.get("max_count") is not None
        })  # fmt: skip
        asked = ", ".join(map(str, recorded)) if recorded else "not recorded in the saved runs"
        return [
            "## Resolution: how small a gap each comparison can tell",
            "",
            "The paper's reward-conditioning gain is GenEval 52 -> 57 "
            f"({self.relative:+.1%} relative); at our "
            f"accuracy level (~{level:.2f}) that is a gap of {gap:.4f}. With {seeds} training seed(s) a "
            f"comparison resolves it (SE ≤ {self.fraction:.2f} of it, so an effect that size stands 3 SE "
            "from "
            f"zero) with {need} images per model per seed (stats.images_for_gap: binomial, the two sides "
            "unpaired, an upper bound that pairing lowers). Planned SE of the seed-mean accuracy gap per "
            "evaluation profile:",
            "",
            *table(
                [
                    "profile",
                    "images per evaluation",
                    "planned SE of the gap",
                    "SE / paper's gap",
                    f"≤ {self.fraction:.2f}",
                ],
                rows,
            ),  # fmt: skip
            "Each section below also states the measured SE of its paired gaps and what may be concluded. "
            f"The world and the benchmark agree: the data shows at most {world} objects per image "
            f"(data.max_objects) and the benchmark's counting asks for 2 to max_count (conf/benchmark/"
            f"shapes.yaml; the study checks they are equal; recorded in the runs' results.json: {asked}), so "
            "no category asks for a scene the training data never showed.",
            "",
        ]

    # -- the frame: summary, differences from the papers, machine, commands, missing runs -------------
    def _setting(self) -> str:
        """The model and world this scale trains, as read from the configuration and the runs."""
        p = self.runs.parameters
        model = f"a {_count(p)}-parameter DiT" if p else "the study's DiT"
        return (
            f"{model} on {self.cfg.data.size} px synthetic shapes, {self.cfg.train.steps} training steps, "
            f"{len(self.rewards)} rewards ({', '.join(self.rewards)})"
        )

    def _guided(self) -> str:
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

    def differences(self, verdicts: dict[str, str]) -> list[str]:
        acc = {  # at the last evaluated step
            role: across_seeds([_accuracy(per_seed[-1]) for per_seed in self.runs.convergence[role]])
            for role in ROLES
        }
        aesthetic = (
            ""
            if "aesthetic" in self.rewards
            else "; the paper's 19x is on the aesthetic score, which is not measured here"
        )
        r = self.runs.rollouts
        rollouts = f", {r.total} rollouts per run" if r else ""
        rows = [
            [
                "convergence speed-up",
                PAPER["speedup"],
                verdicts.get("speedup", "n/a"),
                self._setting() + aesthetic,
            ],
            [
                "accuracy over the baseline",
                PAPER["geneval"],
                f"MIRO {acc['miro'].format()} vs baseline {acc['baseline'].format()} (last evaluated step); "
                + verdicts.get("geneval", "no paired gap"),
                "our benchmark is GenEval's six categories on the shapes grammar judged by a programmatic "
                "detector, not GenEval's object detector on natural images",
            ],
            [
                "best-of-N",
                PAPER["best_of"],
                verdicts.get("best_of", "n/a"),
                f"N up to {self.cfg.eval.final.get('best_of', 'n/a')}; measured on {', '.join(self.rewards)} "
                "instead of aesthetic and HPSv2",
            ],
            ["guidance", PAPER["guidance"], verdicts.get("guidance", "n/a"), self._guided()],
            [
                "chunk-level GRPO",
                PAPER["grpo"],
                verdicts.get("grpo", "n/a"),
                f"{self.cfg.grpo.iterations} iterations optimising {self.cfg.grpo.reward}{rollouts}, from "
                f"{self._setting()}; the paper reports one run per setting",
            ],
        ]
        return [
            "## Where we differ from the papers",
            "",
            *table(["claim", "papers", "here", "why they differ"], rows),
        ]

    def _make_report(self, scale: str, run: bool = False, seeds: bool = False) -> str:
        parts = ["make report", f"REPORT_SCALE={scale}"]
        if seeds:
            parts.append("REPORT_SEEDS=" + ",".join(map(str, self.seeds)))
        if run:
            parts.append("REPORT_RUN=1")
        return " ".join(parts)

    def other_scales(self) -> list[str]:
        """Whether the study's other sizes (a GPU's, the smoke test's) were run: a CPU report must not
        leave a reader guessing if a larger version exists."""
        lines = []
        for path in sorted((CONF_DIR / "report").glob("*.yaml")):
            if path.stem in (self.cfg.scale, "test"):
                continue
            runs = Path(compose_study_config(path.stem).runs_dir)
            made = runs.is_dir() and any(runs.iterdir())
            command = self._make_report(path.stem, run=True)
            lines.append(
                f"- `{path.stem}` scale (conf/report/{path.name}, `{command}`): "
                + (f"runs under `{runs}`" if made else f"not run (no saved runs under `{runs}`)")
            )
        return [*lines, ""] if lines else []

    def machine(self) -> list[str]:
        records = self.runs.records
        lines = ["## Machine and compute", "", *self.other_scales()]
        if not records:
            return [
                *lines,
                f"Not recorded: these runs were not made by `{self._make_report(self.cfg.scale, run=True)}`.",
                "",
            ]
        minutes: dict[str, dict[str, float]] = {}
        for r in records:
            by_study = minutes.setdefault(r.machine, {})
            by_study[r.study] = by_study.get(r.study, 0.0) + r.seconds
        rows = [
            [m, study, f"{seconds / 60:.1f}"]
            for m, studies in minutes.items()
            for study, seconds in studies.items()
        ]
        total, wall = sum(r.seconds for r in records), wall_seconds(records)
        jobs = int(self.cfg.get("jobs", 1))
        return [
            *lines,
            *table(["machine", "study", "minutes"], rows),
            f"Total: {total / 60:.1f} minutes of command time over {len(records)} steps ({jobs} command(s) "
            f"at a time, threads per command: {self.cfg.threads})"
            + (f"; {wall / 60:.1f} minutes of wall time while at least one ran." if wall is not None
               else "."),
            "",
            f"Precision {self.cfg.eval.precision} for the evaluations and the trainings' `precision: auto`: "
            "bf16 autocast on a CPU that computes bf16 natively (AMX or AVX512-BF16, the machine's kind in "
            "brackets above), fp32 on an AVX2-only CPU, where a training step of the demo model costs 2-3 "
            "times as much (bench/results/demo_avx2.md).",
            "",
        ]

    def commands(self, steps: Sequence[Step]) -> list[str]:
        seeds = ",".join(map(str, self.seeds))
        scale = self.cfg.scale
        run, alone = self._make_report(scale, run=True, seeds=True), self._make_report(scale, seeds=True)
        width = max(len(run), len(alone)) + 3
        return [
            "## How to reproduce",
            "",
            "```bash",
            f"{run:<{width}}# runs what is missing, then writes this file",
            f"{alone:<{width}}# the report alone, from the saved runs",
            "```",
            "",
            *(
                [f"In a fresh clone the saved runs are the committed `{self.cfg.archive}` (the files this "
                 "report read, packed by `make report ARGS=--pack`): `make report` unpacks it and writes "
                 "this file again from them.", ""]
                if self.cfg.get("archive") else []
            ),  # fmt: skip
            f"Training seeds: {seeds}. Evaluation seed: {self.cfg.eval.seed} (the same prompts and initial "
            f"noise for every model). Runs: `{self.layout.root}`. Every command, in order (the Makefile's "
            "stages; a command whose output exists is skipped):",
            "",
            "<details><summary>" + f"{len(steps)} commands" + "</summary>",
            "",
            "```bash",
            *(s.shell() for s in steps),
            "```",
            "",
            "</details>",
            "",
        ]

    def missing(self, steps: Sequence[Step]) -> list[str]:
        absent = [s for s in steps if s.study != "data" and not s.done()]
        if not absent:
            return ["## Missing runs", "", "None: every run of the study is present.", ""]
        return [
            "## Missing runs",
            "",
            f"{len(absent)} of {sum(s.study != 'data' for s in steps)} runs are missing; their cells read "
            f"n/a. `{self._make_report(self.cfg.scale, run=True)}` makes them:",
            "",
            *(f"- `{s.name}` (expects `{s.output}`)" for s in absent),
            "",
        ]

    def build(self, generated: str | None = None) -> tuple[str, dict[str, Figure]]:
        """The Markdown and its figures by file name; ``generated``: the time shown (default: now)."""
        steps = self.study.steps()
        first_run = replace(self.study, resume=False).steps()  # listed as a new user would run them
        sections = [self.convergence(), self.control(), self.best_of_n(), self.guidance(), self.grpo()]
        verdicts = {k: v for s in sections for k, v in s.verdicts.items()}
        present = sum(s.done() for s in steps if s.study != "data")
        when = generated or time.strftime("%Y-%m-%d %H:%M %Z")
        head = [
            f"# Evidence: what this implementation achieves ({self.cfg.scale} scale)",
            "",
            f"Generated {when} by `make report` from {present} saved runs under `{self.layout.root}`; seeds "
            f"{', '.join(map(str, self.seeds))}. Every cell is mean ± standard deviation over training "
            "seeds, with [min, max] where there is room; a single seed shows its value alone. Negative "
            "results are reported as measured.",
            "",
        ]
        runs = sum(s.study != "data" for s in steps)
        if present < runs:
            finished = [s for s, e in zip(self.seeds, self.runs.finals, strict=True) if e is not None]
            head += [
                f"**Incomplete**: {present} of {runs} runs are done (seeds with a final model: "
                f"{', '.join(map(str, finished)) or 'none'}); every table uses the seeds it has, and the "
                "runs still missing are listed at the end.",
                "",
            ]
        summary = (
            ["## Summary", "", *(f"- **{VERDICT_LABEL[k]}**: {v}" for k, v in verdicts.items()), ""]
            if verdicts
            else []
        )
        lines = [
            *head,
            *summary,
            *self.resolution(),
            *(line for s in sections for line in s.lines),
            *self.differences(verdicts),
            *self.machine(),
            *self.commands(first_run),
            *self.missing(steps),
        ]
        figures = {name: draw for s in sections for name, draw in s.plots.items()}
        return "\n".join(lines).rstrip() + "\n", figures


def write_results_report(study: Study, out: str | Path, generated: str | None = None) -> dict[str, Path]:
    """Write ``out`` (Markdown) and its PNG plots into ``<out without .md>/``, each file atomically.

    Returns the written paths by name ("markdown" and each plot's file name).
    """
    out = Path(out)
    plot_dir = out.with_suffix("")
    markdown, figures = Report(study, plot_dir.name).build(generated)
    paths: dict[str, Path] = {}
    if figures:
        plot_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in figures.items():
        write_bytes_atomic(plot_dir / name, plots.png(draw()))
        paths[name] = plot_dir / name
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, markdown.encode("utf-8"))
    paths["markdown"] = out
    return paths
