"""The evidence study (miro/shapes/study/): statistics by hand, its steps as calls of the Makefile's
stages, the skip-if-done runner, and the report rendered from saved runs (tests/evidence_runs.py), whose
Markdown is pinned byte for byte (tests/golden/evidence_report.md)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import subprocess
import tarfile
import threading
import time
from pathlib import Path, PurePosixPath

import pytest
from evidence_runs import OVERRIDES, write_runs
from PIL import Image

from miro.cli import eval as eval_cli
from miro.config import compose_config
from miro.eval.study import Layout, Step, StudyError, eval_flags, run_steps
from miro.shapes.study import cli as study_cli
from miro.shapes.study.archive import PACKED_NAMES, ArchiveError, unpack
from miro.shapes.study.makefile import MAKEFILE, STAGES, environment, stage
from miro.shapes.study.plan import Study, compose_study_config, export_steps
from miro.shapes.study.report import write_results_report
from miro.shapes.study.results import parse_evaluation, read_evaluation
from miro.shapes.study.stats import (
    across_seeds,
    binomial_se,
    distinguishable,
    gap_se,
    images_for_gap,
    mean_curve,
    mean_of_gaps_se,
    paired_differences,
    paired_gap,
    planned_gap_se,
    resolution,
    single_sample_matches,
    speedup,
    steps_to_reach,
    threshold_at,
)

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "evidence_report.md"
GENERATED = "2026-01-02 03:04 UTC"


def test_the_study_trains_the_demo_model_on_the_demo_data() -> None:
    """The study passes the sizes of conf/report.yaml to the Makefile's stages; at the CPU scale they are
    the demo's own (the Makefile's defaults), and the model and recipe are the demo's (conf/experiment/
    shapes.yaml with no model override), trained as long as the demo (conf/report/cpu.yaml says why)."""
    made = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True)
    commands = made.stdout.replace("\\\n\t", "")  # continuation lines joined
    cfg = compose_study_config("cpu", None, None, [])
    d = cfg.data
    sizes = " ".join(f"{v:g}" for v in d.object_size)
    assert (
        f"--n {d.n} --size {d.size} --max-objects {d.max_objects} --object-size {sizes} --seed {d.seed} "
        f"--workers {d.workers}" in commands
    )
    assert f"n_bins={d.n_bins}" in commands
    assert f"data.image_size={d.size} " in commands
    assert not [
        o for o in cfg.train.overrides if o.split("=")[0].lstrip("+~") in ("model", "data.batch_size")
    ]
    demo = compose_config("train", ["+experiment=shapes"])
    studied = compose_config("train", ["+experiment=shapes", *cfg.train.overrides])
    assert studied.model == demo.model and studied.module.lr == demo.module.lr
    # The final model of every seed is the demo's: make demo's length, and the demo experiment's own.
    assert f"trainer.max_steps={cfg.train.steps} " in commands and cfg.train.steps == demo.trainer.max_steps
    assert len(Study(cfg).export_steps) >= 5  # a curve, not two points
    gpu = compose_study_config("gpu", None, None, [])
    assert gpu.train.steps > cfg.train.steps and gpu.eval.device == "cuda" and len(gpu.seeds) >= 3
    assert len(cfg.seeds) >= 3


def test_world_and_benchmark_agree() -> None:
    """The benchmark asks only for counts the data shows: conf/benchmark/shapes.yaml's max_count is the
    Makefile's MAX_OBJECTS (make demo's data and eval) and the study's data.max_objects; a study whose
    world differs is refused."""
    from miro.eval.benchmark import benchmark_config, build_benchmark
    from miro.shapes.benchmark import ShapesBenchmark

    made = subprocess.run(["make", "-n", "data"], cwd=REPO, capture_output=True, text=True, check=True)
    shown = int(re.search(r"--max-objects (\d+)", made.stdout).group(1))
    assert benchmark_config("shapes")["max_count"] == shown == compose_study_config("cpu").data.max_objects
    bench = build_benchmark("shapes")
    counts = {p.count for i in bench.items() if i.category == "counting" for p in i.metadata["spec"].phrases}
    assert counts == {2} and bench.describe()["max_count"] == 2  # recorded in results.json's settings
    with pytest.raises(ValueError, match="max_count must be at least 2"):
        ShapesBenchmark(per_category=1, max_count=1)
    with pytest.raises(
        ValueError, match="max_count = 2 but the study's world shows at most data.max_objects = 4"
    ):
        Study(compose_study_config("test", None, None, ["data.max_objects=4"]))


# -- statistics -------------------------------------------------------------------------------------


def test_spread_across_seeds_by_hand() -> None:
    s = across_seeds([0.4, None, 0.5, math.nan, 0.6])  # missing runs and undefined values left out
    assert (s.n, s.lo, s.hi) == (3, 0.4, 0.6)
    assert s.mean == pytest.approx(0.5) and s.std == pytest.approx(0.1)  # sample sd: sqrt(0.02 / 2)
    assert s.se == pytest.approx(0.1 / math.sqrt(3))
    assert s.format() == "0.500 ± 0.100 [0.400, 0.600]"
    one = across_seeds([0.25])
    assert one.n == 1 and math.isnan(one.std) and math.isnan(one.se) and one.format() == "0.250"
    assert across_seeds([None, math.nan]).n == 0 and across_seeds([]).format() == "n/a"
    assert mean_curve([[0.1, 0.3], [0.3, None]]) == pytest.approx([0.2, 0.3])
    with pytest.raises(ValueError, match="different lengths"):
        mean_curve([[0.1], [0.1, 0.2]])


def test_standard_errors_and_paired_differences_by_hand() -> None:
    # One evaluation of 96 images at accuracy 0.3: sqrt(0.3 * 0.7 / 96) = 0.04677; the gap between two
    # 3-seed means of such evaluations: 0.04677 * sqrt(2 / 3) = 0.03819.
    assert binomial_se(0.3, 96) == pytest.approx(0.046771, abs=1e-6)
    assert gap_se(binomial_se(0.3, 96), 3) == pytest.approx(0.038188, abs=1e-6)
    with pytest.raises(ValueError, match="n must be at least 1"):
        binomial_se(0.5, 0)
    # Chunk minus step after GRPO, paired by seed; seed 2 lacks the chunk run.
    diffs = paired_differences([0.6, 0.85, None], [0.5, 0.7, 0.4])
    assert diffs == pytest.approx([0.1, 0.15, None])
    d = across_seeds(diffs)  # mean 0.125, sd 0.035355, se 0.025
    assert d.se == pytest.approx(0.025) and distinguishable(d) is True  # 0.125 > 2 * 0.025
    assert distinguishable(across_seeds([0.01, -0.02, 0.015])) is False  # mean 0.00167, 2 se 0.0219
    assert distinguishable(across_seeds([0.1])) is None and distinguishable(across_seeds([0.1, 0.1])) is None
    with pytest.raises(ValueError, match="one per seed"):
        paired_differences([0.1], [0.1, 0.2])


def test_power_of_a_paired_gap_by_hand() -> None:
    # The paper's +9.6 % at accuracy 0.35: the other side at 0.3836; per-image variance of the unpaired
    # difference 0.35 * 0.65 + 0.3836 * 0.6164 = 0.2275 + 0.23645 = 0.46395. A third of the gap
    # (0.0336 / 3 = 0.0112) over 3 seeds needs 0.46395 / (3 * 0.0112^2) = 1232.9 -> 1233 images.
    assert images_for_gap(0.35, 0.096, 3) == 1233
    assert planned_gap_se(0.35, 0.096, 1233, 3) == pytest.approx(0.0112, abs=2e-6)
    assert images_for_gap(0.35, 0.096, 1) == 3699  # one seed: three times as many
    assert resolution(0.0112, 0.0336) == pytest.approx(1 / 3) and math.isnan(resolution(0.01, 0.0))
    with pytest.raises(ValueError, match="0 < level < 1"):
        images_for_gap(1.2, 0.096, 3)
    # Image-by-image differences [1, 0, 0, 1]: mean 0.5, sd sqrt(1 / 3) = 0.57735, se 0.28868; pairs with a
    # missing side are left out.
    g = paired_gap([1, 1, 1, 1, None], [0, 1, 1, 0, 1])
    assert (g.mean, g.n) == (0.5, 4) and g.se == pytest.approx(0.288675, abs=1e-6)
    assert math.isnan(paired_gap([1.0], [0.0]).se)
    # Two seeds' gaps with SEs 0.25 and 0.288675: the mean's SE sqrt(0.0625 + 0.083333) / 2 = 0.190941.
    assert mean_of_gaps_se([0.25, 0.288675]) == pytest.approx(0.190941, abs=1e-6)


@pytest.mark.parametrize("scale", ["test", "cpu"])
def test_compared_evaluations_are_paired(tmp_path: Path, scale: str) -> None:
    """Every two evaluations the report compares score the same items with the same noise: the same
    --seed, --per-category and --samples-per-prompt (MIRO and baseline at each step; every guidance
    scale and negative branch; GRPO before and every variant), and the evaluation seed is not the
    training seed. The cpu scale evaluates the curves' last point with more images than the rest."""
    study = Study(compose_study_config(scale, None, None, [f"runs_dir={tmp_path / 'runs'}"]))

    def items(step) -> tuple[str, ...]:
        args = shlex.split(step.shell().split("ARGS=", 1)[1].strip().strip('"').replace('\\"', '"'))
        wanted = ("--seed", "--per-category", "--samples-per-prompt")
        return tuple(args[args.index(flag) + 1] for flag in wanted)

    for seed in study.seeds:
        at_step = [[s for s in study.convergence_steps(seed) if s.name.endswith(f"/step{n}")]
                   for n in study.export_steps]  # fmt: skip
        for steps in (*at_step, study.guidance_steps(seed),
                      [s for s in study.grpo_steps(seed) if "/eval/" in s.name]):  # fmt: skip
            assert len(steps) >= 2 and len({items(s) for s in steps}) == 1, [s.name for s in steps]
    sizes = [{items(s) for seed in study.seeds for s in steps} for steps in at_step]
    if scale == "test":
        assert sizes == [{("0", "1", "1")}] * len(at_step)
    else:  # 103 prompts per category at the last step: the power of conf/report/cpu.yaml
        assert sizes[:-1] == [{("0", "26", "2")}] * (len(at_step) - 1) and sizes[-1] == {("0", "103", "2")}


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


