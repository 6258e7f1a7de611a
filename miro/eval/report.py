"""Write evaluation results as JSON, Markdown tables and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from miro.data.shards import write_bytes_atomic  # noqa: E402
from miro.eval.runner import EvalResults, control_check  # noqa: E402


def _fmt(mean: float, se: float | None = None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if se is None or math.isnan(se):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def plot_sweeps(res: EvalResults, path: Path) -> Path | None:
    if not res.sweeps:
        return None
    names = list(res.sweeps)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        pts = res.sweeps[name]
        x = [p["target"] for p in pts]
        ax.errorbar(x, [p["mean"] for p in pts], yerr=[2 * p["se"] for p in pts], marker="o", capsize=3)
        if name in res.data_range:
            lo, hi = res.data_range[name]
            ax.axhspan(lo, hi, color="0.9", zorder=0, label="training data range")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(name)
        ax.set_xlabel("requested target (0-10)")
        ax.set_ylabel("measured reward (mean ± 2 SE)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_best_of_n(res: EvalResults, path: Path) -> Path | None:
    if not res.best_of_n:
        return None
    rewards = list(next(iter(res.best_of_n.values())))
    fig, axes = plt.subplots(1, len(rewards), figsize=(3.6 * len(rewards), 3.2), squeeze=False)
    for ax, name in zip(axes[0], rewards, strict=True):
        for model, curves in res.best_of_n.items():
            curve = curves.get(name)
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, marker=".", label=model)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("N samples")
        ax.set_ylabel("best-of-N reward")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(res: EvalResults, check: dict[str, Any], plots: dict[str, str]) -> str:
    lines = [f"# MIRO evaluation: {res.model}", ""]
    s = res.settings
    lines += [
        f"Benchmark: {s['per_category']} prompts per category x {s['samples_per_prompt']} images; "
        f"sweeps: {s['sweep_images']} images per point; guidance {s['guidance'] or 'model default'}, "
        f"steps {s['steps'] or 'model default'}, seed {s['seed']}. Errors are ± one standard error.",
        "",
    ]
    for label, rows in res.benchmark.items():
        if not rows:
            continue
        lines += [f"## Benchmark accuracy, all reward targets {label}", "",
                  "| category | n | accuracy | mean alignment |", "|---|---|---|---|"]
        lines += [f"| {r['category']} | {r['n']} | {_fmt(r['accuracy'], r['accuracy_se'])} | {r['alignment']:.3f} |"
                  for r in rows]
        lines.append("")
    if res.rewards_at:
        names = list(next(iter(res.rewards_at.values())))
        lines += ["## Mean rewards on the benchmark images", "",
                  "| targets | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for label, stats in res.rewards_at.items():
            lines.append(f"| {label} | " + " | ".join(_fmt(stats[n]["mean"], stats[n]["se"]) for n in names) + " |")
        lines.append("")
    if res.sweeps:
        lines += ["## Reward control: measured reward against requested target", ""]
        if "sweeps" in plots:
            lines += [f"![reward control]({plots['sweeps']})", ""]
        for name, pts in res.sweeps.items():
            c = check.get(name, {})
            rng = res.data_range.get(name)
            lines.append(
                f"- **{name}**: " + ", ".join(f"{p['target']:g} → {_fmt(p['mean'], p['se'])}" for p in pts)
                + f"; rises with target: {'yes' if c.get('rises') else 'NO'}"
                + (f"; inside training-data range [{rng[0]:.3g}, {rng[1]:.3g}]: "
                   f"{'yes' if c.get('within_data_range') else 'NO'}" if rng else "")
            )
        lines.append("")
    if "alignment_accuracy" in check:
        a = check["alignment_accuracy"]
        lines += [
            "## Alignment control", "",
            f"Benchmark accuracy with the alignment target at 10: {a['high_target']:.3f}; at 0: {a['low_target']:.3f}; "
            f"difference {a['difference']:.3f} ± {a['se']:.3f} (z = {a['z']:.1f}; "
            f"{'more' if a['z'] > 2 else 'NOT more'} than two standard errors).", "",
        ]
    if res.best_of_n:
        lines += ["## Best-of-N", ""]
        if "best_of_n" in plots:
            lines += [f"![best of N]({plots['best_of_n']})", ""]
        for model, curves in res.best_of_n.items():
            for name, curve in curves.items():
                picks = {n: curve[n - 1] for n in (1, 4, 16, 32) if n <= len(curve)}
                lines.append(f"- {model}, {name}: " + ", ".join(f"N={n}: {v:.3f}" for n, v in picks.items()))
        lines.append("")
    return "\n".join(lines)


def write_report(res: EvalResults, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    if plot_sweeps(res, out / "reward_control.png"):
        plots["sweeps"] = "reward_control.png"
    if plot_best_of_n(res, out / "best_of_n.png"):
        plots["best_of_n"] = "best_of_n.png"
    check = control_check(res)
    write_bytes_atomic(out / "results.json", json.dumps({**res.to_dict(), "checks": check}, indent=2).encode())
    write_bytes_atomic(out / "report.md", markdown(res, check, plots).encode())
    return {"json": out / "results.json", "markdown": out / "report.md", **{k: out / v for k, v in plots.items()}}
