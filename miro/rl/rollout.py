"""Rollouts: the guided SDE sampler as a policy, and trajectories recorded for GRPO.

The policy is exactly what ``miro-generate`` samples (the same caption tokens, reward targets snapped to
the trained levels, negative branch and caption, guidance scale, interval and ramp: one
:func:`miro.pipeline.resolve_request` record and :func:`miro.pipeline.conditioned_velocity`) with the
Euler step replaced by :func:`miro.flow.sampling.sde_step`. So for a reward-conditioned model GRPO
improves the images users get at the requested targets, not those of some unguided variant.

One function, :func:`policy_step`, serves both the rollout (sampling) and the update (re-scoring stored
states with gradients): with unchanged weights and the same batch the two give bit-identical
log-probabilities, so the first ratio of every run is exactly 1. A self-conditioned network's input from
the step before is recorded with the states and given back when a step is re-scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from miro.flow.guidance import SelfConditionedCalls
from miro.flow.sampling import SDEStep, VelocityFn, integrate, sde_step
from miro.pipeline import autocast_velocity, conditioned_velocity


@dataclass
class PolicyCondition:
    """Everything the velocity depends on besides (x, t), one row per sample: the caption tokens, the
    conditioning values of both branches, the negative caption's tokens (None: the same caption) and
    the guidance with its interval and ramp, all from the pipeline's record of the request
    (:func:`miro.pipeline.resolve_request`)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor | None
    neg_rewards: torch.Tensor | None
    guidance: float
    neg_tokens: torch.Tensor | None = None
    neg_mask: torch.Tensor | None = None
    guidance_interval: Sequence[float] | None = None
    guidance_ramp: str | None = None

    def take(self, index: slice | torch.Tensor) -> PolicyCondition:
        """The rows ``index`` (a minibatch of samples)."""

        def pick(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[index]

        return replace(
            self,
            tokens=self.tokens[index],
            mask=self.mask[index],
            rewards=pick(self.rewards),
            neg_rewards=pick(self.neg_rewards),
            neg_tokens=pick(self.neg_tokens),
            neg_mask=pick(self.neg_mask),
        )

    def velocity(self, model: nn.Module, calls: SelfConditionedCalls | None = None) -> VelocityFn:
        """The guided velocity, built as :class:`~miro.pipeline.MiroPipeline` builds it (``calls``: the
        self-conditioning state to continue from; default a fresh trajectory)."""
        return conditioned_velocity(
            model, self.tokens, self.mask, self.rewards, self.neg_rewards, self.neg_tokens, self.neg_mask,
            self.guidance, self.guidance_interval, self.guidance_ramp, calls=calls,
        )


def policy_step(
    model: nn.Module,
    condition: PolicyCondition,
    x: torch.Tensor,
    t: float,
    t_next: float,
    noise_level: float,
    *,
    x_next: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    previous: Mapping[str, torch.Tensor] | None = None,
) -> SDEStep:
    """One SDE transition of the guided policy: sample it, or (``x_next`` given) score it.
    ``previous``: a self-conditioned network's tokens of the step before, per branch, as the rollout
    recorded them (:func:`rollout`): the step is then the one the sampler took."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
    calls = SelfConditionedCalls(model)
    calls.previous = dict(previous or {})
    v = policy_velocity(model, condition, precision, calls)(x, t_batch)
    return sde_step(x, v.float(), t, t_next, noise_level, x_next=x_next, generator=generator)


def policy_velocity(
    model: nn.Module, condition: PolicyCondition, precision: str = "fp32",
    calls: SelfConditionedCalls | None = None,
) -> VelocityFn:
    """The guided velocity the policy's Gaussian is centred on, under bf16 autocast if asked."""
    velocity = condition.velocity(model, calls)
    if precision == "bf16":
        velocity = autocast_velocity(velocity, next(model.parameters()).device.type, torch.bfloat16)
    return velocity


@torch.no_grad()
def rollout(
    model: nn.Module,
    condition: PolicyCondition,
    noise: torch.Tensor,
    timesteps: Sequence[float],
    noise_level: float,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    step_noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Sample trajectories from ``noise`` -> (states [T + 1, N, ...] float32, log-probs [T, N] float32,
    the self-conditioning input of each step: {branch: tokens [N, ...]}, empty for a network without
    self-conditioning or at the first step).

    The ODE sampler's loop (:func:`~miro.flow.sampling.integrate`) with the Euler step swapped for the
    SDE step, so rollouts and generation share the schedule and the model call. The SDE's draws come
    from ``step_noise`` [T, N, ...] when given (pre-drawn per prompt, so a sample is the same whatever
    the batching), else from ``generator``. A self-conditioned network gets each step the tokens of its
    previous step, as the pipeline samples; they are returned so that the update re-scores each step
    with the same input (:func:`policy_step`), treating them as part of the state."""
    log_probs: list[torch.Tensor] = []
    previous: list[dict[str, torch.Tensor]] = []

    def step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        eps = None if step_noise is None else step_noise[len(log_probs)]
        transition = sde_step(x, v.float(), t, t_next, noise_level, generator=generator, noise=eps)
        log_probs.append(transition.log_prob)
        return transition.x_next

    calls = SelfConditionedCalls(model)
    velocity = policy_velocity(model, condition, precision, calls)

    def recorded(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        previous.append(dict(calls.previous))  # the call replaces, never edits, these tensors
        return velocity(x, t)

    times = torch.as_tensor([float(t) for t in timesteps], dtype=torch.float64)  # exact: scoring reuses them
    _, states = integrate(recorded, noise.float(), times, step, return_trajectory=True)
    return torch.stack(states), torch.stack(log_probs), previous
