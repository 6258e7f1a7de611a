"""Claim 4: guidance scale and negative branch (MIRO's all-low default, empty text, push one reward)."""

from __future__ import annotations

import json
import math

from miro.shapes.study import plots
from miro.shapes.study.cells import (
    PAPER,
    ReportBase,
    Section,
    accuracy_of,
    conclude,
    gap_of,
    gap_table,
    reward_of,
    short,
    table,
)
from miro.shapes.study.results import Evaluation
from miro.shapes.study.stats import (
    across_seeds,
)


class GuidanceClaim(ReportBase):
    """The guidance section: accuracy and rewards per scale and per negative branch, paired."""

    # -- 4. guidance --------------------------------------------------------------------------------
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
                across_seeds([accuracy_of(e) for e in evaluations]).format(),
                *(short(across_seeds([reward_of(e, n) for e in evaluations])) for n in self.rewards),
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
            f"The model's own: {self.guided_settings()}." + own_is,
            "",
            *table(["negative branch", *header], rows),
        ]
        if default_w is not None and float(default_w) in by_scale:
            own = by_scale[float(default_w)]
            gaps = [
                gap_of(f"{variant} − the model's own, {metric}", by_negative[variant], own, metric,
                       accuracy_of if metric == "accuracy" else (lambda e, m=metric: reward_of(e, m)),
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
        panels = {"accuracy": [[accuracy_of(by_scale[w][i]) for w in scales] for i in range(n_seeds)]}
        panels |= {
            n: [[reward_of(by_scale[w][i], n) for w in scales] for i in range(n_seeds)] for n in self.rewards
        }
        sec.figure(
            self.plot_dir, "guidance.png", lambda: plots.guidance_figure(scales, panels), "guidance scale"
        )
        return sec