# -- the study's steps: the Makefile's stages ---------------------------------------------------------


def _cfg(root: Path, *overrides: str):  # noqa: ANN202
    return compose_study_config("test", None, None, [f"runs_dir={root}", *overrides])


def expand(shown: str) -> list[str]:
    """What make runs for a step shown as ``make TARGET VAR=...`` (make -n, this interpreter as "py")."""
    args = shlex.split(shown)
    assert args[0] == "make" and args[1] in STAGES
    command = [
        "make",
        "-n",
        "--no-print-directory",
        "-f",
        str(MAKEFILE),
        args[1],
        "SETUP=",
        "PY=py",
        *args[2:],
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=environment()).stdout
    lines = [line for line in out.replace("\\\n", " ").splitlines() if line.strip()]
    assert len(lines) == 1, lines  # one command, and no set-up: SETUP= keeps .venv out of it
    return shlex.split(lines[0])


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


def test_every_step_is_a_makefile_stage_with_the_studys_settings(tmp_path: Path) -> None:
    """The study's steps call the Makefile's stage targets (the one definition of each command); what
    make runs for them carries the study's seeds, sizes, checkpoints and overrides."""
    study = Study(_cfg(tmp_path, "seeds=[3,4]", "train.steps=5", "train.export_every=2"), python="py")
    assert study.export_steps == [2, 4, 5]
    steps = {s.name: s for s in study.steps()}
    for s in steps.values():
        assert s.command[:4] == ("make", "--no-print-directory", "-f", str(MAKEFILE))
        assert s.command[5:7] == ("SETUP=", "PY=py") and s.shell().startswith(f"make {s.command[4]} ")
    ran = {name: expand(s.shell()) for name, s in steps.items()}
    assert ran["data/shapes"][:4] == ["py", "-m", "miro.shapes.cli", "shapes"]
    assert " ".join(ran["data/shapes"]).endswith(
        f"--out {tmp_path}/data/shards --n 96 --size 24 --max-objects 2 --object-size 0.3 0.5 --seed 0 "
        "--workers 1"
    )
    assert ran["data/score"][2:] == [
        "data_prep.score_shards", f"input={tmp_path}/data/shards", f"output={tmp_path}/data/scored",
        "rewards=offline", "progress=false",
    ]  # fmt: skip
    assert ran["data/bins"][2:] == [
        "data_prep.fit_bins", f"input={tmp_path}/data/scored", f"out={tmp_path}/data/bins.json", "n_bins=8"
    ]  # fmt: skip
    train = ran["seed3/train/miro"]
    assert train[:4] == ["py", "-m", "miro.train", "+experiment=shapes"]
    for override in (
        "seed=3",
        "trainer.max_steps=5",
        "++callbacks.export.every_n_steps=2",
        "model=dit_tiny",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'seed3' / 'train' / 'miro'}",
    ):
        assert override in train
    assert (
        steps["seed3/train/miro"].output == tmp_path / "seed3" / "train" / "miro" / "export" / "config.json"
    )
    assert "+experiment=shapes_baseline" in ran["seed4/train/baseline"]
    # Step 5 is not a multiple of 2: the final export stands for it.
    conv = ran["seed3/eval/convergence/baseline/step5"]
    assert conv[:3] == ["py", "-m", "miro.cli.eval"]
    assert conv[conv.index("--checkpoint") + 1] == str(tmp_path / "seed3" / "train" / "baseline" / "export")
    conv = ran["seed3/eval/convergence/miro/step4"]
    assert conv[conv.index("--checkpoint") + 1].endswith("miro/exports/step0000004")
    final = ran["seed3/eval/final"]
    assert final[final.index("--out") + 1] == str(tmp_path / "seed3" / "eval" / "final")
    assert final[final.index("--baseline") + 1].endswith("seed3/train/baseline/export")
    assert final[final.index("--best-of") + 1] == "4"
    assert final[final.index("--rewards") + 1] == "alignment,sharpness,colorfulness,compressibility"
    negative = ran["seed4/eval/negative/empty_text_rewards_low"]  # empty arguments survive make and shell
    assert negative[negative.index("--negative-prompt") + 1] == ""
    assert negative[negative.index("--negative-rewards") + 1] == ""
    scale = ran["seed4/eval/guidance/scale2"]
    assert scale[scale.index("--guidance") + 1] == "2"
    weighted = ran["seed3/grpo/chunk_weighted"]
    assert weighted[:3] == ["py", "-m", "miro.rl"]
    assert "+experiment=rl_shapes_chunk" in weighted and "module.chunk_sampling.weighted=true" in weighted
    assert f"pretrained={tmp_path / 'seed3' / 'train' / 'miro' / 'export'}" in weighted
    assert f"paths.output_dir={tmp_path / 'seed3' / 'grpo' / 'chunk_weighted'}" in weighted
    assert "module.rewards=alignment" in weighted and "iterations=1" in weighted and "seed=3" in weighted
    after = ran["seed3/eval/grpo/chunk_weighted"]
    assert after[after.index("--checkpoint") + 1].endswith("seed3/grpo/chunk_weighted/export")
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
    assert expand(resumed["seed3/grpo/step"].shell())[-1] == f"ckpt_path={last}"
    assert not any(c.startswith("ckpt_path=") for c in expand(resumed["seed3/train/miro"].shell()))
    with pytest.raises(ValueError, match="unknown studies"):
        study.steps(["nope"])
    with pytest.raises(ValueError, match="seeds repeat"):
        Study(_cfg(tmp_path, "seeds=[1,1]"))


