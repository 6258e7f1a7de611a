"""Every bad input listed in docs/reliability.md, run through the command's real entry point.

Each row: the command, its arguments (``{model}`` a tiny export, ``{tmp}`` the test's directory, which
holds ``afile``, ``empty.txt``, ``bad.jsonl`` (a bad second line), ``prompts.jsonl``, ``prompts.csv``,
``corrupt`` (an export with a damaged safetensors), ``garbage.ckpt`` and ``pickle.ckpt``, a checkpoint
whose unpickling would write ``{tmp}/pwned``) and the text the error line
must hold. Every one must exit 2, print no traceback, end stderr with one ``PROG: error: ...`` line naming
the problem, and write nothing: no output directory, no run directory, no payload run.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import sys
from pathlib import Path

import lightning  # noqa: F401  (imported before capture: its log handlers keep a stream that stays open)
import pytest
import torch
from tiny_models import export_tiny_model

from miro.cli import eval as eval_cli
from miro.cli import generate as generate_cli
from miro.cli import rewards as rewards_cli
from miro.pretrained import WEIGHTS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
NO_CUDA = torch.version.cuda is None
NO_MPS = not torch.backends.mps.is_available()

G = ["--checkpoint", "{model}", "--prompt", "a red circle", "--out", "{tmp}/out"]
E = ["--checkpoint", "{model}", "--out", "{tmp}/out"]
T = ["paths.data_dir={data}", "paths.output_dir={tmp}/run", "model=dit_tiny", "data.image_size=24"]
R = ["+experiment=rl_shapes_step", "pretrained={model}", "paths.output_dir={tmp}/run"]
B = ["--benchmark", "rewards", "--prompts", "{tmp}/prompts.csv", "--rewards", "sharpness"]

# id: (command, arguments, what the error line says, condition to run)
CASES: dict[str, tuple[str, list[str], str, bool]] = {
    # miro-generate
    "generate-guidance-nan": (
        "miro-generate", [*G, "--guidance", "nan"], "--guidance must be a finite", True
    ),
    "generate-guidance-inf": (
        "miro-generate", [*G, "--guidance", "inf"], "--guidance must be a finite", True
    ),
    "generate-guidance-negative": ("miro-generate", [*G, "--guidance", "-1"], "got -1.0", True),
    "generate-out-is-a-file": (
        "miro-generate", [*G[:-1], "{tmp}/afile"], "afile exists and is not a directory", True
    ),
    "generate-device-cuda": ("miro-generate", [*G, "--device", "cuda"], "has no CUDA support", NO_CUDA),
    "generate-device-mps": ("miro-generate", [*G, "--device", "mps"], "no MPS", NO_MPS),
    "generate-device-unknown": (
        "miro-generate", [*G, "--device", "banana"], "'banana' is not a device", True
    ),
    "generate-device-unsupported": (
        "miro-generate", [*G, "--device", "meta"], "'meta' is not supported", True
    ),
    "generate-reward-unknown": ("miro-generate", [*G, "--rewards", "foo=5"], "unknown reward 'foo'", True),
    "generate-reward-out-of-range": (
        "miro-generate", [*G, "--rewards", "alignment=11"], "must be between 0 and 10, got 11", True
    ),
    "generate-reward-not-a-number": (
        "miro-generate", [*G, "--rewards", "alignment=x"], "is not a number: 'x'", True
    ),
    "generate-reward-not-in-model": (
        "miro-generate", [*G, "--rewards", "aesthetic=5"], "unknown reward 'aesthetic' for this model", True
    ),
    "generate-reward-malformed": ("miro-generate", [*G, "--rewards", "alignment"], "malformed reward", True),
    "generate-negative-reward-unknown": (
        "miro-generate", [*G, "--negative-rewards", "foo=1"], "unknown reward 'foo'", True
    ),
    "generate-checkpoint-missing": (
        "miro-generate", ["--checkpoint", "{tmp}/nothing", *G[2:]], "no such model directory", True
    ),
    "generate-checkpoint-not-a-model": (
        "miro-generate", ["--checkpoint", "{tmp}", *G[2:]], "config.json missing", True
    ),
    "generate-checkpoint-corrupt-weights": (
        "miro-generate", ["--checkpoint", "{tmp}/corrupt", *G[2:]], "not a readable safetensors file", True
    ),
    "generate-prompts-file-missing": (
        "miro-generate", [*G[:2], "--prompts-file", "{tmp}/none.txt", *G[4:]], "does not exist", True
    ),
    "generate-prompts-file-empty": (
        "miro-generate", [*G[:2], "--prompts-file", "{tmp}/empty.txt", *G[4:]], "holds no prompts", True
    ),
    "generate-empty-prompt": ("miro-generate", [*G[:2], "--prompt", " ", *G[4:]], "no prompts given", True),
    "generate-n-zero": ("miro-generate", [*G, "--n", "0"], "--n must be at least 1", True),
    "generate-steps-zero": ("miro-generate", [*G, "--steps", "0"], "--steps must be at least 1", True),
    "generate-batch-size-zero": ("miro-generate", [*G, "--batch-size", "0"], "--batch-size must be", True),
    "generate-threads-zero": ("miro-generate", [*G, "--threads", "0"], "argument --threads", True),
    "generate-steps-not-a-number": ("miro-generate", [*G, "--steps", "x"], "argument --steps", True),
    "generate-push-unknown-before-loading": (
        "miro-generate", ["--checkpoint", "{tmp}/corrupt", *G[2:], "--push", "nope"], "unknown reward 'nope'",
        True,
    ),
    # miro-eval
    "eval-guidance-nan": ("miro-eval", [*E, "--guidance", "nan"], "--guidance must be a finite", True),
    "eval-out-is-a-file": ("miro-eval", [*E[:-1], "{tmp}/afile"], "exists and is not a directory", True),
    "eval-device-cuda": ("miro-eval", [*E, "--device", "cuda"], "has no CUDA support", NO_CUDA),
    "eval-reward-unknown": ("miro-eval", [*E, "--rewards", "foo"], "unknown reward 'foo'", True),
    "eval-negative-reward-bad": (
        "miro-eval", [*E, "--negative-rewards", "alignment=x"], "not a number", True
    ),
    "eval-checkpoint-missing": (
        "miro-eval", ["--checkpoint", "{tmp}/nothing", *E[2:]], "no such model", True
    ),
    "eval-checkpoint-corrupt-weights": (
        "miro-eval", ["--checkpoint", "{tmp}/corrupt", *E[2:]], "not a readable safetensors file", True
    ),
    "eval-baseline-missing": ("miro-eval", [*E, "--baseline", "{tmp}/nothing"], "no such model", True),
    "eval-sweep-levels-bad": ("miro-eval", [*E, "--sweep-levels", "0,x"], "--sweep-levels must be", True),
    "eval-per-category-zero": ("miro-eval", [*E, "--per-category", "0"], "per_category must be", True),
    "eval-steps-zero": ("miro-eval", [*E, "--steps", "0"], "--steps must be at least 1", True),
    "eval-threads-zero": ("miro-eval", [*E, "--threads", "0"], "argument --threads", True),
    "eval-benchmark-unknown": ("miro-eval", [*E, "--benchmark", "nope"], "unknown benchmark 'nope'", True),
    "eval-geneval-no-prompts": ("miro-eval", [*E, "--benchmark", "geneval"], "needs prompts", True),
    "eval-prompts-missing": (
        "miro-eval", [*E, "--benchmark", "geneval", "--prompts", "{tmp}/nothing.jsonl"], "does not exist",
        True,
    ),
    "eval-geneval-bad-json-line": (
        "miro-eval", [*E, "--benchmark", "geneval", "--prompts", "{tmp}/bad.jsonl"],
        "bad.jsonl:2: not a JSON object", True
    ),
    "eval-prompts-not-for-shapes": (
        "miro-eval", [*E, "--prompts", "{tmp}/prompts.csv"], "--prompts does not apply to the shapes", True
    ),
    "eval-rewards-unknown-column": (
        "miro-eval", [*E, *B, "--category-column", "Kind"], "no category column 'Kind'", True
    ),
    "eval-rewards-none": ("miro-eval", [*E, *B[:-2]], "name them with --rewards", True),
    "eval-rewards-unknown-reward": ("miro-eval", [*E, *B[:-1], "foo"], "unknown reward 'foo'", True),
    "eval-geneval-summary-bad-line": (
        "miro-eval geneval-summary", ["{tmp}/bad.jsonl"], "bad.jsonl:2: not a JSON object", True
    ),
    "eval-geneval-summary-missing": (
        "miro-eval geneval-summary", ["{tmp}/nothing.jsonl"], "nothing.jsonl does not exist", True
    ),
    "eval-geneval-summary-not-results": (
        "miro-eval geneval-summary", ["{tmp}/prompts.jsonl"], "'correct' must be true or false", True
    ),
    # python -m miro.train
    "train-threads-zero": (
        "miro.train", [*T, "threads=0"], "threads must be a positive integer or auto", True
    ),
    "train-batch-size-zero": ("miro.train", [*T, "data.batch_size=0"], "data.batch_size must be", True),
    "train-batch-size-negative": ("miro.train", [*T, "data.batch_size=-4"], "got -4", True),
    "train-max-steps-zero": ("miro.train", [*T, "trainer.max_steps=0"], "trainer.max_steps must be", True),
    "train-gpu-trainer-on-cpu": ("miro.train", [*T, "trainer=gpu"], "trainer.accelerator 'gpu'", NO_CUDA),
    "train-ckpt-missing": ("miro.train", [*T, "ckpt_path={tmp}/nothing.ckpt"], "does not exist", True),
    "train-ckpt-is-a-directory": ("miro.train", [*T, "ckpt_path={tmp}"], "is a directory", True),
    "train-ckpt-garbage": (
        "miro.train", [*T, "ckpt_path={tmp}/garbage.ckpt"], "not a loadable checkpoint", True
    ),
    "train-ckpt-pickle-payload": (
        "miro.train", [*T, "ckpt_path={tmp}/pickle.ckpt"], "refused, it holds pickled objects (io.open)", True
    ),
    "train-ckpt-not-lightning": (
        "miro.train", [*T, "ckpt_path={tmp}/tensors.ckpt"], "not a Lightning training checkpoint", True
    ),
    "train-data-missing": (
        "miro.train", [*T[1:], "paths.data_dir={tmp}/nothing"], "bins file not found", True
    ),
    # python -m miro.rl
    "rl-exclude-eval-without-benchmark": (
        "miro.rl", [*R, "~benchmark"], "data.exclude_eval needs the benchmark the model is evaluated on", True
    ),
    "rl-threads-zero": ("miro.rl", [*R, "threads=0"], "threads must be a positive integer or auto", True),
    "rl-reward-unknown-before-loading": (
        "miro.rl", [*R[:1], "pretrained={tmp}/nothing", *R[2:], "module.rewards=foo"], "unknown reward 'foo'",
        True,
    ),
    "rl-reward-weight-bad": (
        "miro.rl", [*R, "module.rewards='alignment=x'"], "module.rewards: reward weight", True
    ),
    "rl-monitor-reward-unknown": (
        "miro.rl", [*R, "module.monitor_rewards=[nope]"], "unknown reward 'nope'", True
    ),
    "rl-iterations-zero": ("miro.rl", [*R, "iterations=0"], "iterations must be an integer >= 1", True),
    "rl-group-size-zero": ("miro.rl", [*R, "module.group_size=0"], "module.group_size must be", True),
    "rl-prompts-zero": ("miro.rl", [*R, "data.prompts_per_iteration=0"], "data.prompts_per_iteration", True),
    "rl-gpu-trainer-on-cpu": (
        "miro.rl", [*R, "trainer.accelerator=gpu"], "trainer.accelerator 'gpu'", NO_CUDA
    ),
    "rl-pretrained-missing": ("miro.rl", [*R[:1], "pretrained={tmp}/nothing", *R[2:]], "no such model", True),
    "rl-ckpt-pickle-payload": (
        "miro.rl", [*R, "ckpt_path={tmp}/pickle.ckpt"], "refused, it holds pickled", True
    ),
    # the rollouts' request is checked on config.json alone: the damaged weights are never read
    "rl-target-unknown-before-loading": (
        "miro.rl", [*R[:1], "pretrained={tmp}/corrupt", *R[2:], "module.targets='nope=3'"],
        "unknown reward 'nope' for this model", True,
    ),
    "rl-push-with-negative-targets": (
        "miro.rl", [*R, "module.push=sharpness", "module.negative_targets='colorfulness=1'"],
        "either push or negative rewards", True,
    ),
    "rl-guidance-negative": ("miro.rl", [*R, "module.guidance=-1"], "module.guidance must be a finite", True),
    "rl-guidance-not-a-number": (
        "miro.rl", [*R, "module.guidance=high"], "module.guidance must be a number", True
    ),
    # miro-rewards
    "rewards-download-unknown": ("miro-rewards", ["download", "foo"], "unknown reward 'foo'", True),
    "rewards-unknown-command": ("miro-rewards", ["fetch"], "invalid choice: 'fetch'", True),
}

MAINS = {"miro-generate": generate_cli.main, "miro-eval": eval_cli.main, "miro-rewards": rewards_cli.main,
         "miro-eval geneval-summary": lambda argv: eval_cli.main(["geneval-summary", *argv])}


class _Payload:
    """Unpickling this calls ``open(path, 'w')``: what a hostile checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("bad_inputs_model"), None, benchmark="shapes")


