"""The GPU benchmark's FLOP count (what its MFU figures rest on) and its refusal without CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from miro.models.dit import flops_per_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_train_gpu as bench  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "overrides, text_len",
    [
        ({}, 77),
        ({"conv_channels": 8}, 13),
        ({"unet_channels": [8, 16], "patch_size": 1}, 13),
        ({"unet_channels": [8, 12, 16], "patch_size": 1}, 3),
        ({"pooled_rewards": True, "pooled_text": False, "mlp_ratio": 2.0}, 5),
    ],
)
def test_analytic_dit_flops_equal_pytorchs_count(overrides: dict, text_len: int) -> None:
    torch.manual_seed(0)
    model = bench.build_dit("tiny", CPU, **overrides).eval()
    tokens, mask = bench.text_inputs(1, CPU, text_len)
    inputs = (torch.randn(1, *bench.LATENT), torch.full((1,), 0.5), tokens, mask, torch.rand(1, 7), None)
    counted = bench.counted_flops(lambda: model(*inputs))
    assert counted == flops_per_image(model, text_len)


def test_dit_flops_by_hand() -> None:
    """DiT-tiny (d 32, depth 2, MLP 128) on 32x32x4 latents, patch 2: N = 256 tokens, M = 77 + 7."""
    macs = (
        256 * (2 * 2 * 4) * 32  # patch embedding
        + 256 * 32
        + 32 * 32  # timestep MLP (256 frequencies)
        + 77 * (2048 * 32 + 32 * 32)
        + (2048 * 32 + 32 * 32)  # text projection, pooled text
        + 7 * (64 * 32 + 32 * 32)  # reward value MLPs
        + 2
        * (  # blocks
            6 * 32 * 32
            + 4 * 256 * 32 * 32
            + 2 * 256 * 256 * 32  # adaLN, self-attention
            + 2 * 256 * 32 * 32
            + 2 * 84 * 32 * 32
            + 2 * 256 * 84 * 32  # cross-attention
            + 2 * 256 * 32 * 128  # MLP
        )
        + 2 * 32 * 32
        + 256 * 32 * (2 * 2 * 4)  # final adaLN and linear
    )
    assert flops_per_image(bench.build_dit("tiny", CPU), 77) == 2 * macs == 48_648_192


def test_training_step_timing_reports_consistent_numbers() -> None:
    result = bench.bench_dit_train("tiny", batch=2, compile=False, steps=2, warmup=1, device=CPU)
    # counted over the step as it runs: at most 3 forwards (the backward skips the inputs' gradients)
    assert 2.5 * result["forward_gflop_per_image"] < result["train_gflop_per_image"]
    assert result["train_gflop_per_image"] <= 3 * result["forward_gflop_per_image"]
    assert result["samples_per_s"] == pytest.approx(2 / result["seconds_per_step"], rel=0.01, abs=0.051)
    assert result["analytic_forward_gflop"] == result["forward_gflop_per_image"]
    [row] = bench.with_mfu([result], peak_tflops=1.0)
    assert row["mfu_percent"] == pytest.approx(100 * result["achieved_tflops_unrounded"], abs=0.001)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_cuda(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: bench_train_gpu.py measures GPU speed and needs CUDA, which this machine does not have "
        "(--device cpu runs it as a smoke test)."
    )
    assert not list(tmp_path.iterdir())