def test_stage_calls_quote_and_refuse_what_the_recipes_cannot_take() -> None:
    args = ["--negative-prompt", "", "x=${y}"]
    command, shown = stage("eval", {"CHECKPOINT": "a/b", "EVAL_DIR": "o"}, args, python="/venv/bin/python")
    assert command[-1] == "ARGS=--negative-prompt '' 'x=$${y}'"  # make must not expand ${y}
    assert shlex.split(shown) == ["make", "eval", *command[7:]]  # the same call, without this machine's
    assert expand("make eval CHECKPOINT=a/b EVAL_DIR=o ARGS=\"--negative-prompt '' x=y\"")[-3:] == [
        "--negative-prompt", "", "x=y"
    ]  # fmt: skip
    with pytest.raises(
        ValueError,
        match="CHECKPOINT='my model': the Makefile's recipes use CHECKPOINT unquoted, so it must not ",
    ):
        stage("eval", {"CHECKPOINT": "my model"}, python="py")
    with pytest.raises(ValueError, match="unknown stage 'demo'"):
        stage("demo", {}, python="py")
    env = environment({"PATH": "/bin", "MAKEFLAGS": " -- DEMO_DIR=/x", "MAKELEVEL": "1", "MFLAGS": "-s"})
    assert env == {"PATH": "/bin"}  # an enclosing make's variables do not reach the study's stages


