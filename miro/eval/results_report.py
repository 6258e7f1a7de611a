"""The evidence report (docs/results.md): every study's saved results aggregated over training seeds.

Reads the ``results.json`` files the study's evaluations wrote (layout: :class:`miro.eval.study.Layout`),
shows each point as mean ± standard deviation over seeds with the range [min, max], draws the PNG
plots, and writes everything atomically. Runs that are missing are listed by name with the command
that makes them; their cells read "n/a". Verdicts (a speed-up, a single sample matching a best-of-N,
chunk-level against step-level GRPO) are computed from the numbers and may well be negative.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from miro.config import CONF_DIR, compose_config  # noqa: E402
from miro.data.shards import write_bytes_atomic  # noqa: E402
from miro.eval.aggregate import (  # noqa: E402
    Spread,
    Value,
    across_seeds,
    mean_curve,
    single_sample_matches,
    speedup,
    steps_to_reach,
    threshold_at,
)
from miro.eval.compare import CompareError, compare  # noqa: E402
from miro.eval.compare import load_results as load_eval_results  # noqa: E402
from miro.eval.study import ROLES, Step, Study, read_step_log  # noqa: E402

log = logging.getLogger(__name__)
OVERALL = "overall"
ROLE_LABEL = {"miro": "MIRO", "baseline": "baseline"}

# The papers' figures (MIRO: arXiv 2510.25897; Chunk-GRPO: arXiv 2510.21583), next
# to which the report puts ours.
PAPER = {
    "speedup": "up to 19x faster convergence (aesthetic score), 360M model, CC12M + LAION-Aesthetics",
    "geneval": "GenEval 52 -> 57 over the same model without reward conditioning",
    "best_of": "one sample beats the baseline's best-of-128 (aesthetic, HPSv2)",
    "guidance": "w = 7; negative branch: every reward at 0 (released pipeline: also an empty prompt)",
    "grpo": "HPSv3 on FLUX: base 13.804, step-level 15.080, chunk 15.236, chunk + weighted sampling 15.373",
}


VERDICT_LABEL = {
    "speedup": "Convergence speed-up",
    "control": "Control",
    "best_of": "Best-of-N",
    "guidance": "Guidance",
    "grpo": "GRPO",
}


def _rises(res: dict[str, Any], reward: str, contrast: dict[str, Any]) -> bool:
    """The evaluator's own verdict where results.json holds it (its z threshold; z = inf, stored as null,
    when every pair moved alike), else z > 2 from the stored contrast."""
    check = (res.get("checks") or {}).get(reward) or {}
    return bool(check["rises"]) if "rises" in check else (contrast.get("z") or 0) > 2


def load_results(path: Path) -> dict[str, Any] | None:
    """A study's results.json, or None when the run is missing or its file is unreadable (logged)."""
    if not path.is_file():
        return None
    try:
        return load_eval_results(path)
    except CompareError as err:
        log.warning("%s; treated as missing", err)
        return None


def first_condition(res: dict[str, Any] | None) -> str | None:
    """The evaluation's headline condition: all targets 10 for MIRO, "unconditional" for the baseline
    (the evaluator lists it first)."""
    if not res or not res.get("benchmark"):
        return None
    return next(iter(res["benchmark"]))


def accuracy(res: dict[str, Any] | None, category: str = OVERALL) -> float | None:
    cond = first_condition(res)
    if cond is None:
        return None
    row = next((r for r in res["benchmark"][cond] if r["category"] == category), None)
    return None if row is None else row["accuracy"]


def reward_mean(res: dict[str, Any] | None, reward: str) -> float | None:
    cond = first_condition(res)
    if cond is None:
        return None
    return (res.get("rewards_at", {}).get(cond, {}).get(reward) or {}).get("mean")


def categories(results: Sequence[dict[str, Any] | None]) -> list[str]:
    """The benchmark categories found in any of ``results`` (benchmark order), overall first."""
    seen: dict[str, None] = {OVERALL: None}
    for res in results:
        cond = first_condition(res)
        for row in res["benchmark"][cond] if cond else []:
            seen.setdefault(row["category"], None)
    return list(seen)


