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

NAN = float("nan")


def _fmt(mean: float | None, se: float | None = None, digits: int = 3) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if se is None or math.isnan(se):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def plot_sweeps(res: EvalResults, path: Path) -> Path | None:
    if not res.sweeps:
        return None
    names = list(res.sweeps)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        pts = res.sweeps[name]
        x = [p["target"] for p in pts]
        ax.errorbar(x, [p["mean"] for p in pts], yerr=[2 * p["se"] for p in pts], marker="o", capsize=3,
                    label="mean")
        if "accuracy" in pts[0]:
            ax.errorbar(x, [p["accuracy"] for p in pts], yerr=[2 * p["accuracy_se"] for p in pts], marker="s",
                        capsize=3, linestyle="--", label="accuracy (all facts)")
        if name in res.data_range:
            lo, hi = res.data_range[name]
            ax.axhspan(lo, hi, color="0.9", zorder=0, label="training data range")
        ax.legend(fontsize=7, loc="best")
        ax.set_title(name)
        ax.set_xlabel("requested target (0-10)")
        ax.set_ylabel("measured reward (± 2 SE)")
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
        ax.set_ylabel("expected best-of-N reward")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _header(res: EvalResults) -> list[str]:
    s, g = res.settings, res.sampling
    levels = ", ".join(f"{x:g}" for x in s["sweep_levels"])
    return [
        f"# MIRO evaluation: {res.model}", "",
        f"Benchmark: {s['per_category']} prompts per category x {s['samples_per_prompt']} images. "
        f"Sweeps: targets {levels}, on the benchmark images for alignment and on the first "
        f"{s['sweep_images']} of them for the other rewards. Guidance {g.get('guidance', 'n/a')}, "
        f"{g.get('steps', 'n/a')} Euler steps, {g.get('precision', 'n/a')}"
        + (f" on {g['threads']} thread(s) of an {g['cpu_kind']} CPU" if "threads" in g else "")
        + f", seed {s['seed']}. "
        f"{res.images_generated} images generated in {res.seconds:.0f} s.",
        "",
        "Errors are ± one standard error. Differences between targets are paired (the same prompts and "
        "initial noise at both targets).",
        "",
    ]


def _benchmark_table(res: EvalResults) -> list[str]:
    """One table, a column per condition: accuracy ± SE (mean alignment in brackets)."""
    conditions = {label: {r["category"]: r for r in rows} for label, rows in res.benchmark.items() if rows}
    if not conditions:
        return []
    categories = list(dict.fromkeys(c for rows in conditions.values() for c in rows))
    lines = ["## Benchmark accuracy (every fact of the prompt holds)", "",
             "| category | n | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 2) + "|"]
    for category in categories:
        cells = []
        for rows in conditions.values():
            r = rows.get(category)
            cells.append(f"{_fmt(r['accuracy'], r['accuracy_se'])} ({r['alignment']:.2f})" if r else "n/a")
        n = next(rows[category]["n"] for rows in conditions.values() if category in rows)
        lines.append(f"| {category} | {n} | " + " | ".join(cells) + " |")
    return [*lines, "", "In brackets: the mean fraction of the prompt's facts that hold.", ""]


def _rewards_table(res: EvalResults) -> list[str]:
    if not res.rewards_at:
        return []
    names = list(next(iter(res.rewards_at.values())))
    lines = ["## Mean rewards on the benchmark images", "",
             "| targets | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, stats in res.rewards_at.items():
        cells = [_fmt(stats[n]["mean"], stats[n]["se"]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _sweeps(res: EvalResults, check: dict[str, Any], plots: dict[str, str]) -> list[str]:
    if not res.sweeps:
        return []
    lines = ["## Reward control: measured reward against requested target", ""]
    if "sweeps" in plots:
        lines += [f"![reward control]({plots['sweeps']})", ""]
    z_min = check["z_threshold"]
    for name, pts in res.sweeps.items():
        c = check.get(name, {})
        d = c.get("top_minus_bottom", {})
        z = d.get("z")
        line = (
            f"- **{name}**: " + ", ".join(f"{p['target']:g} → {_fmt(p['mean'], p['se'])}" for p in pts)
            + f". Top − bottom: {_fmt(d.get('difference'), d.get('se'))} "
            f"(z = {NAN if z is None else z:.1f}); rises with its target (z > {z_min:g}): "
            f"{_verdict(c.get('rises', False))}"
        )
        rng = res.data_range.get(name)
        if rng:
            line += (f"; inside the training data's range [{rng[0]:.3g}, {rng[1]:.3g}]: "
                     f"{_verdict(c.get('within_data_range', False))}")
        lines.append(line + ".")
    return [*lines, ""]


def _alignment(check: dict[str, Any]) -> list[str]:
    a = check.get("alignment_accuracy")
    if not a:
        return []
    beyond = "more" if a["significant"] else "NOT more"
    return [
        "## Alignment control", "",
        f"Benchmark accuracy with the alignment target at the top of the sweep: {a['high_target']:.3f}; "
        f"at the bottom: {a['low_target']:.3f}. Paired difference {_fmt(a['difference'], a['se'])} over "
        f"{a['n']} images (z = {a['z']:.1f}: {beyond} than {check['z_threshold']:g} standard errors).",
        "",
    ]


def _best_of_n(res: EvalResults, plots: dict[str, str]) -> list[str]:
    if not res.best_of_n:
        return []
    lines = ["## Best-of-N (expected best of N samples per prompt)", ""]
    if "best_of_n" in plots:
        lines += [f"![best of N]({plots['best_of_n']})", ""]
    for model, curves in res.best_of_n.items():
        for name, curve in curves.items():
            picks = {n: curve[n - 1] for n in (1, 4, 16, 32) if n <= len(curve)}
            lines.append(f"- {model}, {name}: " + ", ".join(f"N={n}: {v:.3f}" for n, v in picks.items()))
    return [*lines, ""]


def markdown(res: EvalResults, check: dict[str, Any], plots: dict[str, str]) -> str:
    return "\n".join([
        *_header(res), *_benchmark_table(res), *_rewards_table(res), *_sweeps(res, check, plots),
        *_alignment(check), *_best_of_n(res, plots),
    ])


def _json_safe(value: Any) -> Any:
    """NaN and infinities -> null, so results.json is strict JSON that any reader accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_report(res: EvalResults, out_dir: str | Path) -> dict[str, Path]:
    """results.json, report.md and the PNG plots into ``out_dir``; returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    if plot_sweeps(res, out / "reward_control.png"):
        plots["sweeps"] = "reward_control.png"
    if plot_best_of_n(res, out / "best_of_n.png"):
        plots["best_of_n"] = "best_of_n.png"
    check = control_check(res)
    payload = _json_safe({**res.to_dict(), "checks": check})
    write_bytes_atomic(out / "results.json", json.dumps(payload, indent=2, allow_nan=False).encode())
    write_bytes_atomic(out / "report.md", markdown(res, check, plots).encode())
    paths = {"json": out / "results.json", "markdown": out / "report.md"}
    return paths | {kind: out / name for kind, name in plots.items()}