def test_runner_skips_what_is_done_and_names_failures(tmp_path: Path) -> None:
    study = Study(_cfg(tmp_path, "grpo.variants={}", "guidance.negatives={}", "guidance.scales=[]"))
    steps = study.steps(["data", "control"])
    calls: list[tuple[str, ...]] = []

    def make_outputs(command, log_file, env) -> int:  # noqa: ANN001
        calls.append(tuple(command))
        assert env["OMP_NUM_THREADS"] == "1" and "MAKEFLAGS" not in env
        step = next(s for s in steps if s.command == tuple(command))
        target = step.produces or step.output
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}")
        else:
            target.mkdir(parents=True, exist_ok=True)
        return 0

    environ = environment({"PATH": os.environ.get("PATH", ""), "MAKEFLAGS": "-- N=5"})
    assert run_steps(steps, study.layout, 1, make_outputs, environ=environ) == {
        "ran": len(steps),
        "skipped": 0,
    }
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


def _steps(*spec: tuple[str, tuple[str, ...]], root: Path) -> list[Step]:
    """Steps named as given, each done once its file root/<name> exists."""
    return [Step("t", name, ("cmd", name), root / name, needs=needs) for name, needs in spec]


def test_runner_runs_jobs_at_once_each_after_what_it_needs(tmp_path: Path) -> None:
    """With jobs=2 two independent steps run at the same time (a barrier that only two concurrent
    commands pass), and a step starts only once the steps it needs have written their files."""
    steps = _steps(("a", ()), ("b", ()), ("c", ("a", "b")), ("d", ("a",)), root=tmp_path)
    barrier = threading.Barrier(2, timeout=30)
    started: list[str] = []

    def executor(command, log_file, env) -> int:  # noqa: ANN001
        name = command[1]
        need = next(s.needs for s in steps if s.name == name)
        assert all((tmp_path / n).is_file() for n in need), f"{name} started before {need} were done"
        started.append(name)
        if name in ("a", "b"):
            barrier.wait()  # raises BrokenBarrierError unless a and b run at once
        (tmp_path / name).write_text("done")
        return 0

    assert run_steps(steps, Layout(tmp_path), 1, executor, jobs=2) == {"ran": 4, "skipped": 0}
    assert set(started[:2]) == {"a", "b"} and set(started[2:]) == {"c", "d"}
    log = [json.loads(line)["name"] for line in Layout(tmp_path).step_log.read_text().splitlines()]
    assert sorted(log) == ["a", "b", "c", "d"]
    # A need on a step outside the list counts as met (its study was left out of this run).
    (tmp_path / "d").unlink()
    assert run_steps(steps[3:], Layout(tmp_path), 1, executor, jobs=2) == {"ran": 1, "skipped": 0}