def _short(s: Spread, digits: int = 3) -> str:
    """mean ± std (without the range): for wide tables."""
    if s.n == 0:
        return "n/a"
    return f"{s.mean:.{digits}f}" if s.n == 1 else f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def _steps(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _share(fraction: float) -> str:
    """"all of" for 1, else a percentage: how much of the baseline's gain X stands for."""
    return "all of" if fraction == 1 else f"{fraction:.0%} of"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _band(ax: Any, x: Sequence[float], curves: Sequence[Sequence[float | None]], label: str) -> None:
    """Mean over seeds as a line, the seeds' range as a band."""
    spreads = [across_seeds([c[i] for c in curves]) for i in range(len(x))]
    ax.plot(x, [s.mean for s in spreads], marker="o", markersize=3, label=label)
    if len(curves) > 1:
        ax.fill_between(x, [s.lo for s in spreads], [s.hi for s in spreads], alpha=0.2)


# ---------------------------------------------------------------------------------------------------
@dataclass
class Section:
    """Markdown lines of one section, the figures it drew and its verdicts for the summary."""

    lines: list[str] = field(default_factory=list)
    plots: dict[str, Callable[[], plt.Figure]] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)


class Report:
    """Builds docs/results.md from a :class:`Study`'s saved runs (nothing is run here)."""

    def __init__(self, study: Study, plot_dir_name: str) -> None:
        self.study, self.cfg, self.layout = study, study.cfg, study.layout
        self.seeds = study.seeds
        self.plot_dir_name = plot_dir_name
        self.rewards = list(self.cfg.measured_rewards)

    def _plot_link(self, section: Section, name: str, draw: Callable[[], plt.Figure], alt: str) -> list[str]:
        section.plots[name] = draw
        return [f"![{alt}]({self.plot_dir_name}/{name})", ""]

    # -- 1. convergence -----------------------------------------------------------------------------
    def convergence(self) -> Section:
        sec = Section(["## 1. Convergence: MIRO against the unconditioned baseline", ""])
        steps = self.study.export_steps
        res = {
            role: [
                [load_results(self.layout.convergence_eval(s, role, n) / "results.json") for n in steps]
                for s in self.seeds
            ]
            for role in ROLES
        }
        found = [r for role in ROLES for per_seed in res[role] for r in per_seed if r]
        if not found:
            return Section(sec.lines + ["No convergence results yet (see Missing runs).", ""])
        cats = categories(found)
        metrics: dict[str, Callable[[dict[str, Any] | None], float | None]] = {
            f"accuracy {c}": (lambda r, c=c: accuracy(r, c)) for c in cats
        }
        metrics |= {name: (lambda r, n=name: reward_mean(r, n)) for name in self.rewards}
        curves = {
            role: {m: [[get(r) for r in per_seed] for per_seed in res[role]] for m, get in metrics.items()}
            for role in ROLES
        }
        sec.lines += [
            f"Both runs train {self.cfg.train.steps} steps on the same data with the same seeds; the "
            f"exports (EMA weights) at steps {', '.join(map(str, steps))} are evaluated on "
            f"{self.cfg.eval.convergence.per_category} benchmark prompts per category x "
            f"{self.cfg.eval.convergence.samples_per_prompt} images. MIRO is sampled with every reward "
            "target at 10; the baseline has no reward input. Cells: mean ± std over seeds.",
            "",
        ]
        overall = f"accuracy {OVERALL}"
        rows = []
        for i, n in enumerate(steps):
            rows.append(
                [
                    str(n),
                    *(_short(across_seeds([c[i] for c in curves[role][overall]])) for role in ROLES),
                    *(
                        _short(across_seeds([c[i] for c in curves[role][r]]))
                        for r in self.rewards
                        for role in ROLES
                    ),
                ]
            )
        header = [
            "step",
            "accuracy MIRO",
            "accuracy baseline",
            *(f"{r} {ROLE_LABEL[role]}" for r in self.rewards for role in ROLES),
        ]
        sec.lines += [
            "Benchmark accuracy (every fact holds) and mean offline rewards against training steps:",
            "",
            *_table(header, rows),
            *self._evaluation_noise(curves[ROLES[0]][overall], len(cats) - 1),
        ]
        sec.lines += self._plot_link(
            sec,
            "convergence_accuracy.png",
            lambda: self._curve_figure(steps, curves, [f"accuracy {c}" for c in cats]),
            "accuracy against steps",
        )
        sec.lines += self._plot_link(
            sec,
            "convergence_rewards.png",
            lambda: self._curve_figure(steps, curves, self.rewards),
            "rewards against steps",
        )
        sec.lines += self._speedups(steps, curves, [overall, *self.rewards], sec)
        last = len(steps) - 1
        rows = [
            [c, *(_short(across_seeds([cv[last] for cv in curves[role][f"accuracy {c}"]])) for role in ROLES)]
            for c in cats
        ]
        sec.lines += [
            f"Accuracy per category at step {steps[-1]}:",
            "",
            *_table(["category", "MIRO", "baseline"], rows),
        ]
        return sec

    def _evaluation_noise(self, miro_accuracy: Sequence[Sequence[Value]], n_categories: int) -> list[str]:
        """One evaluation's sampling error, so that a reader does not read a crossing of two curves
        closer than that as a result (the convergence evaluations are small to keep the study cheap)."""
        final = across_seeds([c[-1] for c in miro_accuracy])
        conv = self.cfg.eval.convergence
        images = conv.per_category * conv.samples_per_prompt * n_categories
        if final.n == 0 or images == 0:
            return []
        se = math.sqrt(final.mean * (1 - final.mean) / images)
        gap = se * math.sqrt(2 / final.n)  # MIRO's seed mean minus the baseline's, similar accuracies
        return [
            f"Sampling error: one evaluation scores {images} images, so an accuracy near "
            f"{final.mean:.2f} has a binomial standard error of about {se:.3f}, and the gap between the "
            f"two {final.n}-seed mean curves one of about {gap:.3f}; gaps under twice that, and the "
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
                rows.append(
                    [
                        metric,
                        f"{f:g}",
                        f"{x:.3f}",
                        _steps(b),
                        _steps(m),
                        _ratio(ratio)
                        if ratio is not None
                        else "n/a (" + ("MIRO" if m is None else "the baseline") + " never reaches X)",
                        ", ".join(_ratio(p) for p in per_seed),
                    ]
                )
                if metric == f"accuracy {OVERALL}" and f == fractions[-1]:
                    sec.verdicts["speedup"] = (
                        f"{_ratio(ratio)} on benchmark accuracy "
                        f"(X = {x:.3f}: {_share(f)} the baseline's gain)"
                        if ratio is not None
                        else f"n/a: {'MIRO' if m is None else 'the baseline'} never reaches X = {x:.3f} "
                        "on accuracy"
                    )
        return [
            "Speed-up = steps for the baseline to reach X / steps for MIRO to reach X, on the seed-mean "
            "curves (linear interpolation between evaluated steps; a curve already past X at its first point "
            "counts that step, an upper bound). X lies the given fraction of the way from the baseline's "
            "first to its final value (fraction 1: the baseline's final value). Per-seed ratios use the same "
            "X on each seed's own curves.",
            "",
            *_table(
                ["metric", "fraction", "X", "baseline steps", "MIRO steps", "speed-up", "per seed"], rows
            ),
        ]

    def _curve_figure(self, steps: Sequence[int], curves: dict, metrics: Sequence[str]) -> plt.Figure:
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            for role in ROLES:
                _band(ax, steps, curves[role][metric], ROLE_LABEL[role])
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("training step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    # -- 2 and 3. control and best-of-N -------------------------------------------------------------
    def final_results(self) -> list[dict[str, Any] | None]:
        return [load_results(self.layout.final_eval(s) / "results.json") for s in self.seeds]

    def control(self) -> Section:
        sec = Section(["## 2. Control: measured reward against requested target", ""])
        finals = [r for r in self.final_results() if r]
        if not finals:
            return Section(sec.lines + ["No final evaluations yet (see Missing runs).", ""])
        sweeps = [r.get("sweeps", {}) for r in finals]
        names = [n for n in self.rewards if any(n in s for s in sweeps)]
        targets = sorted({p["target"] for s in sweeps for pts in s.values() for p in pts})

        def at(s: dict, name: str, target: float, key: str = "mean") -> float | None:
            return next((p.get(key) for p in s.get(name, []) if p["target"] == target), None)

        rows = [
            [
                f"{t:g}",
                *(across_seeds([at(s, n, t) for s in sweeps]).format() for n in names),
                across_seeds([at(s, "alignment", t, "accuracy") for s in sweeps]).format(),
            ]
            for t in targets
        ]
        sec.lines += [
            "Each reward's target swept with the others at 10 (final model of every seed). Cells: mean ± std "
            "[min, max] over seeds of the per-seed mean.",
            "",
            *_table(["target", *names, "accuracy (alignment sweep)"], rows),
        ]
        rows = []
        for n in names:
            diffs = [(r.get("contrasts", {}).get(n, {}).get("reward") or {}) for r in finals]
            rises = sum(_rises(r, n, d) for r, d in zip(finals, diffs, strict=True))
            rng = finals[0].get("data_range", {}).get(n)
            rows.append(
                [
                    n,
                    across_seeds([d.get("difference") for d in diffs]).format(),
                    f"{rises}/{len(diffs)}",
                    "n/a" if not rng else f"[{rng[0]:.3g}, {rng[1]:.3g}]",
                ]
            )
        sec.lines += [
            "Top − bottom target (paired within each seed) and the seeds where it exceeds 2 standard errors:",
            "",
            *_table(["reward", "top − bottom", "seeds z > 2", "training data range"], rows),
        ]
        sec.verdicts["control"] = ", ".join(f"{r[0]} {r[2]}" for r in rows) + " seeds rise with the target"
        sec.lines += self._plot_link(
            sec, "control.png", lambda: self._control_figure(sweeps, names, finals), "reward control"
        )
        return sec

    def _control_figure(self, sweeps: list[dict], names: list[str], finals: list[dict]) -> plt.Figure:
        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.0), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            targets = sorted({p["target"] for s in sweeps for p in s.get(name, [])})
            per_seed = [
                [next((p["mean"] for p in s.get(name, []) if p["target"] == t), None) for t in targets]
                for s in sweeps
            ]
            _band(ax, targets, per_seed, "measured")
            rng = finals[0].get("data_range", {}).get(name)
            if rng:
                ax.axhspan(rng[0], rng[1], color="0.9", zorder=0, label="training data range")
            ax.set_title(name)
            ax.set_xlabel("requested target (0-10)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def best_of_n(self) -> Section:
        sec = Section(["## 3. Best-of-N: MIRO against the baseline", ""])
        finals = [r for r in self.final_results() if r and r.get("best_of_n")]
        if not finals:
            return Section(sec.lines + ["No best-of-N results yet (see Missing runs).", ""])

        def curves(res: dict[str, Any], role: str) -> dict[str, list[float]]:
            keys = [k for k in res["best_of_n"] if (k == "baseline") == (role == "baseline")]
            return res["best_of_n"][keys[0]] if keys else {}

        names = [n for n in self.rewards if any(n in curves(r, "miro") for r in finals)]
        longest = max((len(c) for r in finals for c in curves(r, "miro").values()), default=0)
        ns = [int(n) for n in self.cfg.analysis.best_of_ns if int(n) <= longest]
        rows = []
        for n in ns:
            cells = []
            for name in names:
                for role in ROLES:
                    values = [(curves(r, role).get(name) or [])[n - 1 : n] for r in finals]
                    cells.append(_short(across_seeds([v[0] if v else None for v in values])))
            rows.append([str(n), *cells])
        header = ["N", *(f"{name} {ROLE_LABEL[role]}" for name in names for role in ROLES)]
        sec.lines += [
            "Expected best reward among N samples per prompt "
            f"({self.cfg.eval.final.get('best_of_prompts', '')} "
            "prompts, MIRO at every target 10). Cells: mean ± std over seeds.",
            "",
            *_table(header, rows),
        ]
        matches = []
        for name in names:
            per_seed = []
            for r in finals:
                miro, base = curves(r, "miro").get(name), curves(r, "baseline").get(name)
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
            *_table(["reward", "single MIRO sample ≥ baseline best-of-N"], matches),
        ]
        sec.verdicts["best_of"] = "; ".join(f"{m[0]}: {m[1]}" for m in matches)
        sec.lines += self._plot_link(
            sec, "best_of_n.png", lambda: self._best_of_figure(finals, names, curves), "best of N"
        )
        return sec

    def _best_of_figure(self, finals: list[dict], names: list[str], curves: Callable) -> plt.Figure:
        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.0), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            for role in ROLES:
                per_seed = [curves(r, role).get(name) or [] for r in finals]
                length = min((len(c) for c in per_seed), default=0)
                if length:
                    _band(ax, list(range(1, length + 1)), [c[:length] for c in per_seed], ROLE_LABEL[role])
            ax.set_xscale("log", base=2)
            ax.set_title(name)
            ax.set_xlabel("N samples")
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    # -- 4. guidance --------------------------------------------------------------------------------
    def guidance(self) -> Section:
        sec = Section(["## 4. Guidance: scale and negative branch", ""])
        g = self.cfg.guidance
        scales = [float(w) for w in g.scales]
        by_scale = {
            w: [load_results(self.layout.guidance_eval(s, w) / "results.json") for s in self.seeds]
            for w in scales
        }
        by_negative = {
            v: [load_results(self.layout.negative_eval(s, v) / "results.json") for s in self.seeds]
            for v in g.negatives
        }
        if not any(r for rs in [*by_scale.values(), *by_negative.values()] for r in rs):
            return Section(sec.lines + ["No guidance results yet (see Missing runs).", ""])

        def row(label: str, results: list[dict[str, Any] | None]) -> list[str]:
            return [
                label,
                across_seeds([accuracy(r) for r in results]).format(),
                *(_short(across_seeds([reward_mean(r, n) for r in results])) for n in self.rewards),
            ]

        header = ["", "accuracy", *self.rewards]
        sec.lines += [
            "Final MIRO model, every target 10, with the model's own negative branch (the recipe's "
            "`sampling.guided_rewards`) at each guidance scale:",
            "",
            *_table(["scale", *header[1:]], [row(f"{w:g}", by_scale[w]) for w in scales]),
        ]
        default_w = next(
            (r["sampling"]["guidance"] for rs in by_negative.values() for r in rs if r and r.get("sampling")),
            None,
        )
        rows = []
        if default_w is not None and float(default_w) in by_scale:
            rows.append(row("the model's own", by_scale[float(default_w)]))
        for variant, flags in g.negatives.items():
            described = ", ".join(f"{k} {json.dumps(v)}" for k, v in flags.items())
            rows.append(row(f"{variant} ({described})", by_negative[variant]))
        scale_text = "n/a" if default_w is None else f"{float(default_w):g}"
        sec.lines += [
            f"Negative branches at the model's scale ({scale_text}); unnamed negative rewards are 0:",
            "",
            *_table(["negative branch", *header[1:]], rows),
        ]
        best = max(rows, key=lambda r: float(r[1].split()[0]) if r[1] != "n/a" else -math.inf)
        sec.verdicts["guidance"] = f"best accuracy with the negative branch '{best[0]}' ({best[1]})"
        sec.lines += self._plot_link(
            sec, "guidance.png", lambda: self._guidance_figure(scales, by_scale), "guidance scale"
        )
        return sec

    def _guidance_figure(self, scales: list[float], by_scale: dict) -> plt.Figure:
        metrics = [("accuracy", accuracy), *((n, lambda r, n=n: reward_mean(r, n)) for n in self.rewards)]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
        for ax, (name, get) in zip(axes[0], metrics, strict=True):
            per_seed = [[get(by_scale[w][i]) for w in scales] for i in range(len(self.seeds))]
            _band(ax, scales, per_seed, "MIRO")
            ax.set_title(name)
            ax.set_xlabel("guidance scale")
        fig.tight_layout()
        return fig

    # -- 5. GRPO ------------------------------------------------------------------------------------
    def grpo(self) -> Section:
        g = self.cfg.grpo
        sec = Section(["## 5. GRPO: chunk-level against step-level", ""])
        optimised = str(g.reward)
        before = [load_results(self.layout.grpo_eval(s, None) / "results.json") for s in self.seeds]
        changes: dict[str, list[dict[str, Any] | None]] = {}
        for variant in g.variants:
            changes[variant] = []
            for seed, b in zip(self.seeds, before, strict=True):
                a = load_results(self.layout.grpo_eval(seed, variant) / "results.json")
                try:
                    changes[variant].append(compare(b, a, [optimised]) if a and b else None)
                except CompareError as err:
                    log.warning("GRPO %s seed %d: %s", variant, seed, err)
                    changes[variant].append(None)
        if not any(c for cs in changes.values() for c in cs):
            return Section(sec.lines + ["No GRPO results yet (see Missing runs).", ""])
        names = [optimised, *(n for n in self.rewards if n != optimised)]
        sec.lines += [
            f"From each seed's final MIRO model, {g.iterations} GRPO iterations optimising `{optimised}`; "
            f"every variant makes the same rollouts ({self._rollouts()}). Evaluated on the benchmark's "
            "prompts, which GRPO's prompt pool excludes. Cells: after − before, mean ± std over seeds "
            "(before: "
            + ", ".join(f"{n} {_short(across_seeds([reward_mean(b, n) for b in before]))}" for n in names)
            + ").",
            "",
        ]
        rows = []
        for variant, cs in changes.items():
            cells = [
                _short(
                    across_seeds([c["rewards"][n]["delta"] if c and n in c["rewards"] else None for c in cs])
                )
                for n in names
            ]
            acc = _short(
                across_seeds([(c["benchmark"].get(OVERALL) or {}).get("delta") if c else None for c in cs])
            )
            rows.append([variant, self._chunks(variant), *cells, acc])
        header = ["variant", "chunks (seed 0)", f"{optimised} (optimised)", *names[1:], "accuracy"]
        sec.lines += _table(header, rows)
        sec.lines += self._chunk_vs_step(changes, optimised, sec)
        sec.lines += self._plot_link(
            sec, "grpo.png", lambda: self._grpo_figure(changes, names), "GRPO changes"
        )
        return sec

    def _rollouts(self) -> str:
        cfg_file = next(
            (
                self.layout.grpo_run(s, v) / "config.yaml"
                for s in self.seeds
                for v in self.cfg.grpo.variants
                if (self.layout.grpo_run(s, v) / "config.yaml").is_file()
            ),
            None,
        )
        if cfg_file is None:
            return "rollout counts not recorded yet"
        from omegaconf import OmegaConf

        c = OmegaConf.load(cfg_file)
        p, gsz = int(c.data.prompts_per_iteration), int(c.module.group_size)
        n = int(c.iterations)
        return f"{n} iterations x {p} prompts x {gsz} samples = {n * p * gsz} rollouts"

    def _chunks(self, variant: str) -> str:
        path = self.layout.grpo_run(self.seeds[0], variant) / "export" / "config.json"
        if not path.is_file():
            return "n/a"
        grpo = json.loads(path.read_text(encoding="utf-8")).get("grpo", {})
        return str(grpo.get("chunk_sizes", "n/a"))

    def _chunk_vs_step(self, changes: dict, optimised: str, sec: Section) -> list[str]:
        if "step" not in changes:
            return []
        lines = []
        for variant in [v for v in changes if v != "step"]:
            diffs = [
                c["rewards"][optimised]["after"] - s["rewards"][optimised]["after"] if c and s else None
                for c, s in zip(changes[variant], changes["step"], strict=True)
            ]
            d = across_seeds(diffs)
            if d.n >= 2 and d.std > 0:
                se = d.std / math.sqrt(d.n)
                verdict = (
                    "distinguishable" if abs(d.mean) > 2 * se else "NOT distinguishable"
                ) + f" from step-level with {d.n} seeds (|mean| vs 2 SE = {2 * se:.3f})"
            else:
                verdict = f"too few seeds ({d.n}) to judge"
            lines.append(
                f"- {variant} − step, `{optimised}` after GRPO (paired by seed): {d.format()}: {verdict}."
            )
            sec.verdicts.setdefault("grpo", f"{variant} − step: {_short(d)}, {verdict}")
        return [*lines, ""]

    def _grpo_figure(self, changes: dict, names: list[str]) -> plt.Figure:
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            spreads = [
                across_seeds(
                    [c["rewards"][name]["delta"] if c and name in c["rewards"] else None for c in cs]
                )
                for cs in changes.values()
            ]
            ax.bar(
                range(len(spreads)),
                [s.mean for s in spreads],
                yerr=[0 if math.isnan(s.std) else s.std for s in spreads],
                capsize=3,
            )
            ax.set_xticks(range(len(spreads)), list(changes), rotation=30, fontsize=7)
            ax.axhline(0, color="0.5", linewidth=0.8)
            ax.set_title(f"{name}: after − before", fontsize=9)
        fig.tight_layout()
        return fig

    # -- the frame: summary, differences from the papers, machine, commands, missing runs -------------
    def differences(self, verdicts: dict[str, str]) -> list[str]:
        acc = {
            role: across_seeds([accuracy(self._last_convergence(s, role)) for s in self.seeds])
            for role in ROLES
        }
        rows = [
            [
                "convergence speed-up",
                PAPER["speedup"],
                verdicts.get("speedup", "n/a"),
                "a 2.6M-parameter DiT on 24 px synthetic shapes with four offline rewards, minutes of CPU "
                "training; the paper's 19x is on the aesthetic score, which has no counterpart here",
            ],
            [
                "accuracy over the baseline",
                PAPER["geneval"],
                f"MIRO {acc['miro'].format()} vs baseline {acc['baseline'].format()} (last evaluated step)",
                "our benchmark is GenEval's six categories on the shapes grammar judged by a programmatic "
                "detector, not GenEval's object detector on natural images",
            ],
            [
                "best-of-N",
                PAPER["best_of"],
                verdicts.get("best_of", "n/a"),
                "N only up to the study's largest best-of; offline rewards instead of aesthetic and HPSv2",
            ],
            [
                "guidance",
                PAPER["guidance"],
                verdicts.get("guidance", "n/a"),
                "the demo recipe guides alignment only at w = 2, chosen because the all-low negative pushed "
                "colourfulness beyond the training data (docs/demo.md); the shapes model never saw empty "
                "text",
            ],
            [
                "chunk-level GRPO",
                PAPER["grpo"],
                verdicts.get("grpo", "n/a"),
                "a tiny model, few iterations and the alignment reward; the paper reports one run per "
                "setting",
            ],
        ]
        return [
            "## Where we differ from the papers",
            "",
            *_table(["claim", "papers", "here", "why they differ"], rows),
        ]

    def _last_convergence(self, seed: int, role: str) -> dict[str, Any] | None:
        return load_results(
            self.layout.convergence_eval(seed, role, self.study.export_steps[-1]) / "results.json"
        )

    def other_scales(self) -> list[str]:
        """Whether the study's other sizes (a GPU's, the smoke test's) were run: a CPU report must not
        leave a reader guessing if a larger version exists."""
        lines = []
        for path in sorted((CONF_DIR / "report").glob("*.yaml")):
            if path.stem in (self.cfg.scale, "test"):
                continue
            runs = Path(compose_config("report", [f"report={path.stem}"]).runs_dir)
            made = runs.is_dir() and any(runs.iterdir())
            lines.append(
                f"- `{path.stem}` scale (conf/report/{path.name}, "
                f"`miro-eval report --run --scale {path.stem}`): "
                + (f"runs under `{runs}`" if made else f"not run (no saved runs under `{runs}`)")
            )
        return [*lines, ""] if lines else []

    def machine(self) -> list[str]:
        records = [r for r in read_step_log(self.layout) if r.get("returncode") == 0]
        lines = ["## Machine and compute", "", *self.other_scales()]
        if not records:
            return [*lines, "Not recorded: these runs were not made by `miro-eval report --run`.", ""]
        by_machine: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for r in records:
            m = r.get("machine", {})
            name = (
                f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores"
                + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
                + f", torch {m.get('torch', '?')}"
            )
            by_machine[name][r.get("study", "?")] += float(r.get("seconds", 0.0))
        rows = [
            [name, study, f"{seconds / 60:.1f}"]
            for name, studies in by_machine.items()
            for study, seconds in studies.items()
        ]
        total = sum(float(r.get("seconds", 0.0)) for r in records)
        return [
            *lines,
            *_table(["machine", "study", "minutes"], rows),
            f"Total: {total / 60:.1f} minutes over {len(records)} steps (threads per command: "
            f"{self.cfg.threads}).",
            "",
        ]

    def commands(self, steps: Sequence[Step]) -> list[str]:
        seeds = ",".join(map(str, self.seeds))
        lines = [
            "## How to reproduce",
            "",
            "```bash",
            f"miro-eval report --run --scale {self.cfg.scale} --seeds {seeds}   # runs what is missing, then "
            "writes this file",
            f"miro-eval report --scale {self.cfg.scale} --seeds {seeds}         # the report alone, from the "
            "saved runs",
            "```",
            "",
            f"Training seeds: {seeds}. Evaluation seed: {self.cfg.eval.seed} (the same prompts and initial "
            f"noise for every model). Runs: `{self.layout.root}`. Every command, in order (a command whose "
            "output exists is skipped):",
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
        return lines

    def missing(self, steps: Sequence[Step]) -> list[str]:
        absent = [s for s in steps if s.study != "data" and not s.done()]
        if not absent:
            return ["## Missing runs", "", "None: every run of the study is present.", ""]
        return [
            "## Missing runs",
            "",
            f"{len(absent)} of {sum(s.study != 'data' for s in steps)} runs are missing; their cells read "
            "n/a. `miro-eval report --run` makes them:",
            "",
            *(f"- `{s.name}` (expects `{s.output}`)" for s in absent),
            "",
        ]

    def build(self) -> tuple[str, dict[str, Callable[[], plt.Figure]]]:
        steps = self.study.steps()
        sections = [self.convergence(), self.control(), self.best_of_n(), self.guidance(), self.grpo()]
        verdicts = {k: v for s in sections for k, v in s.verdicts.items()}
        present = sum(s.done() for s in steps if s.study != "data")
        head = [
            f"# Evidence: what this implementation achieves ({self.cfg.scale} scale)",
            "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `miro-eval report` from {present} saved runs "
            f"under `{self.layout.root}`; seeds {', '.join(map(str, self.seeds))}. Every cell is mean ± "
            "standard deviation over training seeds, with [min, max] where there is room; a single seed "
            "shows its value alone. Negative results are reported as measured.",
            "",
        ]
        runs = sum(s.study != "data" for s in steps)
        if present < runs:
            finished = [s for s in self.seeds if (self.layout.final_eval(s) / "results.json").is_file()]
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
            *(line for s in sections for line in s.lines),
            *self.differences(verdicts),
            *self.machine(),
            *self.commands(steps),
            *self.missing(steps),
        ]
        plots = {name: draw for s in sections for name, draw in s.plots.items()}
        return "\n".join(lines).rstrip() + "\n", plots


def write_results_report(study: Study, out: str | Path) -> dict[str, Path]:
    """Write ``out`` (Markdown) and its PNG plots into ``<out without .md>/``, each file atomically.

    Returns the written paths by name ("markdown" and each plot's file name).
    """
    out = Path(out)
    plot_dir = out.with_suffix("")
    markdown, plots = Report(study, plot_dir.name).build()
    paths: dict[str, Path] = {}
    if plots:
        plot_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in plots.items():
        fig = draw()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        write_bytes_atomic(plot_dir / name, buffer.getvalue())
        paths[name] = plot_dir / name
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, markdown.encode("utf-8"))
    paths["markdown"] = out
    return paths
