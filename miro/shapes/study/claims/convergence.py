"""Claim 1: MIRO converges faster than the unconditioned baseline and ends above it (accuracy, rewards)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from miro.shapes.study import plots
from miro.shapes.study.cells import (
    PAPER,
    ROLE_LABEL,
    ReportBase,
    Section,
    accuracy_of,
    categories,
    conclude,
    gap_of,
    gap_table,
    ratio_cell,
    reward_of,
    share_words,
    short,
    steps_cell,
    table,
)
from miro.shapes.study.plan import ROLES
from miro.shapes.study.results import OVERALL, Evaluation
from miro.shapes.study.stats import (
    Spread,
    across_seeds,
    binomial_se,
    gap_se,
    mean_curve,
    speedup,
    steps_to_reach,
    threshold_at,
)


class ConvergenceClaim(ReportBase):
    """The convergence section: curves, paired gaps at every step, speed-ups and the per-category table."""

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
            f"accuracy {c}": (lambda e, c=c: accuracy_of(e, c)) for c in cats
        }
        metrics |= {name: (lambda e, n=name: reward_of(e, n)) for name in self.rewards}
        curves = {
            role: {m: [[get(e) for e in per_seed] for per_seed in res[role]] for m, get in metrics.items()}
            for role in ROLES
        }
        conv, last = self.cfg.eval.convergence, self.last_profile()
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
                   "accuracy", accuracy_of, self.relative)
            for i, n in enumerate(steps)
        ]  # fmt: skip
        final = [
            gap_of(f"{r} at step {steps[-1]}", [c[-1] for c in res["miro"]], [c[-1] for c in res["baseline"]],
                   r, lambda e, r=r: reward_of(e, r), self.relative)
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
        last = self.last_profile()
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
                        steps_cell(b),
                        steps_cell(m),
                        ratio_cell(ratio) if ratio is not None else f"n/a ({never} never reaches X)",
                        ", ".join(ratio_cell(p) for p in per_seed),
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
                    sec.lines_after.append(f"- {metric} (X = {share_words(f)} the baseline's gain): {said}.")
                if metric == f"accuracy {OVERALL}" and f == fractions[-1]:
                    sec.verdicts["speedup"] = (
                        f"{ratio_cell(ratio)} on benchmark accuracy "
                        f"(X = {x:.3f}: {share_words(f)} the baseline's gain; per seed "
                        f"{', '.join(ratio_cell(p) for p in per_seed)}): {said}"
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
