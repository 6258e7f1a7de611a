"""Integrating the learned flow from noise (t = 1) to data (t = 0).

Everything a sampler needs is split so other samplers reuse it: :func:`time_schedule` (the grid of
times), the ``velocity_fn(x, t) -> v`` convention (a bare model, or a guided one from
:mod:`miro.flow.guidance`), a step function ``step(x, v, t, t_next) -> x_next``, and :func:`integrate`,
the loop that ties them together. The Euler ODE step is here, and so is its stochastic twin with
log-probabilities (:func:`sde_step`, for GRPO), which uses the same schedule and velocity function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


# --------------------------------------------------------------------------------------------------
# The Euler step as a Gaussian policy (Flow-GRPO's form), for reinforcement learning.


@dataclass
class SDEStep:
    """One stochastic transition: the next state, its log-probability [B] (float32, mean over elements),
    and the Gaussian it was drawn from (mean like x, std [B] per sample) for KL terms."""

    x_next: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor | float,
    t_next: torch.Tensor | float,
    noise_level: float = 0.7,
    *,
    x_next: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """The reverse-time SDE with the same marginals as the flow ODE, discretised for one step t -> t_next.

    With s = t, dt = t_next - t < 0 and the noise scale std_t = a sqrt(s / (1 - s)):
    mean = x (1 + std_t^2 dt / (2 s)) + v (1 + std_t^2 (1 - s) / (2 s)) dt and the transition std is
    std_t sqrt(-dt). a = 0 gives back the Euler step. At s = 1 the formula divides by zero; the
    denominator then uses t_next instead (the first step of any schedule), as Flow-GRPO does.

    Without ``x_next`` a sample is drawn (with ``generator``, or from the standard-normal ``noise`` given:
    GRPO pre-draws it per prompt so a sample does not depend on how samples are batched or split over
    processes); with ``x_next``, only its log-probability under this step's Gaussian is computed: that
    is how GRPO re-scores a stored trajectory under new weights.
    Everything is float32, whatever the network's precision: log-densities of near-identical policies
    differ in the fourth decimal, which bf16 cannot represent.
    """
    if noise_level < 0:
        raise ValueError(f"SDE noise level must be >= 0, got {noise_level}")
    x32, v32 = x.float(), v.float()
    b = x.shape[0]
    s = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(b)
    s_next = torch.as_tensor(t_next, dtype=torch.float32, device=x.device).expand(b)
    dt = s_next - s
    if (dt >= 0).any():
        raise ValueError("sde_step integrates from noise to data: t_next must be smaller than t")
    denom = 1 - torch.where(s >= 1, s_next, s)
    std_t = noise_level * torch.sqrt(s / denom)
    shape = (b,) + (1,) * (x.ndim - 1)
    s_, dt_, std_ = s.reshape(shape), dt.reshape(shape), std_t.reshape(shape)
    mean = x32 * (1 + std_**2 * dt_ / (2 * s_)) + v32 * (1 + std_**2 * (1 - s_) / (2 * s_)) * dt_
    std = std_t * torch.sqrt(-dt)
    if x_next is None:
        # Drawn where the generator lives (GRPO seeds a CPU one), then moved: the same numbers on any device.
        if noise is None:
            where = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=where, dtype=torch.float32)
        x_next = mean + std.reshape(shape) * noise.float().to(x.device)
    log_prob = gaussian_log_prob(x_next.float(), mean, std)
    return SDEStep(x_next=x_next, log_prob=log_prob, mean=mean, std=std)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2), averaged over every element of a sample -> [B]. ``std`` is [B].

    A mean rather than a sum keeps log-probability differences O(1) whatever the image size, which is
    why GRPO's clip range for flow models is tiny (1e-4 in Flow-GRPO). With std = 0 (a deterministic
    step) the density is undefined; the result is then -inf or NaN and GRPO must not train on it.
    """
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    sd = std.reshape(shape)
    density = -((x - mean) ** 2) / (2 * sd**2) - torch.log(sd) - 0.5 * math.log(2 * math.pi)
    return density.flatten(1).mean(1)


def gaussian_kl_same_std(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two Gaussians with the same std, per element, averaged per sample -> [B]:
    |mean - ref_mean|^2 / (2 std^2). GRPO's penalty for drifting from the reference policy."""
    shape = (mean.shape[0],) + (1,) * (mean.ndim - 1)
    kl = (mean.float() - ref_mean.float()) ** 2 / (2 * std.reshape(shape) ** 2)
    return kl.flatten(1).mean(1)
