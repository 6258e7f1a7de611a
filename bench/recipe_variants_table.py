"""The table of bench/recipe_variants.sh: per variant, mean ± standard deviation over training seeds.

    python bench/recipe_variants_table.py runs/recipe [--out runs/recipe/table.md]

Per run (``OUT/<variant>-seed<seed>``): the shape probe (named shape right, shape and colour right), the
alignment benchmark's all-facts accuracy at alignment target 10 and 0 (others 10) with its paired
control z, over every evaluation of the run (``eval``, ``eval-seedN``: more prompts and noise), the
mean alignment reward at target 10, the training step time (median of the logged ``train/img_s``,
batch 32; the sample grids every 500 steps are not in it) with the run's wall time, and the
evaluation's seconds per generated image (self-conditioning also runs at sampling). Evaluations of the
same seed use the same prompts and noise, so each variant is also compared with variant ``a`` of the
same training seed image by image (paired difference of the all-facts accuracy at target 10, its z).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import torch

from miro.eval.runner import TOP_CONDITION, paired_difference
from miro.shapes.benchmark import all_facts_hold

VARIANTS = {
    "a": "demo as it is",
    "b": "self-conditioning (rate 0.9)",
    "c": "captions 50/50 original/synthetic",
}
BATCH = 32
LOW_CONDITION = "alignment 0, others 10"


def _split(values: list[float], parts: int) -> list[list[float]]:
    size = len(values) // parts
    return [values[i * size : (i + 1) * size] for i in range(parts)]


def _step_seconds(run: Path) -> float | None:
    """Median seconds per optimiser step from the TensorBoard ``train/img_s`` scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted((run / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/img_s" in acc.Tags().get("scalars", []):
            values += [e.value for e in acc.Scalars("train/img_s")]
    return BATCH / statistics.median(values) if values else None


def run_numbers(run: Path) -> dict[str, Any]:
    """What one run measured (keys missing where its step has not finished)."""
    out: dict[str, Any] = {"run": run.name}
    probe = run / "probe.json"
    if probe.is_file():
        acc = json.loads(probe.read_text())["accuracy"]
        out["probe_shape"], out["probe_shape_colour"] = acc["shape_correct"], acc["shape_and_colour"]
    evals = sorted(p.parent.name for p in run.glob("eval*/results.json"))
    if evals:
        top, low, seconds, images = [], [], 0.0, 0
        for name in evals:
            res = json.loads((run / name / "results.json").read_text())
            top += res["per_image"][TOP_CONDITION]["alignment"]
            low += res["per_image"][LOW_CONDITION]["alignment"]
            seconds, images = seconds + res["seconds"], images + res["images_generated"]
        hit_top, hit_low = all_facts_hold(torch.tensor(top)), all_facts_hold(torch.tensor(low))
        out["evals"], out["eval_images"] = evals, len(top)
        out["acc_top"], out["acc_low"] = float(hit_top.mean()), float(hit_low.mean())
        out["alignment_top"] = float(torch.tensor(top).nanmean())
        control = paired_difference(hit_top, hit_low)
        out["control_diff"], out["control_z"] = control["difference"], control["z"]
        out["_per_image_top"] = {name: n for name, n in zip(evals, _split(top, len(evals)), strict=True)}
        out["eval_s_per_image"] = seconds / images
    seconds = run / "train_seconds"
    if seconds.is_file():
        out["train_minutes"] = int(seconds.read_text()) / 60
    if (run / "tensorboard").is_dir():
        out["step_s"] = _step_seconds(run)
    compute = run / "compute.json"
    if compute.is_file():
        c = json.loads(compute.read_text())
        threads = c["threads"]["threads"]
        out["machine"] = f"{c['cpu']} ({c['cpu_kind']}), {c['precision']['name']}, {threads} thread(s)"
    return out


def _fmt(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{mean:.{digits}f}{spread} ({each})" if len(values) > 1 else f"{mean:.{digits}f}"


def table(out_dir: Path) -> tuple[str, dict[str, Any]]:
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for run in sorted(out_dir.iterdir()):
        m = re.fullmatch(r"([a-z])-seed(\d+)", run.name)
        if m and run.is_dir():
            runs.setdefault(m.group(1), {})[int(m.group(2))] = run_numbers(run)
    columns = [
        ("probe_shape", "probe: shape right", 3),
        ("probe_shape_colour", "probe: shape and colour", 3),
        ("acc_top", "accuracy, alignment 10", 3),
        ("acc_low", "accuracy, alignment 0", 3),
        ("control_z", "control z", 1),
        ("alignment_top", "alignment reward at 10", 3),
        ("vs_a", "accuracy at 10 minus a's, same seed (paired z)", 3),
        ("step_s", "s / step (median)", 3),
        ("train_minutes", "run, min (wall)", 1),
        ("eval_s_per_image", "evaluation s / image", 3),
    ]
    for variant, seeds in runs.items():  # paired against the same seed's baseline, image by image
        for seed, numbers in seeds.items():
            base = runs.get("a", {}).get(seed, {})
            if variant != "a" and "_per_image_top" in numbers and "_per_image_top" in base:
                shared = sorted(set(numbers["_per_image_top"]) & set(base["_per_image_top"]))
                d = paired_difference(
                    all_facts_hold(torch.tensor([v for e in shared for v in numbers["_per_image_top"][e]])),
                    all_facts_hold(torch.tensor([v for e in shared for v in base["_per_image_top"][e]])),
                )
                numbers["vs_a"], numbers["vs_a_z"] = d["difference"], d["z"]
    lines = [
        "| variant | seeds | " + " | ".join(title for _, title, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for variant in sorted(runs):
        seeds = runs[variant]
        cells = []
        for key, _, digits in columns:
            values = [n[key] for n in seeds.values() if n.get(key) is not None and math.isfinite(n[key])]
            cell = _fmt(values, digits)
            if key == "vs_a" and values:
                zs = [f"{n['vs_a_z']:+.1f}" for n in seeds.values() if "vs_a_z" in n]
                cell += " (z " + ", ".join(zs) + ")"
            cells.append(cell)
        name = f"{variant}: {VARIANTS.get(variant, variant)}"
        lines.append(f"| {name} | {', '.join(map(str, sorted(seeds)))} | " + " | ".join(cells) + " |")
    machines = sorted({n["machine"] for s in runs.values() for n in s.values() if "machine" in n})
    lines += ["", "Machine: " + "; ".join(machines) if machines else ""]
    clean = {v: {s: {k: x for k, x in n.items() if not k.startswith("_")} for s, n in seeds.items()}
             for v, seeds in runs.items()}
    return "\n".join(lines) + "\n", clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="the OUT of bench/recipe_variants.sh")
    parser.add_argument("--out", type=Path, help="also write the table here (and the numbers as .json)")
    args = parser.parse_args(argv)
    if not args.out_dir.is_dir():
        parser.error(f"{args.out_dir} is not a directory")
    text, numbers = table(args.out_dir)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(numbers, indent=2))
        print(f"table: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