def test_runner_with_jobs_stops_starting_steps_after_a_failure(tmp_path: Path) -> None:
    steps = _steps(("fails", ()), ("slow", ()), ("after_fail", ("fails",)), ("later", ()), root=tmp_path)
    started: list[str] = []

    def executor(command, log_file, env) -> int:  # noqa: ANN001
        name = command[1]
        started.append(name)
        if name == "fails":
            return 5
        time.sleep(0.2)  # still running when "fails" ends: it finishes, nothing new starts
        (tmp_path / name).write_text("done")
        return 0

    with pytest.raises(StudyError, match="step fails failed with exit status 5"):
        run_steps(steps, Layout(tmp_path), 1, executor, jobs=2)
    assert started == ["fails", "slow"] and (tmp_path / "slow").is_file()
    with pytest.raises(ValueError, match="step x needs y, which comes after it"):
        run_steps(_steps(("x", ("y",)), ("y", ()), root=tmp_path), Layout(tmp_path), 1, executor)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        run_steps(steps, Layout(tmp_path), 1, executor, jobs=0)


def test_every_model_step_needs_the_steps_that_write_its_inputs(tmp_path: Path) -> None:
    """The needs the study declares: training after the data; each evaluation after the training (or
    the GRPO run) that writes its checkpoint; so jobs > 1 never reads a half-written model."""
    study = Study(_cfg(tmp_path / "runs"))
    by_name = {step.name: step for step in study.steps()}
    data = ("data/shapes", "data/score", "data/bins")
    for name, step in by_name.items():
        if step.study == "data":
            assert step.needs == ()
        elif name.startswith("seed0/train/"):
            assert step.needs == data
        elif "/grpo/" in name and "/eval/" not in name:
            assert step.needs == ("seed0/train/miro",)
        elif name.startswith("seed0/eval/grpo/") and not name.endswith("/before"):
            assert step.needs == (name.replace("/eval/grpo/", "/grpo/"),)
        elif "/convergence/baseline/" in name:
            assert step.needs == ("seed0/train/baseline",)
        elif name == "seed0/eval/final":
            assert step.needs == ("seed0/train/miro", "seed0/train/baseline")
        else:
            assert step.needs == ("seed0/train/miro",), name


# -- typed results -----------------------------------------------------------------------------------


def test_an_evaluation_is_read_once_into_typed_fields(tmp_path: Path) -> None:
    write_runs(tmp_path)
    final = read_evaluation(tmp_path / "seed1" / "eval" / "final")
    assert final is not None and final.condition == "all targets 10"
    assert final.accuracy == {"colors": 0.5, "overall": 0.5} and final.reward("colorfulness") == 5.0
    assert [(p.target, p.mean, p.accuracy) for p in final.sweeps["alignment"]] == [
        (0.0, 0.4, 0.1),
        (10.0, 0.7, 0.3),
    ]
    assert final.contrast("alignment").z == 1.0 and not final.contrast("alignment").rises
    assert final.contrast("colorfulness").rises  # the evaluator's own check, though z is not stored
    assert final.contrast("sharpness").difference is None  # not measured
    assert (
        final.best_of["alignment"][0] == pytest.approx(0.4) and final.baseline_best_of["alignment"][1] == 0.35
    )
    assert final.data_range["colorfulness"] == (9.7, 115.0) and final.guidance == 2.0
    assert read_evaluation(tmp_path / "seed9") is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    assert read_evaluation(tmp_path / "broken") is None  # treated as missing (logged)
    # A results.json with fields added later (or none of the optional ones) still reads.
    bare = parse_evaluation({"benchmark": {}, "rewards_at": {}, "new_field": 1}, tmp_path / "r.json")
    assert bare.condition is None and bare.accuracy == {} and bare.guidance is None


# -- the report from saved runs ----------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Study:
    """The saved runs of tests/evidence_runs.py under ./runs (so the report's paths are relative)."""
    monkeypatch.chdir(tmp_path)
    write_runs(Path("runs"))
    return Study(compose_study_config("test", None, None, OVERRIDES), python="python")


def _row(markdown: str, start: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(start))


def test_report_matches_the_pinned_markdown(saved: Study) -> None:
    """The whole Markdown, byte for byte, against tests/golden/evidence_report.md. After an intended
    change of the report, regenerate it with MIRO_UPDATE_GOLDEN=1 and read the diff."""
    md = write_results_report(saved, "doc/results.md", generated=GENERATED)["markdown"].read_text()
    if os.environ.get("MIRO_UPDATE_GOLDEN"):
        GOLDEN.write_text(md, encoding="utf-8")
    assert md == GOLDEN.read_text(encoding="utf-8")


