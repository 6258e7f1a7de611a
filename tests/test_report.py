"""The evidence study: statistics over seeds by hand, the study's commands and its skip-if-done runner, and
the report written from synthetic results files (numbers in the tables, missing runs listed)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from miro.cli import eval as eval_cli
from miro.config import compose_config
from miro.eval.aggregate import (
    across_seeds,
    mean_curve,
    single_sample_matches,
    speedup,
    steps_to_reach,
    threshold_at,
)
from miro.eval.results_report import write_results_report
from miro.eval.study import Study, StudyError, compose_study_config, eval_flags, export_steps, run_steps

REPO = Path(__file__).resolve().parent.parent


def test_the_study_trains_on_the_demo_data_with_the_model_it_was_measured_with() -> None:
    """The demo's world is set in the Makefile and the study's in conf/report.yaml (the study does not
    call make): they must agree. The study pins the model and length docs/results.md was measured with
    (the patch-4 DiT, 9750 steps), so a later change of the demo model does not silently change what
    `make report` reruns."""
    made = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True)
    commands = made.stdout.replace("\\\n\t", "")  # continuation lines joined
    cfg = compose_study_config("cpu", None, None, [])
    d = cfg.data
    sizes = " ".join(f"{v:g}" for v in d.object_size)
    assert (
        f"--n {d.n} --size {d.size} --max-objects {d.max_objects} --object-size {sizes} --seed {d.seed}"
        in commands
    )
    assert f"n_bins={d.n_bins}" in commands
    assert f"data.image_size={d.size} " in commands
    assert cfg.train.steps == 9750 and "model=dit_shapes_patch4" in cfg.train.overrides
    train = compose_config("train", ["+experiment=shapes", *cfg.train.overrides])
    assert (train.model.patch_size, train.model.depth, train.model.conv_channels) == (4, 6, 32)
    assert list(train.model.unet_channels) == []


# -- statistics -------------------------------------------------------------------------------------


def test_spread_across_seeds_by_hand() -> None:
    s = across_seeds([0.4, None, 0.5, math.nan, 0.6])  # missing runs and undefined values left out
    assert (s.n, s.lo, s.hi) == (3, 0.4, 0.6)
    assert s.mean == pytest.approx(0.5) and s.std == pytest.approx(0.1)  # sample sd: sqrt(0.02 / 2)
    assert s.format() == "0.500 ± 0.100 [0.400, 0.600]"
    one = across_seeds([0.25])
    assert one.n == 1 and math.isnan(one.std) and one.format() == "0.250"
    assert across_seeds([None, math.nan]).n == 0 and across_seeds([]).format() == "n/a"
    assert mean_curve([[0.1, 0.3], [0.3, None]]) == pytest.approx([0.2, 0.3])
    with pytest.raises(ValueError, match="different lengths"):
        mean_curve([[0.1], [0.1, 0.2]])


def test_steps_to_threshold_interpolates_and_says_never() -> None:
    steps = [100, 200, 300]
    assert steps_to_reach(steps, [0.1, 0.3, 0.5], 0.4) == pytest.approx(250.0)
    assert steps_to_reach(steps, [0.1, 0.3, 0.5], 0.3) == pytest.approx(200.0)  # hit exactly
    assert steps_to_reach(steps, [0.6, 0.7, 0.8], 0.4) == 100.0  # already there at the first evaluation
    assert steps_to_reach(steps, [0.1, 0.3, 0.35], 0.4) is None
    assert steps_to_reach(steps, [0.1, None, 0.5], 0.3) == pytest.approx(200.0)  # the gap is skipped
    assert steps_to_reach(steps, [0.5, 0.2, 0.6], 0.4) == 100.0  # the first crossing counts
    with pytest.raises(ValueError, match="3 steps but 2 values"):
        steps_to_reach(steps, [0.1, 0.2], 0.1)


def test_speedup_threshold_and_single_sample_match() -> None:
    assert speedup(300.0, 100.0) == 3.0
    assert speedup(None, 100.0) is None and speedup(300.0, None) is None
    assert threshold_at(0.1, 0.5, 0.5) == pytest.approx(0.3) and threshold_at(0.1, 0.5, 1.0) == 0.5
    assert threshold_at(-1.2, -0.8, 0.5) == pytest.approx(-1.0)  # rewards may be negative
    assert threshold_at(0.5, 0.4, 1.0) is None  # a baseline that gets worse defines no threshold
    assert single_sample_matches(0.6, [0.4, 0.55, 0.6, 0.7]) == 3
    assert single_sample_matches(0.3, [0.4, 0.5]) == 0
    assert single_sample_matches(0.9, [0.4, 0.5]) == 2


# -- the study's commands and runner ---------------------------------------------------------------


def _cfg(root: Path, *overrides: str):  # noqa: ANN202
    return compose_study_config("test", None, None, [f"runs_dir={root}", *overrides])


def test_export_steps() -> None:
    assert export_steps(10, 4) == [4, 8, 10]
    assert export_steps(8, 4) == [4, 8]
    assert export_steps(6, 0) == [6]
    with pytest.raises(ValueError, match="train.steps must be at least 1"):
        export_steps(0, 2)
    assert eval_flags({"per_category": 8, "negative_prompt": "", "all_low": True, "steps": None}) == [
        "--per-category",
        "8",
        "--negative-prompt",
        "",
        "--all-low",
    ]


def test_commands_of_the_study(tmp_path: Path) -> None:
    study = Study(_cfg(tmp_path, "seeds=[3,4]", "train.steps=5", "train.export_every=2"), python="py")
    assert study.export_steps == [2, 4, 5]
    steps = {s.name: s for s in study.steps()}
    train = steps["seed3/train/miro"]
    assert train.command[:4] == ("py", "-m", "miro.train", "+experiment=shapes")
    for override in (
        "seed=3",
        "trainer.max_steps=5",
        "++callbacks.export.every_n_steps=2",
        "model=dit_tiny",
        f"paths.output_dir={tmp_path / 'seed3' / 'train' / 'miro'}",
    ):
        assert override in train.command
    assert train.output == tmp_path / "seed3" / "train" / "miro" / "export" / "config.json"
    assert "+experiment=shapes_baseline" in steps["seed4/train/baseline"].command
    # Step 5 is not a multiple of 2: the final export stands for it.
    conv = steps["seed3/eval/convergence/baseline/step5"].command
    assert conv[conv.index("--checkpoint") + 1] == str(tmp_path / "seed3" / "train" / "baseline" / "export")
    conv = steps["seed3/eval/convergence/miro/step4"].command
    assert conv[conv.index("--checkpoint") + 1].endswith("miro/exports/step0000004")
    final = steps["seed3/eval/final"].command
    assert final[final.index("--baseline") + 1].endswith("seed3/train/baseline/export")
    assert final[final.index("--best-of") + 1] == "4"
    assert final[final.index("--rewards") + 1] == "alignment,sharpness,colorfulness,compressibility"
    negative = steps["seed4/eval/negative/empty_text_rewards_low"].command
    assert negative[negative.index("--negative-prompt") + 1] == ""
    assert negative[negative.index("--negative-rewards") + 1] == ""
    scale = steps["seed4/eval/guidance/scale2"].command
    assert scale[scale.index("--guidance") + 1] == "2"
    weighted = steps["seed3/grpo/chunk_weighted"].command
    assert "+experiment=rl_shapes_chunk" in weighted and "module.chunk_sampling.weighted=true" in weighted
    assert f"pretrained={tmp_path / 'seed3' / 'train' / 'miro' / 'export'}" in weighted
    after = steps["seed3/eval/grpo/chunk_weighted"].command
    assert after[after.index("--checkpoint") + 1].endswith("seed3/grpo/chunk_weighted/export")
    assert steps["seed3/eval/grpo/before"].shell().startswith("python -m miro.cli.eval --checkpoint")
    # Every input is made by an earlier step.
    order = [s.name for s in study.steps()]
    assert order[:3] == ["data/shapes", "data/score", "data/bins"]
    assert order.index("seed3/train/miro") < order.index("seed3/eval/final") < order.index("seed3/grpo/step")
    assert order.index("seed3/grpo/step") < order.index("seed3/eval/grpo/step")
    only = [s.name for s in study.steps(["guidance"])]
    assert only[:2] == ["seed3/train/miro", "seed3/train/baseline"] and "data/bins" not in only
    # A run killed before its export resumes from its last checkpoint.
    last = tmp_path / "seed3" / "grpo" / "step" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    resumed = {s.name: s for s in study.steps()}
    assert resumed["seed3/grpo/step"].command[-1] == f"ckpt_path={last}"
    assert not any(c.startswith("ckpt_path=") for c in resumed["seed3/train/miro"].command)
    with pytest.raises(ValueError, match="unknown studies"):
        study.steps(["nope"])
    with pytest.raises(ValueError, match="seeds repeat"):
        Study(_cfg(tmp_path, "seeds=[1,1]"))


def test_runner_skips_what_is_done_and_names_failures(tmp_path: Path) -> None:
    study = Study(_cfg(tmp_path, "grpo.variants={}", "guidance.negatives={}", "guidance.scales=[]"))
    steps = study.steps(["data", "control"])
    calls: list[tuple[str, ...]] = []

    def make_outputs(command, log_file, env) -> int:  # noqa: ANN001
        calls.append(tuple(command))
        assert env["OMP_NUM_THREADS"] == "1"
        step = next(s for s in steps if s.command == tuple(command))
        target = step.produces or step.output
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}")
        else:
            target.mkdir(parents=True, exist_ok=True)
        return 0

    assert run_steps(steps, study.layout, 1, make_outputs) == {"ran": len(steps), "skipped": 0}
    assert calls == [s.command for s in steps]
    records = [json.loads(line) for line in study.layout.step_log.read_text().splitlines()]
    assert [r["name"] for r in records] == [s.name for s in steps] and all(
        r["returncode"] == 0 for r in records
    )
    assert run_steps(steps, study.layout, 1, make_outputs) == {"ran": 0, "skipped": len(steps)}
    assert len(calls) == len(steps)

    (tmp_path / "seed0" / "eval" / "final" / "results.json").unlink()
    with pytest.raises(StudyError, match=r"seed0/eval/final failed with exit status 3; its output: .*\.log"):
        run_steps(steps, study.layout, 1, lambda command, log_file, env: 3)
    with pytest.raises(StudyError, match="exited 0 but did not write .*results.json"):
        run_steps(steps, study.layout, 1, lambda command, log_file, env: 0)


# -- the report from synthetic results ---------------------------------------------------------------

SETTINGS = {"per_category": 1, "samples_per_prompt": 1, "seed": 0}


def results(cond: str, acc: float, rewards: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "settings": SETTINGS,
        "sampling": {"guidance": 2.0},
        "benchmark": {
            cond: [
                {"category": "colors", "n": 4, "accuracy": acc, "accuracy_se": 0.1, "alignment": acc},
                {"category": "overall", "n": 4, "accuracy": acc, "accuracy_se": 0.1, "alignment": acc},
            ]
        },
        "rewards_at": {cond: {k: {"mean": v, "se": 0.01, "n": 4} for k, v in rewards.items()}},
        **extra,
    }


def put(path: Path, data: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(data))


@pytest.fixture
def synthetic(tmp_path: Path) -> Study:
    """Two seeds; convergence, final and GRPO step/chunk results; no guidance or chunk_weighted runs."""
    study = Study(
        _cfg(
            tmp_path / "runs",
            "seeds=[0,1]",
            "train.steps=4",
            "train.export_every=2",
            "measured_rewards=[alignment,colorfulness]",
            "analysis.threshold_fractions=[0.5,1.0]",
        )
    )
    lay = study.layout
    miro_acc = {0: [0.4, 0.6], 1: [0.3, 0.6]}  # mean curve [0.35, 0.6]
    base_acc = {0: [0.1, 0.3], 1: [0.1, 0.5]}  # mean curve [0.1, 0.4]
    for seed in (0, 1):
        for i, step in enumerate((2, 4)):
            put(
                lay.convergence_eval(seed, "miro", step),
                results(
                    "all targets 10", miro_acc[seed][i], {"alignment": miro_acc[seed][i], "colorfulness": 5.0}
                ),
            )
            put(
                lay.convergence_eval(seed, "baseline", step),
                results(
                    "unconditional",
                    base_acc[seed][i],
                    {"alignment": base_acc[seed][i], "colorfulness": 10.0 * (i + 1)},
                ),
            )
        sweep = [
            {"target": 0.0, "mean": 0.2 + 0.2 * seed, "se": 0.05, "n": 4, "accuracy": 0.1},
            {"target": 10.0, "mean": 0.5 + 0.2 * seed, "se": 0.05, "n": 4, "accuracy": 0.3},
        ]
        best = {
            "miro": {"alignment": [0.5 - 0.1 * seed, 0.6, 0.65, 0.7]},
            "baseline": {"alignment": [0.3, [0.45, 0.35][seed], [0.55, 0.42][seed], 0.6]},
        }
        put(
            lay.final_eval(seed),
            results(
                "all targets 10",
                0.5,
                {"alignment": 0.5, "colorfulness": 5.0},
                sweeps={"alignment": sweep},
                contrasts={
                    "alignment": {"reward": {"difference": 0.3, "se": 0.1, "z": 3.0 - 2 * seed, "n": 4}}
                },
                best_of_n=best,
                data_range={"alignment": [0.0, 1.0]},
            ),
        )
        put(
            lay.grpo_eval(seed, None), results("all targets 10", 0.5, {"alignment": 0.5, "colorfulness": 5.0})
        )
        for variant, gain in (("step", [0.1, 0.2][seed]), ("chunk", [0.2, 0.35][seed])):
            put(
                lay.grpo_eval(seed, variant),
                results("all targets 10", 0.5 + gain, {"alignment": 0.5 + gain, "colorfulness": 5.0 - gain}),
            )
    return study


def _row(markdown: str, start: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(start))


def test_report_tables_hold_the_numbers(synthetic: Study, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "results.md"
    paths = write_results_report(synthetic, out)
    md = out.read_text()
    # Convergence: mean ± std over the two seeds at each step.
    assert _row(md, "| 2 |").startswith("| 2 | 0.350 ± 0.071 | 0.100 ± 0.000 |")
    assert _row(md, "| 4 |").startswith("| 4 | 0.600 ± 0.000 | 0.400 ± 0.141 |")
    # Speed-up at X = 0.4 (the baseline's final mean): baseline 4 steps, MIRO 2 + 0.05 / 0.25 * 2 = 2.4.
    assert _row(md, "| accuracy overall | 1 |") == (
        "| accuracy overall | 1 | 0.400 | 4 | 2 | 1.67x | n/a, 1.31x |"
    )
    assert _row(md, "| accuracy overall | 0.5 |").startswith(
        "| accuracy overall | 0.5 | 0.250 | 3 | 2 | 1.50x |"
    )
    assert "| colorfulness | 1 | 20.000 | 4 | never | n/a (MIRO never reaches X) |" in md
    # One evaluation's binomial error at MIRO's final 0.6 on 1 image: sqrt(0.6 * 0.4) = 0.490; the gap
    # between two 2-seed means: 0.490 * sqrt(2 / 2).
    assert "near 0.60 has a binomial standard error of about 0.490, and the gap between the two 2-seed " \
        "mean curves one of about 0.490;" in md
    # Control: the alignment sweep's top point over the seeds; both seeds' z but only one above 2.
    assert _row(md, "| 10 |").startswith("| 10 | 0.600 ± 0.141 [0.500, 0.700] |")
    assert _row(md, "| alignment | 0.300 ± 0.000").endswith("| 1/2 | [0, 1] |")
    # Best-of-N: one MIRO sample matches the baseline's best-of-2 on both seeds.
    assert "| alignment | N = 2, 2 (per seed) |" in md
    assert _row(md, "| 1 |").startswith("| 1 | 0.450 ± 0.071 | 0.300 ± 0.000 |")
    # GRPO deltas and the paired chunk - step difference (0.1 and 0.15).
    assert _row(md, "| step | n/a").startswith(
        "| step | n/a | 0.150 ± 0.071 | -0.150 ± 0.071 | 0.150 ± 0.071 |"
    )
    assert _row(md, "| chunk |").startswith("| chunk | n/a | 0.275 ± 0.106 |")
    assert "- chunk − step, `alignment` after GRPO (paired by seed): 0.125 ± 0.035 [0.100, 0.150]" in md
    # Missing runs are named, their sections say so, and nothing crashed.
    assert "No guidance results yet" in md
    assert "- `seed1/eval/guidance/scale0`" in md and "- `seed0/grpo/chunk_weighted`" in md
    assert "Not recorded: these runs were not made by `miro-eval report --run`." in md
    assert "## Where we differ from the papers" in md and "python -m miro.train +experiment=shapes" in md
    for name in (
        "convergence_accuracy.png",
        "convergence_rewards.png",
        "control.png",
        "best_of_n.png",
        "grpo.png",
    ):
        assert paths[name] == out.parent / "results" / name and Image.open(paths[name]).format == "PNG"
        assert f"](results/{name})" in md
    assert not list(out.parent.rglob("*.tmp"))


def test_report_with_no_runs_lists_them_all(tmp_path: Path) -> None:
    study = Study(_cfg(tmp_path / "runs"))
    md = write_results_report(study, tmp_path / "r.md")["markdown"].read_text()
    expected = sum(s.study != "data" for s in study.steps())
    assert f"{expected} of {expected} runs are missing" in md
    assert "No convergence results yet" in md and "No final evaluations yet" in md
    # The study's other sizes are named, whether they were run or not (runs_dir: that scale's default).
    for scale in ("cpu", "gpu"):
        run = f"`miro-eval report --run --scale {scale}`"
        assert f"- `{scale}` scale (conf/report/{scale}.yaml, {run}): " in md


def test_cli_report_and_dry_run(synthetic: Study, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = synthetic.layout.root
    out = tmp_path / "cli.md"
    common = [
        "--scale",
        "test",
        "--seeds",
        "0,1",
        "--out",
        str(out),
        f"runs_dir={runs}",
        "train.steps=4",
        "train.export_every=2",
    ]
    assert eval_cli.main(["report", *common]) == 0
    assert f"Report: {out}" in capsys.readouterr().out and out.is_file()
    assert eval_cli.main(["report", "--dry-run", *common]) == 0
    listing = capsys.readouterr().out
    assert "done  seed0/eval/final: python -m miro.cli.eval" in listing and "todo  data/shapes" in listing
    empty = tmp_path / "empty.md"
    empty.write_text("the committed report")
    assert eval_cli.main(["report", *common[:4], "--out", str(empty), f"runs_dir={tmp_path / 'none'}"]) == 2
    assert "no saved runs under" in capsys.readouterr().err and empty.read_text() == "the committed report"
    assert eval_cli.main(["report", "--scale", "nope"]) == 2
    assert "miro-eval report:" in capsys.readouterr().err
    assert eval_cli.main(["report", "--scale", "test", "--seeds", "1,1", f"runs_dir={runs}"]) == 2
    assert "seeds repeat" in capsys.readouterr().err
