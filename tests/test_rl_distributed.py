"""Multi-process GRPO: two gloo processes on the CPU (Lightning DDP, ``trainer=ddp_cpu``) train on
different prompts per rank and end where one process with the same global batch ends.

What must be equal, and why: every rank gets the iteration's global prompt list and rolls out its own
contiguous slice, with noise drawn per prompt from (seed, iteration, prompt index), so the union of the
ranks' prompts and every sample's reward are the 1-process run's. Advantages are computed over the
gathered rewards, each rank trains on its half of the global minibatch and DDP averages the gradients,
and chunk choices come from a generator shared by the ranks, so each update is the 1-process update.
Only float rounding differs (batches of different sizes through the network); Adam turns the rounding
of gradients that are zero in exact arithmetic (an attention key's bias) into steps of up to lr, so a
few elements may differ by a fraction of lr while all others agree to 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rl_ddp_entry import record_prompts
from safetensors.torch import load_file
from tiny_models import export_tiny_model

from miro.config import compose_config
from miro.rl.__main__ import build

ENTRY = Path(__file__).with_name("rl_ddp_entry.py")
LR = 1e-2


def overrides(export: Path, out: Path, iterations: int) -> list[str]:
    return [
        "+experiment=rl_shapes_chunk",
        f"pretrained={export}",
        f"paths.output_dir={out}",
        "logger=none",
        f"iterations={iterations}",
        "checkpoint_every=1",
        "data.prompts_per_iteration=2",
        "data.pool.per_category=4",
        "data.exclude_eval=false",
        "module.group_size=4",
        "module.rollout_batch_size=4",  # one group per network call, on one process or two
        "module.train_batch_size=8",  # the global minibatch: 4 samples per rank
        "module.steps=4",
        "module.chunking.num_chunks=2",
        "module.chunk_sampling.count=1",
        "module.chunk_sampling.weighted=true",  # chunk choices from the gathered rollout L1rel
        "module.beta=0.04",
        "module.rewards=test_brightness",
        "module.monitor_rewards=[]",
        f"module.lr={LR}",
        "module.precision=fp32",
        "module.grid_every=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


def launch_two_processes(args: list[str], log_prefix: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RL_PROMPT_LOG": str(log_prefix)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ENTRY.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(ENTRY), *args, "trainer=ddp_cpu"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "All distributed processes registered. Starting with 2 processes" in output
    return output


def read_log(path: Path) -> dict[int, dict]:
    """{iteration: record}; a resumed run's repeated iterations keep their last record."""
    return {r["iteration"]: r for r in map(json.loads, path.read_text().splitlines())}


def one_process_run(export: Path, out: Path, iterations: int) -> tuple[dict[int, dict], dict]:
    cfg = compose_config("rl", overrides(export, out, iterations))
    with record_prompts(out / "prompts"):
        module, data, trainer = build(cfg)
        trainer.fit(module, datamodule=data)
    return read_log(out / "prompts.rank0"), module.policy.state_dict()


def assert_same_runs(one: dict[int, dict], ranks: list[dict[int, dict]], iterations: int) -> None:
    for it in range(iterations):
        r0, r1 = ranks[0][it], ranks[1][it]
        assert r0["prompts"] != r1["prompts"], it  # different prompts per rank...
        assert (r0["first"], r1["first"]) == (0, 1)
        assert r0["prompts"] + r1["prompts"] == one[it]["prompts"]  # ...which together are one process's
        # the same samples: equal rewards at every iteration, the later ones after equal updates
        torch.testing.assert_close(
            torch.tensor(r0["reward"] + r1["reward"]), torch.tensor(one[it]["reward"]), rtol=0, atol=1e-5
        )


def assert_same_weights(one: dict, exported: dict, start: dict) -> None:
    flat = lambda sd: torch.cat([sd[k].flatten().float() for k in sorted(one)])  # noqa: E731
    a, b, s = flat(one), flat(exported), flat(start)
    assert (a - s).abs().max() > LR  # it trained
    diff = (a - b).abs()
    # Without the gradient all-reduce each rank would follow its own half: most elements off by ~lr.
    assert float((diff > 1e-5).float().mean()) < 0.01, diff
    assert float(diff.median()) < 1e-6


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("rl_ddp_export"), None)


def model_weights(state: dict) -> dict:
    """The policy's state dict keyed as the export's model file."""
    return {f"model.{k}": v for k, v in state.items()}


def test_two_processes_train_on_different_prompts_and_match_one_process(export: Path, tmp_path: Path) -> None:
    one, state = one_process_run(export, tmp_path / "one", iterations=2)
    output = launch_two_processes(overrides(export, tmp_path / "two", 2), tmp_path / "two" / "prompts")
    assert output.count("Exported model:") == 1  # rank 0 exports, once
    ranks = [read_log(tmp_path / "two" / f"prompts.rank{r}") for r in (0, 1)]
    assert_same_runs(one, ranks, 2)
    exported = load_file(tmp_path / "two" / "export" / "model.safetensors")
    assert_same_weights(model_weights(state), exported, load_file(export / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_resume_exactly(export: Path, tmp_path: Path) -> None:
    one, state = one_process_run(export, tmp_path / "one", iterations=2)
    two = tmp_path / "two"
    launch_two_processes(overrides(export, two, 1), two / "prompts")
    launch_two_processes(
        [*overrides(export, two, 2), f"ckpt_path={two / 'checkpoints' / 'last.ckpt'}"], two / "prompts"
    )
    ranks = [read_log(two / f"prompts.rank{r}") for r in (0, 1)]
    assert_same_runs(one, ranks, 2)
    exported = load_file(two / "export" / "model.safetensors")
    assert_same_weights(model_weights(state), exported, load_file(export / "model.safetensors"))