def test_report_tables_hold_the_numbers(saved: Study) -> None:
    out = Path("docs") / "results.md"
    paths = write_results_report(saved, out)
    md = out.read_text()
    # Convergence: mean ± std over the two seeds at each step.
    assert _row(md, "| 2 |").startswith("| 2 | 0.350 ± 0.071 | 0.100 ± 0.000 |")
    assert _row(md, "| 4 |").startswith("| 4 | 0.600 ± 0.000 | 0.400 ± 0.141 |")
    # Speed-up at X = 0.4 (the baseline's final mean): baseline 4 steps, MIRO 2 + 0.05 / 0.25 * 2 = 2.4.
    assert (
        _row(md, "| accuracy overall | 1 |")
        == "| accuracy overall | 1 | 0.400 | 4 | 2 | 1.67x | n/a, 1.31x |"
    )
    assert _row(md, "| accuracy overall | 0.5 |").startswith(
        "| accuracy overall | 0.5 | 0.250 | 3 | 2 | 1.50x |"
    )
    assert "| colorfulness | 1 | 20.000 | 4 | never | n/a (MIRO never reaches X) |" in md
    # One evaluation's binomial error at MIRO's final 0.6 on 1 image: sqrt(0.6 * 0.4) = 0.490; the gap
    # between two 2-seed means: 0.490 * sqrt(2 / 2).
    assert (
        "near 0.60 has a binomial standard error of about 0.490, and the gap between the two 2-seed "
        "mean curves one of about 0.490;" in md
    )
    # Paired MIRO - baseline at step 4: per-seed gaps 0.3 and 0.1 (seed SE 0.1); the images' paired SE
    # sqrt(0.25^2 + 0.288675^2) / 2 = 0.191 (test_power_of_a_paired_gap_by_hand) is larger and used,
    # against the paper's 9.62 % of the baseline's 0.4 = 0.038: SE / gap 4.96, so an absence of the
    # effect may not be concluded.
    assert _row(md, "| accuracy at step 4 |") == (
        "| accuracy at step 4 | 0.200 ± 0.141 | 0.191 | 0.191 | 0.038 | 4.96 |"
    )
    assert "- accuracy at step 4: **may not** conclude a difference (+0.200, within 2 SE = 0.382)" in md
    assert "## Resolution: how small a gap each comparison can tell" in md and "1843 images per model" in md
    assert "recorded in the runs' results.json: 2)" in md
    # Push one reward is one of the negative branches compared with the model's own: seed 0 only (0.0
    # against 0.5), so no SE and nothing may be concluded.
    assert _row(md, "| push_sharpness − the model's own, accuracy |") == (
        "| push_sharpness − the model's own, accuracy | -0.500 | n/a | n/a | 0.051 | n/a |"
    )
    assert "- push_sharpness − the model's own, accuracy: -0.500 from 1 seed(s) without a usable" in md
    # Control: the alignment sweep's top point over the seeds; both seeds' z but only one above 2.
    assert _row(md, "| 10 |").startswith("| 10 | 0.600 ± 0.141 [0.500, 0.700] |")
    assert _row(md, "| alignment | 0.300 ± 0.000").endswith("| 1/2 | [0, 1] |")
    assert _row(md, "| colorfulness | 39.000 ± 1.414").endswith("| 2/2 | [9.7, 115] |")
    # Best-of-N: one MIRO sample matches the baseline's best-of-2 on both seeds.
    assert "| alignment | N = 2, 2 (per seed) |" in md
    assert _row(md, "| 1 |").startswith("| 1 | 0.450 ± 0.071 | 0.300 ± 0.000 |")
    # Guidance: seed 1 lacks scale 0; the model's own scale (2, from the negative runs) heads the table.
    assert _row(md, "| 0 | 0.200 |") == "| 0 | 0.200 | 0.200 | 5.000 |"
    assert _row(md, "| the model's own |").startswith("| the model's own | 0.525 ± 0.035 [0.500, 0.550] |")
    # GRPO deltas and the paired chunk - step difference (0.1 and 0.15).
    assert _row(md, "| step | [1, 1]").startswith(
        "| step | [1, 1] | 0.150 ± 0.071 | -0.150 ± 0.071 | 0.150 ± 0.071 |"
    )
    assert _row(md, "| chunk |").startswith("| chunk | [2] | 0.275 ± 0.106 |")
    assert "- chunk − step, `alignment` after GRPO (paired by seed): 0.125 ± 0.035 [0.100, 0.150]" in md
    # ... and image by image: differences [0.1, -0.1, 0.1, -0.1] + gap within each seed (sd 0.11547, se
    # 0.057735), over two seeds sqrt(2) * 0.057735 / 2 = 0.040825, larger than the seed SE 0.025, so used;
    # the paper's chunk gain, 1.03 % of step-level's 0.65 = 0.0067: SE / gap 6.10.
    assert _row(md, "| chunk − step, alignment |") == (
        "| chunk − step, alignment | 0.125 ± 0.035 | 0.041 | 0.041 | 0.007 | 6.10 |"
    )
    assert "- chunk_weighted − step, alignment: **may** conclude A > B (+0.100, |gap| > 2 SE = 0.082)" in md
    assert "(one training seed: the spread between seeds is unknown)" in md
    assert "(1 iterations x 2 prompts x 2 samples = 4 rollouts)" in md
    # The setting is read from the runs and the configuration, not written for one scale.
    assert "a 1.2k-parameter DiT on 24 px synthetic shapes, 4 training steps, 2 rewards" in md
    assert "samples at w = 2 and guides only alignment" in md
    # The machine table sums the successful steps per machine and study.
    assert "| AMD EPYC (AVX2), 2 cores, no GPU, torch 2.13.0+cpu | train | 10.0 |" in md
    # 30 s of data, then the 600 s training with the 90 s evaluation inside it: 630 s of wall time.
    assert (
        "Total: 12.0 minutes of command time over 3 steps (1 command(s) at a time, threads per command: 1); "
        "10.5 minutes of wall time while at least one ran." in md
    )
    # Missing runs are named and nothing crashed.
    assert "- `seed1/eval/guidance/scale0`" in md and "- `seed0/grpo/chunk_weighted`" in md
    assert "## Where we differ from the papers" in md and "make train EXPERIMENT=shapes " in md
    for name in ("convergence_accuracy.png", "convergence_rewards.png", "control.png", "best_of_n.png",
                 "guidance.png", "grpo.png"):  # fmt: skip
        assert paths[name] == out.parent / "results" / name and Image.open(paths[name]).format == "PNG"
        assert f"](results/{name})" in md
    assert not list(out.parent.rglob("*.tmp"))


