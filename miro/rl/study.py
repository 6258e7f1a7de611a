"""The GRPO study of docs/grpo.md as one command: ``python -m miro.rl.study export=... out_dir=...``.

From one exported model, every variant of ``conf/grpo_study.yaml`` (step-level, chunk-level, chunk-level
with weighted chunk sampling) is fine-tuned once per seed with ``python -m miro.rl``, each result is
evaluated with ``miro-eval`` under the same settings as the starting model, and a markdown table gives
every measured reward's change (after − before) as mean ± std over the seeds, plus each variant minus
the baseline variant paired by seed. The runs are the evidence study's steps (:mod:`miro.eval.study`):
a step whose output exists is skipped, so a killed study is resumed by running it again.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from miro.config import compose_config
from miro.data.shards import write_bytes_atomic
from miro.eval.compare import compare, load_results
from miro.eval.study import Executor, Layout, Step, eval_flags, run_steps, subprocess_executor

log = logging.getLogger(__name__)


def study_steps(cfg: DictConfig, python: str | None = None) -> list[Step]:
    """The before evaluation, then for every seed and variant its GRPO run and its evaluation."""
    python = python or cfg.get("python") or sys.executable
    layout = Layout(Path(cfg.out_dir))
    if not cfg.variants:
        raise ValueError("grpo_study: no variants to run")
    if cfg.baseline_variant not in cfg.variants:
        raise ValueError(f"grpo_study: baseline_variant {cfg.baseline_variant!r} is not one of the variants")

    def evaluate(checkpoint: Path, out: Path) -> tuple[str, ...]:
        settings = OmegaConf.to_container(cfg.eval, resolve=True)
        flags = eval_flags({"rewards": ",".join(cfg.measured_rewards), **settings})  # type: ignore[dict-item]
        return (python, "-m", "miro.cli.eval", "--checkpoint", str(checkpoint), "--out", str(out), *flags)

    before = before_dir(cfg)
    steps = [Step("grpo", "eval/before", evaluate(Path(cfg.export), before), before / "results.json")]
    for seed in cfg.seeds:
        for variant, spec in cfg.variants.items():
            run = layout.grpo_run(int(seed), variant)
            last = run / "checkpoints" / "last.ckpt"
            command = (
                python, "-m", "miro.rl", f"+experiment={spec.experiment}", f"pretrained={cfg.export}",
                f"paths.output_dir={run}", f"seed={int(seed)}", f"iterations={int(cfg.iterations)}",
                f"module.rewards={cfg.reward}", *cfg.overrides, *spec.overrides,
                *([f"ckpt_path={last}"] if last.is_file() else []),
            )  # fmt: skip
            name = f"seed{seed}/grpo/{variant}"
            steps.append(Step("grpo", name, command, run / "export" / "config.json", int(seed)))
            out = layout.grpo_eval(int(seed), variant)
            command = evaluate(run / "export", out)
            steps.append(Step("grpo", f"seed{seed}/eval/{variant}", command, out / "results.json", int(seed)))
    return steps


def before_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) / "eval" / "before"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    mean, std = _mean_std(known)
    spread = "" if math.isnan(std) else f" ± {std:.3f}"
    return f"{mean:+.3f}{spread}"


def collect_changes(cfg: DictConfig) -> dict[str, dict[str, list[float | None]]]:
    """{variant: {column: [change per seed]}}: each measured reward and the benchmark accuracy."""
    layout = Layout(Path(cfg.out_dir))
    before = load_results(before_dir(cfg))
    changes: dict[str, dict[str, list[float | None]]] = {}
    for variant in cfg.variants:
        columns: dict[str, list[float | None]] = {}
        for seed in cfg.seeds:
            result = compare(before, load_results(layout.grpo_eval(int(seed), variant)), [cfg.reward])
            for name in cfg.measured_rewards:
                columns.setdefault(name, []).append(result["rewards"].get(name, {}).get("delta"))
            columns.setdefault("accuracy", []).append(result["benchmark"].get("overall", {}).get("delta"))
        changes[variant] = columns
    return changes


def chunk_sizes(cfg: DictConfig, variant: str) -> str:
    """The chunk list each seed's run trained with (from its export), e.g. "[2, 2, 2, 4]"."""
    layout = Layout(Path(cfg.out_dir))
    found = []
    for seed in cfg.seeds:
        config = layout.grpo_run(int(seed), variant) / "export" / "config.json"
        sizes = json.loads(config.read_text(encoding="utf-8")).get("grpo", {}).get("chunk_sizes")
        found.append(str(sizes))
    unique = list(dict.fromkeys(found))
    return unique[0] if len(unique) == 1 else "; ".join(found)


