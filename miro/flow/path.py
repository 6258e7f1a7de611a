"""The flow-matching path: linear interpolation between data (t = 0) and noise (t = 1).

x_t = (1 - t) x0 + t eps has the constant velocity dx_t/dt = eps - x0, which is the network's target.
Timesteps are drawn logit-normal (SD3, MIRO): most samples land at intermediate t where the prediction
is hardest, few at the trivial ends. An optional shift moves mass towards noise, which larger images
(more pixels carry the same information, so noise destroys it more slowly) need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] to broadcast against ``like``; scalars pass through."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise; t [B] (or a scalar) in [0, 1]."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / dt along the linear path: noise - x0."""
    return noise - x0


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 time shift t' = s t / (1 + (s - 1) t): s > 1 spends more time near noise, s = 1 is identity."""
    if shift <= 0:
        raise ValueError(f"time shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    n: int,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n logit-normal times: t = sigmoid(mean + std * z), z ~ N(0, 1), then shifted. float32 [n]."""
    if std < 0:
        raise ValueError(f"logit-normal std must be >= 0, got {std}")
    device = generator.device if generator is not None and device is None else device
    z = torch.randn(n, generator=generator, device=device)
    return shift_time(torch.sigmoid(mean + std * z), shift)


def flow_loss(
    v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """MSE between predicted velocity and noise - x0, in float32 (bf16 predictions lose the tail).

    ``reduction="none"`` returns one loss per sample [B] (for per-timestep or per-reward logging).
    """
    err = F.mse_loss(v_pred.float(), velocity_target(x0, noise).float(), reduction="none")
    per_sample = err.flatten(1).mean(1)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"flow_loss: reduction must be 'mean' or 'none', got {reduction!r}")