def test_report_with_no_runs_lists_them_all(tmp_path: Path) -> None:
    study = Study(_cfg(tmp_path / "runs"))
    md = write_results_report(study, tmp_path / "r.md")["markdown"].read_text()
    expected = sum(s.study != "data" for s in study.steps())
    assert f"{expected} of {expected} runs are missing" in md
    assert "No convergence results yet" in md and "No final evaluations yet" in md
    assert "Not recorded: these runs were not made by `make report REPORT_SCALE=test REPORT_RUN=1`." in md
    # The study's other sizes are named, whether they were run or not (runs_dir: that scale's default).
    for scale in ("cpu", "gpu"):
        run = f"`make report REPORT_SCALE={scale} REPORT_RUN=1`"
        assert f"- `{scale}` scale (conf/report/{scale}.yaml, {run}): " in md


def test_cli_report_and_dry_run(saved: Study, capsys: pytest.CaptureFixture) -> None:
    out = Path("cli.md")
    common = ["--scale", "test", "--seeds", "0,1", "--out", str(out), *OVERRIDES[:1], *OVERRIDES[2:]]
    assert study_cli.main(common) == 0
    printed = capsys.readouterr().out
    assert f"Report: {out}" in printed and "Plot: cli/grpo.png" in printed and out.is_file()
    assert study_cli.main(["--dry-run", *common]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith("done  seed0/eval/final: make eval CHECKPOINT=runs/seed0/train/miro/export EVAL_DIR=")
        for line in listing
    )
    assert listing[0].startswith("todo  data/shapes: make data SHARDS=runs/data/shards N=96 ")
    # Every listed command is a Makefile stage that make expands to one Python command.
    assert len(listing) == 43  # 3 data steps and 20 per seed (push_sharpness among them)
    for line in listing:
        assert expand(line.split(": ", 1)[1])[:2] == ["py", "-m"]
    empty = Path("empty.md")
    empty.write_text("the committed report")
    assert study_cli.main([*common[:4], "--out", str(empty), "runs_dir=none"]) == 2
    assert "miro-study: error: no saved runs under none" in capsys.readouterr().err
    assert empty.read_text() == "the committed report"
    # Running only the data (its steps are done here) leaves the committed report alone, without error.
    data = Path("data")
    for name in ("shards", "scored"):
        (data / name).mkdir(parents=True)
    (data / "bins.json").write_text("{}")
    only_data = [*common[:4], "--out", str(empty), "--run", "--studies", "data", "runs_dir=none",
                 f"data.dir={data}"]  # fmt: skip
    assert study_cli.main(only_data) == 0
    assert "No model runs under none yet, so empty.md is left as it is" in capsys.readouterr().out
    assert empty.read_text() == "the committed report"
    assert study_cli.main(["--scale", "nope"]) == 2
    assert "miro-study: error:" in capsys.readouterr().err
    assert study_cli.main(["--scale", "test", "--seeds", "1,1", "runs_dir=runs"]) == 2
    assert "seeds repeat" in capsys.readouterr().err
    # The core's miro-eval no longer carries the study; it says where it went.
    assert eval_cli.main(["report", "--scale", "test"]) == 2
    assert "make report" in capsys.readouterr().err


def test_make_report_runs_the_study_with_its_variables() -> None:
    """`make report REPORT_SCALE=... REPORT_SEEDS=... REPORT_RUN=1 ARGS=...` is the study's entry."""

    def made(*variables: str) -> list[str]:
        command = ["make", "-n", "--no-print-directory", "-o", "setup", "-o", ".venv/.installed", "report"]
        run = subprocess.run(
            [*command, "PY=py", *variables],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env=environment(),
        )
        return shlex.split(run.stdout.replace("\\\n", " "))

    study = ["py", "-m", "miro.shapes.study"]
    assert made("REPORT_SCALE=test", "REPORT_SEEDS=0,1", "REPORT_RUN=1", "ARGS=--dry-run train.steps=2") == [
        *study, "--scale", "test", "--seeds", "0,1", "--run", "--dry-run", "train.steps=2"
    ]  # fmt: skip
    assert made("REPORT_SCALE=gpu") == [*study, "--scale", "gpu"]