@pytest.fixture
def tmp(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    (tmp_path / "bad.jsonl").write_text('{"tag": "colors", "prompt": "a red car"}\n{"tag": oops}\n')
    (tmp_path / "prompts.jsonl").write_text('{"tag": "colors", "prompt": "a red car"}\n')
    (tmp_path / "prompts.csv").write_text("Prompt,Category\na cat,animals\n")
    corrupt = Path(shutil.copytree(model, tmp_path / "corrupt"))
    (corrupt / WEIGHTS).write_bytes(b"\x00" * 64)
    (tmp_path / "garbage.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    torch.save({"state_dict": _Payload(str(tmp_path / "pwned")), "global_step": 1}, tmp_path / "pickle.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "tensors.ckpt")
    return tmp_path


def _run_hydra(command: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    module = importlib.import_module("miro.rl.__main__" if command == "miro.rl" else command)
    monkeypatch.setattr(sys, "argv", [command, *argv])
    try:
        with pytest.raises(SystemExit) as exit_info:
            module.main()
    finally:  # Hydra's log handlers hold this test's captured stderr, which closes with the test
        logging.getLogger().handlers.clear()
    return int(exit_info.value.code)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(
    case: str, tmp: Path, model: Path, scored_shapes: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    command, args, expected, applies = CASES[case]
    if not applies:
        pytest.skip("this machine has the device the case says is missing")
    before = sorted(p.name for p in tmp.iterdir())
    argv = [a.format(model=model, tmp=tmp, data=scored_shapes) for a in args]
    if command in MAINS:
        try:
            code = MAINS[command](argv)
        except SystemExit as stop:  # argparse's own errors
            code = int(stop.code)
    else:
        code = _run_hydra(command, argv, monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{command}: error: ") and expected in last, last
    assert sorted(p.name for p in tmp.iterdir()) == before  # no out/, no run/, no pwned
    assert model.is_dir() and not (model / "out").exists()


def test_unknown_config_option_is_hydras_own_message(scored_shapes: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Composition fails inside ``@hydra.main``, before the command runs: Hydra's own report (exit 1,
    the options it has, no traceback), which already names the problem."""
    argv = [a.format(tmp=tmp_path, data=scored_shapes) for a in T] + ["model=dit_huge"]
    assert _run_hydra("miro.train", argv, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "Could not find 'model/dit_huge'" in err and "dit_tiny" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_every_case_is_in_the_reliability_table() -> None:
    """docs/reliability.md lists exactly these cases, so the table and the tests cannot drift apart."""
    documented = set(re.findall(r"`test_bad_input\[([a-z0-9-]+)\]`", DOCS.read_text(encoding="utf-8")))
    assert documented == set(CASES)
