"""Multi-reward classifier-free guidance.

v = v(x, c+, s+) + w (v(x, c+, s+) - v(x, c-, s-)): s+ are the requested reward levels (by default all
at the top), s- the levels to move away from (by default all at 0), c- the caption of the negative branch
(the same caption, an empty prompt, or a user's negative prompt). Guidance therefore needs no text or
reward dropout during training: the model already knows what "every reward low" looks like. To push one
reward, keep s+ high and lower only that reward in s- (:func:`push_targets`).

The weight w may depend on the time (:class:`GuidanceSchedule`): guidance only on an interval of the
trajectory, or ramped. Where it is 0 the negative branch is not evaluated at all and the step uses the
conditional prediction v(x, c+, s+) alone.

Targets are snapped to the levels the model was trained on (:func:`snap_to_level`): a reward with B
levels only ever saw the values k / (B - 1), so a request between two of them is moved to the nearest.

Both branches run in one forward pass over a doubled batch: one large matrix multiply is cheaper than
two small ones, and the two predictions come from exactly the same weights and numerics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from miro.flow.sampling import VelocityFn
from miro.utils.text_batch import pad_to_length


def reward_targets(
    reward_names: Sequence[str],
    batch_size: int,
    level: float = 1.0,
    overrides: Mapping[str, float] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[B, R] conditioning values: every reward at ``level`` except the named ``overrides``."""
    names = list(reward_names)
    values = torch.full((batch_size, len(names)), float(level), device=device)
    for name, value in (overrides or {}).items():
        if name not in names:
            raise KeyError(f"reward {name!r} is not one of this model's rewards {names}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"reward target for {name!r} must be in [0, 1], got {value}")
        values[:, names.index(name)] = float(value)
    return values


def snap_to_level(value: float, n_levels: int) -> tuple[float, int]:
    """A conditioning value in [0, 1] -> (the nearest trained value k / (B - 1), its level k).

    Ties go to the higher level (9 on the 0-10 scale with 64 levels: 0.9 * 63 = 56.7 -> k = 57, value
    0.9048). A reward fitted to a single level (constant on the data) was trained at 0.5 only.
    """
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a conditioning value must be in [0, 1], got {value}")
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    if n_levels == 1:
        return 0.5, 0
    level = int(math.floor(value * (n_levels - 1) + 0.5))
    return level / (n_levels - 1), level


def push_targets(reward_names: Sequence[str], pushed: str, high: float = 10.0, low: float = 0.0
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """The paper's "push one reward": positive targets all ``high``; negative all ``high`` except
    ``pushed`` at ``low``. Guidance then amplifies only the difference in that one reward."""
    names = list(reward_names)
    if pushed not in names:
        raise KeyError(f"reward {pushed!r} is not one of this model's rewards {names}")
    positive = dict.fromkeys(names, float(high))
    negative = {n: float(low) if n == pushed else float(high) for n in names}
    return positive, negative


RAMPS = ("constant", "linear")


@dataclass(frozen=True)
class GuidanceSchedule:
    """The guidance weight w(t) along the trajectory (t = 1 noise, t = 0 data).

    ``interval`` = (t_low, t_high): guidance applies where t_low <= t <= t_high and w = 0 elsewhere (the
    conditional prediction). ``ramp="constant"``: w = scale inside; ``"linear"``: w grows linearly from 0
    at t_high to 2 x ``scale`` at t_low (mean ``scale``), so guidance strengthens as the image forms; over
    the whole schedule that is the released MIRO sampler's "linear" guidance, 2 w (step / steps). The
    whole schedule (0, 1) with a constant ramp is plain guidance.
    """

    scale: float
    interval: tuple[float, float] = (0.0, 1.0)
    ramp: str = "constant"

    def __post_init__(self) -> None:
        low, high = (float(x) for x in self.interval)
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"guidance interval must satisfy 0 <= t_low < t_high <= 1, got {self.interval}")
        if self.ramp not in RAMPS:
            raise ValueError(f"guidance ramp must be one of {', '.join(RAMPS)}, got {self.ramp!r}")
        object.__setattr__(self, "interval", (low, high))

    @classmethod
    def from_settings(cls, scale: float, interval: Sequence[float] | None = None, ramp: str | None = None
                      ) -> GuidanceSchedule:
        """From sampling settings, where None means the whole trajectory / a constant weight."""
        return cls(float(scale), tuple(interval) if interval is not None else (0.0, 1.0), ramp or "constant")

    @property
    def is_plain(self) -> bool:
        return self.interval == (0.0, 1.0) and self.ramp == "constant"

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) for a [B] tensor of times -> [B] float32."""
        t = t.float()
        low, high = self.interval
        inside = (t >= low) & (t <= high)
        if self.ramp == "constant":
            w = torch.full_like(t, float(self.scale))
        else:
            w = 2.0 * self.scale * (high - t) / (high - low)
        return torch.where(inside, w, torch.zeros_like(w))


class SelfConditionedCalls:
    """Calls a self-conditioned network along one trajectory: each call gets the output tokens of the
    previous call of the same branch (positive, negative), as MIRO's sampler passes its latents from step
    to step. The first call of a branch gets none; a branch that skipped steps (outside a guidance
    interval) gets zeros, the trained "no estimate" input. A network without self-conditioning is
    called plainly."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.enabled = bool(getattr(model, "self_conditioning", False))
        self.previous: dict[str, torch.Tensor] = {}

    def __call__(self, branches: Sequence[str], x: torch.Tensor, *args: torch.Tensor | None) -> torch.Tensor:
        if not self.enabled:
            return self.model(x, *args)
        known = [self.previous.get(b) for b in branches]
        previous = None
        if any(p is not None for p in known):
            like = next(p for p in known if p is not None)
            previous = torch.cat([p if p is not None else torch.zeros_like(like) for p in known])
        v, tokens = self.model(x, *args, previous_tokens=previous, return_tokens=True)
        for branch, part in zip(branches, tokens.chunk(len(branches)), strict=True):
            self.previous[branch] = part
        return v