@pytest.mark.slow
def test_the_smoke_scale_runs_end_to_end_through_the_makefile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`make report REPORT_SCALE=test REPORT_RUN=1` in a temporary runs_dir: every step runs through its
    Makefile stage (tiny model, a few minutes on 2 cores) and the report finds every run."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MAKEFLAGS", "-- N=5")  # an enclosing make's variables must not reach the stages
    runs = tmp_path / "runs"
    assert study_cli.main(["--scale", "test", "--run", f"runs_dir={runs}"]) == 0
    printed = capsys.readouterr().out
    assert (
        "[23/23] running seed0/eval/grpo/chunk_weighted" in printed
        and f"Report: {runs}/results.md" in printed
    )
    md = (runs / "results.md").read_text()
    assert "None: every run of the study is present." in md and "No convergence results yet" not in md
    assert re.search(r"cores, (no GPU|GPU [^|]+), torch [^|]+ \| train \| [0-9.]+ \|", md)  # machine table
    assert (runs / "data" / "shards" / "00000.tar").is_file()
    assert "--n 96 " in (runs / "logs" / "data__shapes.log").read_text()  # the study's sizes, not MAKEFLAGS'


def test_a_killed_run_resumes_but_the_report_lists_first_run_commands(tmp_path: Path) -> None:
    """A training killed after a checkpoint continues from it (ckpt_path=...last.ckpt), but the report's
    "How to reproduce" lists the commands as a new user runs them, without that machine's checkpoint."""
    study = Study(_cfg(tmp_path / "runs"))
    last = study.layout.train_run(0, "miro") / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    train = next(s for s in study.steps() if s.name == "seed0/train/miro")
    assert f"ckpt_path={last}" in train.shell()
    md = write_results_report(study, tmp_path / "r.md")["markdown"].read_text()
    assert "make train EXPERIMENT=shapes " in md and "ckpt_path=" not in md


def test_packed_runs_regenerate_the_same_report_in_a_fresh_clone(saved: Study, capsys) -> None:  # noqa: ANN001
    """make report ARGS=--pack packs only what the report read (no weights, logs or checkpoints); where
    the runs directory is empty (a fresh clone) make report unpacks the archive and writes the same
    report, the parameter count included (from the manifest: the weights are not packed)."""
    archive = "packed/runs.tar.gz"
    common = ["--scale", "test", "--seeds", "0,1", *OVERRIDES[:1], *OVERRIDES[2:], f"archive={archive}"]
    assert study_cli.main([*common, "--out", "measured/results.md", "--pack"]) == 0
    assert f"Saved runs packed (commit it beside the report): {archive}" in capsys.readouterr().out
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "pack.json" in names and "seed0/eval/final/results.json" in names and "steps.jsonl" in names
    assert {PurePosixPath(n).name for n in names} <= PACKED_NAMES and len(names) > 30
    assert not any(n.endswith((".safetensors", ".ckpt", ".log")) for n in names)
    Path("runs").rename("runs_measured")  # a fresh clone: no runs, the committed archive
    assert study_cli.main([*common, "--out", "fresh/results.md"]) == 0
    assert f"from {archive} into runs" in capsys.readouterr().out

    def body(path: str) -> list[str]:
        return [line for line in Path(path).read_text().splitlines() if not line.startswith("Generated ")]

    assert body("fresh/results.md") == body("measured/results.md")
    assert "1.2k-parameter DiT" in Path("fresh/results.md").read_text()
    with pytest.raises(ArchiveError, match="already holds runs"):
        unpack(archive, "runs")


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("../outside/results.json", tarfile.REGTYPE, "is not a packed run file"),
        ("seed0/model.py", tarfile.REGTYPE, "is not a packed run file"),
        ("seed0/results.json", tarfile.SYMTYPE, "is not a packed run file"),
    ],
)
def test_an_archive_that_is_not_packed_runs_writes_nothing(
    tmp_path: Path, name: str, kind: bytes, message: str
) -> None:
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in (("pack.json", b"{}"), (name, b"{}")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            if member == name:
                info.type = kind
                info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
                info.size = 0 if kind == tarfile.SYMTYPE else len(data)
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    with pytest.raises(ArchiveError, match=message):
        unpack(archive, tmp_path / "runs")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outside").exists()
    (tmp_path / "broken.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(ArchiveError, match="cannot read it as the study's packed runs"):
        unpack(tmp_path / "broken.tar.gz", tmp_path / "runs")


def test_a_damaged_manifest_leaves_the_parameter_count_unknown(tmp_path: Path) -> None:
    from miro.shapes.study.results import packed_parameters

    assert packed_parameters(tmp_path) is None  # runs not unpacked from an archive
    (tmp_path / "pack.json").write_text('{"parameters": 2100000}')
    assert packed_parameters(tmp_path) == 2100000
    for bad in ("not json", "[1, 2]", '{"parameters": "many"}'):
        (tmp_path / "pack.json").write_text(bad)
        assert packed_parameters(tmp_path) is None
