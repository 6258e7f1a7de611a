"""A SIGTERM'd training or GRPO run saves a resumable checkpoint, prints the command that resumes, exits
143 and leaves no export (issue 17, item 6); the printed command then finishes the run, and a resumed
training ends with exactly the weights of an uninterrupted one (item 8).

Real subprocesses: the signal is sent once the run's first periodic checkpoint exists (a step marker,
polled), so it always lands mid-run, whatever the machine's speed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import export_tiny_model

from miro.lit.interrupt import INTERRUPTED_EXIT_CODE, MARKER
from miro.pretrained import WEIGHTS, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
TRAIN_STEPS = 40
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "threads=1"]


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                         "OMP_NUM_THREADS": "1"}


def _train_args(data: Path, out: Path) -> list[str]:
    return [
        f"paths.data_dir={data}", f"paths.output_dir={out}", "model=dit_tiny", "data.image_size=24",
        "data.batch_size=8", f"trainer.max_steps={TRAIN_STEPS}", "module.warmup_steps=2",
        "callbacks.checkpoint.every_n_train_steps=2", "~callbacks.sample_grid", *QUIET,
    ]


def _terminate_when(marker: Path, command: list[str], log: Path) -> subprocess.CompletedProcess:
    """Start ``command``, send SIGTERM as soon as ``marker`` exists, wait for the process to end."""
    with open(log, "w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=240)
    return subprocess.CompletedProcess(command, rc, "", log.read_text())


def _resume(stderr: str) -> list[str]:
    """The printed resume command, run with this interpreter."""
    line = next(line for line in stderr.splitlines() if line.startswith("resume with: "))
    command = shlex.split(line.removeprefix("resume with: "))
    assert command[:3] in (["python", "-m", "miro.train"], ["python", "-m", "miro.rl"]), line
    return [sys.executable, *command[1:]]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def test_sigtermed_training_resumes_to_the_uninterrupted_weights(scored_shapes: Path, tmp_path: Path) -> None:
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-m", "miro.train", *_train_args(scored_shapes, killed)]
    stopped = _terminate_when(killed / "checkpoints" / "step0000002.ckpt", command, tmp_path / "killed.log")

    assert stopped.returncode == INTERRUPTED_EXIT_CODE, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert not (killed / "export").exists()  # nothing for `make demo` to sample from
    checkpoint = killed / "checkpoints" / "last.ckpt"
    step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert 2 <= step < TRAIN_STEPS, step
    assert f"stopped by SIGTERM at step {step}" in stopped.stderr
    resume = _resume(stopped.stderr)
    assert resume[-1] == f"ckpt_path={checkpoint}"
    assert (killed / MARKER).read_text().splitlines()[-1].endswith(f"ckpt_path={checkpoint}")

    resumed = _run(resume)
    assert resumed.returncode == 0, resumed.stderr
    assert not (killed / MARKER).exists()
    uninterrupted = _run([sys.executable, "-m", "miro.train", *_train_args(scored_shapes, whole)])
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    # Bit for bit: the exported EMA weights and the raw weights, optimiser moments and step of last.ckpt.
    a, b = load_file(str(whole / "export" / WEIGHTS)), load_file(str(killed / "export" / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    cb = torch.load(checkpoint, weights_only=True)
    assert ca["global_step"] == cb["global_step"] == TRAIN_STEPS
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    moments_a, moments_b = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert moments_a.keys() == moments_b.keys()
    for key in moments_a:
        assert all(torch.equal(moments_a[key][m], moments_b[key][m]) for m in ("exp_avg", "exp_avg_sq"))


@pytest.mark.slow  # three interpreter starts; the training test above covers the shared mechanism
def test_sigtermed_grpo_saves_resumes_and_exports_only_when_done(tmp_path: Path) -> None:
    export = export_tiny_model(tmp_path / "model", None)
    out, iterations = tmp_path / "rl", 30
    command = [
        sys.executable, "-m", "miro.rl", "+experiment=rl_shapes_step", f"pretrained={export}",
        f"paths.output_dir={out}", f"iterations={iterations}", "checkpoint_every=1",
        "data.prompts_per_iteration=2", "module.group_size=2", "module.rollout_batch_size=4",
        "module.train_batch_size=4", "module.steps=2", "module.rewards=colorfulness",
        "module.monitor_rewards=[]", "module.grid_every=0", *QUIET,
    ]
    stopped = _terminate_when(out / "checkpoints" / "update000001.ckpt", command, tmp_path / "rl.log")

    assert stopped.returncode == INTERRUPTED_EXIT_CODE, stopped.stderr
    assert "Traceback" not in stopped.stderr and not (out / "export").exists()
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    done = int(state["state_dict"]["iterations_done"])
    assert 1 <= done < iterations

    resumed = _run(_resume(stopped.stderr))
    assert resumed.returncode == 0, resumed.stderr
    assert load_pretrained(out / "export").config["grpo"]["iterations"] == iterations