def guided_velocity_fn(
    model: nn.Module,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    rewards: torch.Tensor | None,
    reward_mask: torch.Tensor | None = None,
    *,
    scale: float,
    neg_rewards: torch.Tensor | None = None,
    neg_reward_mask: torch.Tensor | None = None,
    neg_text_tokens: torch.Tensor | None = None,
    neg_text_mask: torch.Tensor | None = None,
    schedule: GuidanceSchedule | None = None,
    calls: SelfConditionedCalls | None = None,
) -> VelocityFn:
    """Wrap ``model`` into ``velocity_fn(x, t)`` applying reward (and optionally text) guidance.

    ``rewards`` / ``reward_mask`` condition the positive branch; the negative branch uses
    ``neg_rewards`` (default: all zeros, i.e. every reward at its lowest level), ``neg_reward_mask``
    (default: the positive mask) and ``neg_text_*`` (default: the positive caption). With ``scale == 0``
    only the positive branch is evaluated. ``schedule`` (its scale must equal ``scale``) makes w depend on
    t; at steps where w(t) = 0 only the positive branch runs. ``calls``: the self-conditioning state to
    continue from (default: a fresh trajectory); GRPO passes one to record and restore it per step. Call
    with the model in eval mode.
    """
    if schedule is not None and schedule.scale != scale:
        raise ValueError(f"schedule.scale {schedule.scale} differs from scale {scale}")
    calls = calls if calls is not None else SelfConditionedCalls(model)
    if scale == 0:
        def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return calls(["pos"], x, t, text_tokens, text_mask, rewards, reward_mask)

        return conditional

    if neg_rewards is None and rewards is not None:
        neg_rewards = torch.zeros_like(rewards)
    if neg_reward_mask is None:
        neg_reward_mask = reward_mask
    if (neg_text_tokens is None) != (neg_text_mask is None):
        raise ValueError("give both neg_text_tokens and neg_text_mask, or neither")
    if neg_text_tokens is None:
        neg_text_tokens, neg_text_mask = text_tokens, text_mask
    if neg_text_tokens.shape[0] != text_tokens.shape[0]:
        raise ValueError(
            f"negative text batch {neg_text_tokens.shape[0]} differs from positive {text_tokens.shape[0]}; "
            "expand an empty or shared negative prompt to the batch size first"
        )
    if (rewards is None) != (neg_rewards is None):
        raise ValueError("rewards and neg_rewards must both be given or both be None")

    length = max(text_tokens.shape[1], neg_text_tokens.shape[1])
    pos_tok, pos_mask = pad_to_length(text_tokens, text_mask.bool(), length)
    neg_tok, neg_mask = pad_to_length(neg_text_tokens, neg_text_mask.bool(), length)
    both_tokens = torch.cat([pos_tok, neg_tok])
    both_mask = torch.cat([pos_mask, neg_mask])
    both_rewards = torch.cat([rewards, neg_rewards]) if rewards is not None else None
    both_reward_mask = None
    if reward_mask is not None or neg_reward_mask is not None:
        ones = torch.ones_like(rewards, dtype=torch.bool)
        both_reward_mask = torch.cat([
            reward_mask if reward_mask is not None else ones,
            neg_reward_mask if neg_reward_mask is not None else ones,
        ])

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if schedule is None or schedule.is_plain:
            weight: torch.Tensor | float = scale
        else:
            weight = schedule.weight(t).to(x.device)
            if not bool(weight.any()):
                return calls(["pos"], x, t, text_tokens, text_mask, rewards, reward_mask)
            weight = weight.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        x2, t2 = torch.cat([x, x]), torch.cat([t, t])
        v = calls(["pos", "neg"], x2, t2, both_tokens, both_mask, both_rewards, both_reward_mask)
        v_pos, v_neg = v.chunk(2)
        return v_pos + weight * (v_pos - v_neg)

    return guided
