"""`make grpo-study` at a tiny size: every variant x seed is fine-tuned and evaluated, and the table's
cells are the hand-computed mean ± std over seeds of the evaluations' changes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from tiny_models import export_tiny_model

from miro.cli import eval as eval_cli
from miro.config import compose_config
from miro.eval.compare import compare, load_results
from miro.rl import study
from miro.rl.__main__ import run as run_grpo

TINY_GRPO = [
    "logger=none", "data.prompts_per_iteration=2", "module.group_size=2", "module.rollout_batch_size=4",
    "module.train_batch_size=4", "module.steps=4", "module.grid_every=0", "module.precision=fp32",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]  # fmt: skip


def in_process(command: Sequence[str], log_file: Path, env: Mapping[str, str]) -> int:
    """The study's commands, run in this process (a subprocess per run would cost seconds each)."""
    module, args = command[2], list(command[3:])
    if module == "miro.rl":
        run_grpo(compose_config("rl", args))
        return 0
    assert module == "miro.cli.eval", command
    return eval_cli.main(args)


def test_grpo_study_runs_every_variant_and_tabulates_mean_and_spread(tmp_path: Path) -> None:
    export = export_tiny_model(tmp_path / "model", None)
    overrides = [
        f"export={export}", f"out_dir={tmp_path / 'study'}", "seeds=[0,1]", "iterations=1",
        "overrides=[" + ",".join(f"'{o}'" for o in TINY_GRPO) + "]", "eval.precision=fp32",
        "eval.per_category=1", "eval.samples_per_prompt=1", "eval.sweep_images=1", "+eval.steps=2",
    ]  # fmt: skip
    cfg = compose_config("grpo_study", overrides)
    steps = study.study_steps(cfg)
    assert [s.name for s in steps][:3] == ["eval/before", "seed0/grpo/step", "seed0/eval/step"]
    assert len(steps) == 1 + 2 * 3 * 2
    weighted = next(s for s in steps if s.name == "seed1/grpo/chunk_weighted").command
    assert "module.chunk_sampling.weighted=true" in weighted and "seed=1" in weighted

    table = study.run_study(cfg, executor=in_process)
    text = table.read_text()
    layout = study.Layout(tmp_path / "study")
    before = load_results(tmp_path / "study" / "eval" / "before")
    deltas = {
        v: [compare(before, load_results(layout.grpo_eval(s, v)), ["sharpness"]) for s in (0, 1)]
        for v in ("step", "chunk", "chunk_weighted")
    }
    for variant, results in deltas.items():
        values = [r["rewards"]["sharpness"]["delta"] for r in results]
        mean = sum(values) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in values))  # n - 1 = 1
        assert f" | {mean:+.3f} ± {std:.3f} |" in text.split(f"| {variant} | ")[1].splitlines()[0], text
    paired = [a - b for a, b in zip(
        [r["rewards"]["sharpness"]["delta"] for r in deltas["chunk_weighted"]],
        [r["rewards"]["sharpness"]["delta"] for r in deltas["step"]], strict=True)]  # fmt: skip
    mean = sum(paired) / 2
    assert f"| chunk_weighted − step | {mean:+.3f} ± " in text
    assert "| step | [1, 1, 1, 1] |" in text  # the chunks each variant trained with
    # A second run finds everything done and only rewrites the table.
    calls: list[Sequence[str]] = []
    study.run_study(cfg, executor=lambda c, log, env: calls.append(c) or 0)
    assert calls == []


def test_grpo_study_names_missing_settings(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert study.main([f"out_dir={tmp_path}"]) == 2
    assert "grpo_study needs export=..." in capsys.readouterr().err
    assert study.main([f"export={tmp_path}", f"out_dir={tmp_path}"]) == 2
    assert "not a model directory" in capsys.readouterr().err
