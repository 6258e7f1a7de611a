"""Claims 2 and 3: each reward follows its requested target; one MIRO sample against the baseline's
best-of-N."""

from __future__ import annotations

import math

from miro.shapes.study import plots
from miro.shapes.study.cells import (
    PAPER,
    ROLE_LABEL,
    Gap,
    ReportBase,
    Section,
    conclude,
    gap_table,
    short,
    table,
)
from miro.shapes.study.plan import ROLES
from miro.shapes.study.results import Evaluation
from miro.shapes.study.stats import (
    across_seeds,
    paired_differences,
    single_sample_matches,
)


class ControlClaims(ReportBase):
    """The control section (sweeps of each target) and the best-of-N section."""

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
