"""Integrating the learned flow from noise (t = 1) to data (t = 0).

Everything a sampler needs is split so other samplers reuse it: :func:`time_schedule` (the grid of
times), the ``velocity_fn(x, t) -> v`` convention (a bare model, or a guided one from
:mod:`miro.flow.guidance`), a step function ``step(x, v, t, t_next) -> x_next``, and :func:`integrate`,
the loop that ties them together. The Euler ODE step is here; a stochastic step with log-probabilities
(for GRPO) plugs into the same schedule and velocity function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from miro.flow.path import shift_time

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step_index, t, t_next, x_before, v); for previews, logging, or recording statistics.
StepCallback = Callable[[int, float, float, torch.Tensor, torch.Tensor], None]


def time_schedule(steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """steps + 1 times from 1 (noise) to 0 (data), uniform then shifted (s > 1: more steps near noise)."""
    if steps < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {steps}")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def euler_step(
    x: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float, t_next: torch.Tensor | float
) -> torch.Tensor:
    """x_{t_next} = x_t + (t_next - t) v  (t_next < t, so this moves against the noise direction).

    t and t_next are floats or [B] tensors.
    """
    def as_x(value: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(value, dtype=x.dtype, device=x.device)

    dt = as_x(t_next) - as_x(t)
    if dt.ndim:
        dt = dt.reshape(-1, *([1] * (x.ndim - 1)))
    return x + dt * v


def integrate(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    step: StepFn = euler_step,
    callback: StepCallback | None = None,
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``step`` over consecutive pairs of ``timesteps`` starting from ``noise``.

    The model sees t as a [B] tensor. Returns the final x, and with ``return_trajectory`` also the list
    of all states (len(timesteps) tensors, the noise first).
    """
    x = noise
    trajectory = [x] if return_trajectory else []
    times = timesteps.tolist()
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
        v = velocity_fn(x, t_batch)
        if callback is not None:
            callback(i, t, t_next, x, v)
        x = step(x, v, t, t_next)
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


@torch.no_grad()
def sample_euler(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    steps: int = 50,
    shift: float = 1.0,
    callback: StepCallback | None = None,
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Euler ODE sampling (MIRO's default sampler), without gradients."""
    schedule = time_schedule(steps, shift, device=noise.device)
    return integrate(velocity_fn, noise, schedule, euler_step, callback, return_trajectory)
