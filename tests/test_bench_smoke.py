"""The GPU benchmark scripts run end to end on CPU at tiny sizes, so they cannot break unnoticed before
anyone has a GPU to publish from (their numbers here are not GPU numbers; only that they run and count)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / ".bench" / "miro_t2i"
sys.path.insert(0, str(REPO / "bench"))

import bench_train_gpu  # noqa: E402


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not (REFERENCE / "miro").is_dir(), reason="make test installs miro-t2i into .bench/")
def test_bench_train_gpu_runs_on_cpu_with_the_reference(tmp_path: Path) -> None:
    proc = run(
        "bench/bench_train_gpu.py", "--device", "cpu", "--sizes", "tiny", "--batch", "2", "--steps", "1",
        "--warmup", "0", "--compile", "off", "--gen-batch", "1", "--reference-dir", str(REFERENCE),
        "--reference-network", "tiny", "--peak-tflops", "0.01", "--out", str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "train_gpu.json").read_text())
    train = {r["network"]: r for r in result["train"]}
    assert set(train) == {"DiT-tiny", "miro-t2i RIN (reference)"}, result["train"]
    assert result["precision"]["used"] in ("fp32", "bf16") and result["device"] == "cpu"
    for row in train.values():
        assert "error" not in row and row["samples_per_s"] > 0
        assert "achieved_tflops_unrounded" not in row
        # MFU from the unrounded throughput (against a CPU-sized peak): rounding TFLOP/s first made it 0
        assert row["mfu_percent"] > 0
    dit, ref = train["DiT-tiny"], train["miro-t2i RIN (reference)"]
    # counted over a whole step as it runs: the DiT's forward + backward is at most 3 forwards (the
    # backward skips the inputs' gradients); the reference adds a whole forward for self-conditioning
    # (it runs on the whole batch, not on the 90 % it keeps, so 1.0 forwards more, not 0.9)
    dit_ratio = dit["train_gflop_per_image"] / dit["forward_gflop_per_image"]
    ref_ratio = ref["train_gflop_per_image"] / ref["forward_gflop_per_image"]
    assert 2.5 < dit_ratio <= 3.0
    assert ref_ratio - dit_ratio > 0.8, (ref_ratio, dit_ratio)
    assert len(result["generate"]) == 2 and all("error" not in g for g in result["generate"])
    assert "CPU kind" in (tmp_path / "train_gpu.md").read_text()


def test_bench_train_gpu_refuses_cuda_it_does_not_have(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    proc = run("bench/bench_train_gpu.py", "--sizes", "tiny", "--out", str(tmp_path))
    assert proc.returncode == 2 and "needs CUDA" in proc.stderr and "Traceback" not in proc.stderr


def test_mfu_uses_the_unrounded_throughput() -> None:
    row = {"network": "x", "achieved_tflops": 0.0, "achieved_tflops_unrounded": 0.0494}
    (out,) = bench_train_gpu.with_mfu([row], peak_tflops=989.0)
    assert out["mfu_percent"] == pytest.approx(100 * 0.0494 / 989.0, abs=1e-3)
    assert "achieved_tflops_unrounded" not in out


def test_a_compiled_row_without_graphs_is_an_error() -> None:
    import torch

    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match="compiled no graph"):
        bench_train_gpu.compile_record(True)
    assert bench_train_gpu.compile_record(False) == {"compiled_graphs": 0}


def test_each_compiled_configuration_compiles_after_a_reset() -> None:
    """Nine models sharing one forward: without the reset dynamo's recompile limit (8) would make the
    later ones eager; with it every configuration reports its own compiled graphs."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x).relu()

    for width in range(2, 11):
        model = bench_train_gpu.compiled(Net(width), True)
        model(torch.randn(1, width))
        assert bench_train_gpu.compile_record(True)["compiled_graphs"] >= 1


def test_bench_rewards_tiny_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "rewards.json"
    proc = run("bench/bench_rewards.py", "--tiny", "--device", "cpu", "--batch-size", "2",
               "--vqa-batch-size", "1", "--image-size", "64", "--warmup", "0", "--iters", "1",
               "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {r["reward"].split(" ")[0] for r in rows} == {"aesthetic", "hps", "imagereward", "pick", "sci",
                                                         "clip", "vqa"}
    assert all(r["images_per_s"] > 0 and r["cpu_kind"] for r in rows)
