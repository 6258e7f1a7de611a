"""Before/after comparison of two evaluations: what fine-tuning did to every reward, not just its own.

GRPO (or any reward fine-tuning) is judged on the reward it optimised, but reward hacking shows in the
others: a sharper-looking score bought with noise, colours pushed past the data, broken layouts. The
table therefore lists the optimised rewards next to the ones that were not optimised, each with its
change and a z-score, plus the benchmark's headline metric per category (the first metric of its judge,
e.g. the shapes world's accuracy; none for a benchmark judged by rewards alone).

Both evaluations must use the same settings (prompts, seeds, images per prompt), so image i of one run
and image i of the other start from the same prompt and noise. When both results files hold the
per-image scores, changes are tested on these pairs (the standard error of the mean per-image change);
otherwise the z-score treats the runs as independent samples, which is conservative.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from miro.data.shards import write_json_and_markdown
from miro.eval.runner import TOP_CONDITION, paired_difference

# The benchmark (name and settings: the same prompts), the images per prompt and the seed (the same noise).
# Results written before benchmarks were named have per_category instead of benchmark.
SETTINGS_THAT_MUST_MATCH = ("benchmark", "per_category", "samples_per_prompt", "seed")


class CompareError(ValueError):
    """Two result files that cannot be compared; the message names the file and the field."""


def load_results(path: str | Path) -> dict[str, Any]:
    """A miro-eval results.json (or the directory holding it)."""
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
    if not file.is_file():
        raise CompareError(f"{file}: no such results file (miro-eval writes <out>/results.json)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CompareError(f"{file}: not valid JSON ({err})") from None
    for key in ("model", "settings", "benchmark", "rewards_at"):
        if key not in data:
            raise CompareError(f"{file}: missing field {key!r}; is this a miro-eval results.json?")
    data["_path"] = str(file)
    return data


def _change(
    before: dict[str, Any] | None, after: dict[str, Any] | None, mean: str, se: str
) -> dict[str, Any]:
    if not before or not after or before.get(mean) is None or after.get(mean) is None:
        return {"before": None, "after": None, "delta": None, "z": None}
    delta = after[mean] - before[mean]
    spread = math.hypot(before.get(se) or 0.0, after.get(se) or 0.0)
    z = delta / spread if spread > 0 else None
    return {
        "before": before[mean],
        "before_se": before.get(se),
        "after": after[mean],
        "after_se": after.get(se),
        "delta": delta,
        "z": z,
    }


def headline_metric(results: dict[str, Any]) -> tuple[str, str]:
    """The benchmark table's headline metric of a results file and its label: the judge's first metric
    (results written before judges were recorded: the shapes world's accuracy)."""
    metrics = (results.get("judge") or {}).get("metrics")
    if metrics:
        return metrics[0]["name"], metrics[0].get("description") or metrics[0]["name"]
    return "accuracy", "accuracy"


def compare(
    before: dict[str, Any],
    after: dict[str, Any],
    optimised: Sequence[str],
    condition: str | None = None,
) -> dict[str, Any]:
    """Per-reward and per-category changes from ``before`` to ``after`` at reward targets ``condition``
    (default: every target at the top, or the headline condition both evaluations share)."""
    if condition is None:
        shared = [c for c in before["rewards_at"] if c in after["rewards_at"]]
        condition = TOP_CONDITION if TOP_CONDITION in shared or not shared else shared[0]
    for key in SETTINGS_THAT_MUST_MATCH:
        if before["settings"].get(key) != after["settings"].get(key):
            raise CompareError(
                f"{after['_path']}: settings.{key} = {after['settings'].get(key)!r} differs from "
                f"{before['_path']} ({before['settings'].get(key)!r}); evaluate both with the same settings"
            )
    for data in (before, after):
        if condition not in data["rewards_at"]:
            known = ", ".join(data["rewards_at"]) or "none"
            raise CompareError(f"{data['_path']}: no results at {condition!r} (it has: {known})")
    rewards_b, rewards_a = before["rewards_at"][condition], after["rewards_at"][condition]
    names = list(dict.fromkeys([*optimised, *rewards_b, *rewards_a]))
    unknown = [n for n in optimised if n not in rewards_b or n not in rewards_a]
    if unknown:
        raise CompareError(f"optimised reward(s) {unknown} were not measured in both evaluations")
    pairs_b = before.get("per_image", {}).get(condition, {})
    pairs_a = after.get("per_image", {}).get(condition, {})
    rewards = {}
    for n in names:
        rewards[n] = {
            "optimised": n in optimised,
            **_change(rewards_b.get(n), rewards_a.get(n), "mean", "se"),
        }
        rewards[n]["paired"] = _paired(pairs_b.get(n), pairs_a.get(n), rewards[n])
    metric, label = headline_metric(after)
    bench_b = {r["category"]: r for r in before["benchmark"].get(condition, [])}
    bench_a = {r["category"]: r for r in after["benchmark"].get(condition, [])}
    benchmark = {
        c: _change(bench_b.get(c), bench_a.get(c), metric, f"{metric}_se")
        for c in dict.fromkeys([*bench_b, *bench_a])
    }
    judged_b = before.get("per_image_metrics", {}).get(condition, {}).get(metric)
    judged_a = after.get("per_image_metrics", {}).get(condition, {}).get(metric)
    if "overall" in benchmark:
        benchmark["overall"]["paired"] = _paired(judged_b, judged_a, benchmark["overall"])
    return {
        "before": before["model"],
        "after": after["model"],
        "condition": condition,
        "metric": metric,
        "metric_label": label,
        "rewards": rewards,
        "benchmark": benchmark,
    }


def _tensor(values: Sequence[float | None]) -> torch.Tensor:
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)


