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
# The benchmark table of a results file written before judges were recorded (the shapes world's).
LEGACY_METRICS = [{"name": "accuracy", "description": "every fact of the prompt holds"},
                  {"name": "alignment", "description": "the mean fraction of the prompt's facts that hold"}]


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
        for metric in _metrics(res):
            if metric["name"] in pts[0]:
                m = metric["name"]
                label = f"{m} ({metric['description']})" if metric.get("description") else m
                ax.errorbar(x, [p[m] for p in pts], yerr=[2 * p[f"{m}_se"] for p in pts], marker="s",
                            capsize=3, linestyle="--", label=label)
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


def _metrics(res: EvalResults) -> list[dict[str, Any]]:
    """The judge's metrics, headline first (none for a benchmark judged by rewards alone)."""
    return list((getattr(res, "judge", None) or {}).get("metrics") or [])


def _describe_benchmark(res: EvalResults) -> str:
    info = dict((getattr(res, "judge", None) or {}).get("benchmark") or {})
    name = info.pop("name", "?")
    details = ", ".join(f"{k} {v}" for k, v in info.items())
    return f"{name} ({details})" if details else str(name)


def _header(res: EvalResults) -> list[str]:
    s, g = res.settings, res.sampling
    levels = ", ".join(f"{x:g}" for x in s["sweep_levels"])
    judged = ", ".join((getattr(res, "judge", None) or {}).get("required_rewards") or []) or "none"
    return [
        f"# MIRO evaluation: {res.model}", "",
        f"Benchmark: {_describe_benchmark(res)}, {s['samples_per_prompt']} images per prompt. "
        f"Sweeps: targets {levels}, on every benchmark image for the rewards its judge reads ({judged}) "
        f"and on the first {s['sweep_images']} for the other rewards. "
        f"Guidance {g.get('guidance', 'n/a')}, "
        f"{g.get('steps', 'n/a')} Euler steps, {g.get('precision', 'n/a')}"
        + (f" on {g['threads']} thread(s) of an {g['cpu_kind']} CPU" if "threads" in g else "")
        + (f" (threads=auto changed the count {len(g['thread_changes'])} time(s) with the machine's load)"
           if g.get("thread_changes") else "")
        + f", seed {s['seed']}. "
        f"{res.images_generated} images generated in {res.seconds:.0f} s.",
        "",
        "Errors are ± one standard error. Differences between targets are paired (the same prompts and "
        "initial noise at both targets).",
        "",
    ]


def _benchmark_table(res: EvalResults) -> list[str]:
    """One table, a column per condition: the judge's headline metric ± SE (its second in brackets)."""
    conditions = {label: {r["category"]: r for r in rows} for label, rows in res.benchmark.items() if rows}
    metrics = _metrics(res) or LEGACY_METRICS
    if not conditions:
        return []
    head, second = metrics[0], (metrics[1] if len(metrics) > 1 else None)
    categories = list(dict.fromkeys(c for rows in conditions.values() for c in rows))
    title = f"## Benchmark {head['name']}" + (f" ({head['description']})" if head.get("description") else "")
    lines = [title, "", "| category | n | " + " | ".join(conditions) + " |",
             "|---" * (len(conditions) + 2) + "|"]
    for category in categories:
        cells = []
        for rows in conditions.values():
            r = rows.get(category)
            cell = _fmt(r[head["name"]], r.get(f"{head['name']}_se")) if r else "n/a"
            if r and second and second["name"] in r:
                cell += f" ({r[second['name']]:.2f})"
            cells.append(cell)
        n = next(rows[category]["n"] for rows in conditions.values() if category in rows)
        lines.append(f"| {category} | {n} | " + " | ".join(cells) + " |")
    note = []
    if second:
        what = f", {second['description']}" if second.get("description") else ""
        note = [f"In brackets: {second['name']}{what}.", ""]
    return [*lines, "", *note]


def _rewards_by_category(res: EvalResults) -> list[str]:
    """Mean rewards per category at the headline condition (a benchmark with several categories)."""
    by_category = getattr(res, "rewards_by_category", None)
    if not by_category:
        return []
    label, table = next(iter(by_category.items()))
    if len(table) < 2:
        return []
    names = list(next(iter(table.values())))
    if not names:
        return []
    lines = [f"## Mean rewards per category ({label})", "",
             "| category | n | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for category, stats in table.items():
        n = max(int(stats[name]["n"]) for name in names)
        cells = [_fmt(stats[m]["mean"], stats[m]["se"]) for m in names]
        lines.append(f"| {category} | {n} | " + " | ".join(cells) + " |")
    return [*lines, ""]


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


def _judge_control(res: EvalResults, check: dict[str, Any]) -> list[str]:
    """For each reward the judge reads: its metrics at the top against the bottom of that reward's sweep."""
    lines: list[str] = []
    for reward, contrasts in res.contrasts.items():
        for metric in contrasts:
            a = check.get(f"{reward}_{metric}")
            if metric == "reward" or not a:
                continue
            beyond = "more" if a["significant"] else "NOT more"
            lines += [
                f"## {reward.capitalize()} control", "",
                f"Benchmark {metric} with the {reward} target at the top of the sweep: "
                f"{a['high_target']:.3f}; at the bottom: {a['low_target']:.3f}. Paired difference "
                f"{_fmt(a['difference'], a['se'])} over {a['n']} images (z = {a['z']:.1f}: {beyond} than "
                f"{check['z_threshold']:g} standard errors).",
                "",
            ]
    return lines


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
        *_header(res), *_benchmark_table(res), *_rewards_table(res), *_rewards_by_category(res),
        *_sweeps(res, check, plots), *_judge_control(res, check), *_best_of_n(res, plots),
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