def study_table(cfg: DictConfig, changes: dict[str, dict[str, list[float | None]]]) -> str:
    """The markdown report: one row per variant, and each variant minus the baseline paired by seed."""
    names = [cfg.reward, *[n for n in cfg.measured_rewards if n != cfg.reward], "accuracy"]
    header = " | ".join(f"{n} (optimised)" if n == cfg.reward else n for n in names)
    seeds = ", ".join(str(s) for s in cfg.seeds)
    lines = [
        "# GRPO variants from one model",
        "",
        f"Model: `{cfg.export}`. Optimised reward: {cfg.reward}. {cfg.iterations} iterations per run, "
        f"seeds {seeds}; every variant makes the same rollouts per iteration (same prompts, noise and "
        "count). Each cell: change after − before on the held-out evaluation (miro-eval, the same "
        "settings on both sides), mean ± std over the seeds.",
        "",
        f"| variant | chunks | {header} |",
        "|---|---|" + "---|" * len(names),
    ]
    for variant, columns in changes.items():
        cells = " | ".join(_cell(columns.get(n, [])) for n in names)
        lines.append(f"| {variant} | {chunk_sizes(cfg, variant)} | {cells} |")
    base = changes[cfg.baseline_variant]
    others = [v for v in changes if v != cfg.baseline_variant]
    if others:
        lines += ["", f"Paired by seed, minus {cfg.baseline_variant}:", ""]
        lines += [f"| variant | {header} |", "|---|" + "---|" * len(names)]
        for variant in others:
            cells = []
            for n in names:
                pairs = [
                    None if a is None or b is None else a - b
                    for a, b in zip(changes[variant].get(n, []), base.get(n, []), strict=True)
                ]
                cells.append(_cell(pairs))
            lines.append(f"| {variant} − {cfg.baseline_variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_study(cfg: DictConfig, executor: Executor = subprocess_executor) -> Path:
    """Run whatever is missing, then write the table; returns its path."""
    steps = study_steps(cfg)
    counts = run_steps(steps, Layout(Path(cfg.out_dir)), int(cfg.threads), executor, _progress)
    log.info("grpo study: %d steps run, %d already done", counts["ran"], counts["skipped"])
    table = Path(cfg.table)
    write_bytes_atomic(table, study_table(cfg, collect_changes(cfg)).encode())
    return table


def _progress(step: Step, state: str) -> None:
    print(f"[{state}] {step.name}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m miro.rl.study KEY=VALUE ...`` (Hydra overrides of conf/grpo_study.yaml)."""
    from miro.eval.study import StudyError
    from miro.usage import usage_errors

    with usage_errors():
        cfg = compose_config("grpo_study", list(sys.argv[1:] if argv is None else argv))
        missing: list[Any] = [k for k in ("export", "out_dir") if OmegaConf.is_missing(cfg, k)]
        if missing:
            print(f"error: grpo_study needs {' and '.join(f'{k}=...' for k in missing)}", file=sys.stderr)
            return 2
        if not (Path(cfg.export) / "config.json").is_file():
            print(f"error: {cfg.export}: not a model directory (no config.json)", file=sys.stderr)
            return 2
        try:
            table = run_study(cfg)
        except StudyError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    print(f"GRPO study table: {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