def _paired(
    before: Sequence[float | None] | None, after: Sequence[float | None] | None, change: dict[str, Any]
) -> bool:
    """Replace ``change``'s z by the paired one when both runs hold per-image scores of equal length."""
    if not before or not after or len(before) != len(after) or change["delta"] is None:
        return False
    stats = paired_difference(_tensor(after), _tensor(before))
    change["z"] = stats["z"] if math.isfinite(stats["z"]) else None
    change["delta_se"] = stats["se"]
    return True


def _cell(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if se is None else f"{value:.3f} ± {se:.3f}"


def _row(label: str, c: dict[str, Any], extra: str = "") -> str:
    z = "n/a" if c["z"] is None else f"{c['z']:+.1f}" + ("*" if c.get("paired") else "")
    delta = "n/a" if c["delta"] is None else f"{c['delta']:+.3f}"
    return (
        f"| {label}{extra} | {_cell(c['before'], c.get('before_se'))} | "
        f"{_cell(c['after'], c.get('after_se'))} | {delta} | {z} |"
    )


def comparison_markdown(result: dict[str, Any]) -> str:
    head = "| {} | before | after | change | z |\n|---|---|---|---|---|"
    lines = [
        f"# {result['after']} against {result['before']}",
        "",
        f"Reward targets: {result['condition']}. z = change / its standard error: paired over the images "
        "(the same prompt and noise in both runs) where marked *, otherwise from the two runs' standard "
        "errors as independent samples (conservative).",
        "",
        "## Rewards (optimised and not)",
        "",
        head.format("reward"),
    ]
    for name, c in sorted(result["rewards"].items(), key=lambda kv: not kv[1]["optimised"]):
        lines.append(_row(name, c, " (optimised)" if c["optimised"] else ""))
    if result["benchmark"]:
        metric, label = result.get("metric", "accuracy"), result.get("metric_label", "")
        lines += ["", f"## Benchmark {metric}" + (f" ({label})" if label and label != metric else ""), "",
                  head.format("category")]
        lines += [_row(cat, c) for cat, c in result["benchmark"].items()]
    return "\n".join(lines) + "\n"


def write_comparison(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    return write_json_and_markdown(out_dir, "comparison", result, comparison_markdown(result))
