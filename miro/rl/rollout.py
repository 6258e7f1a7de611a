"""Rollouts: the guided SDE sampler as a policy, and trajectories recorded for GRPO.

The policy is exactly what ``miro-generate`` samples (the same caption tokens, reward targets, negative
branch and guidance scale) with the Euler step replaced by :func:`miro.flow.sampling.sde_step`. So for
a reward-conditioned model GRPO improves the images users get at the requested targets, not those of
some unguided variant. One function, :func:`policy_step`, serves both the rollout (sampling) and the
update (re-scoring stored states with gradients): with unchanged weights and the same batch the two
give bit-identical log-probabilities, so the first ratio of every run is exactly 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from miro.flow.guidance import guided_velocity_fn
from miro.flow.sampling import SDEStep, sde_step
from miro.pipeline import autocast_velocity


@dataclass
class PolicyCondition:
    """Everything the velocity depends on besides (x, t), one row per sample."""

    tokens: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor | None
    neg_rewards: torch.Tensor | None
    guidance: float

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
        )

    def velocity(self, model: nn.Module):  # -> VelocityFn
        reward_mask = None if self.rewards is None else torch.ones_like(self.rewards, dtype=torch.bool)
        scale = self.guidance if self.rewards is not None else 0.0
        return guided_velocity_fn(
            model,
            self.tokens,
            self.mask,
            self.rewards,
            reward_mask,
            scale=scale,
            neg_rewards=self.neg_rewards,
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
) -> SDEStep:
    """One SDE transition of the guided policy: sample it, or (``x_next`` given) score it."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
    velocity = condition.velocity(model)
    if precision == "bf16":
        velocity = autocast_velocity(velocity, x.device.type, torch.bfloat16)
    v = velocity(x, t_batch)
    return sde_step(x, v.float(), t, t_next, noise_level, x_next=x_next, generator=generator)


@torch.no_grad()
def rollout(
    model: nn.Module,
    condition: PolicyCondition,
    noise: torch.Tensor,
    timesteps: Sequence[float],
    noise_level: float,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample trajectories from ``noise`` -> (states [T + 1, N, ...] float32, log-probs [T, N] float32)."""
    x = noise.float()
    states, log_probs = [x], []
    for t, t_next in zip(timesteps[:-1], timesteps[1:], strict=True):
        step = policy_step(
            model,
            condition,
            x,
            float(t),
            float(t_next),
            noise_level,
            generator=generator,
            precision=precision,
        )
        x = step.x_next
        states.append(x)
        log_probs.append(step.log_prob)
    return torch.stack(states), torch.stack(log_probs)
