"""Multi-reward classifier-free guidance.

v = v(x, c+, s+) + w (v(x, c+, s+) - v(x, c-, s-)): s+ are the requested reward levels (by default all
at the top), s- the levels to move away from (by default all at 0), c- the caption of the negative branch
(the same caption, an empty prompt, or a user's negative prompt). Guidance therefore needs no text or
reward dropout during training: the model already knows what "every reward low" looks like. To push one
reward, keep s+ high and lower only that reward in s-.

Both branches run in one forward pass over a doubled batch: one large matrix multiply is cheaper than
two small ones, and the two predictions come from exactly the same weights and numerics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
) -> VelocityFn:
    """Wrap ``model`` into ``velocity_fn(x, t)`` applying reward (and optionally text) guidance.

    ``rewards`` / ``reward_mask`` condition the positive branch; the negative branch uses
    ``neg_rewards`` (default: all zeros, i.e. every reward at its lowest level), ``neg_reward_mask``
    (default: the positive mask) and ``neg_text_*`` (default: the positive caption). With ``scale == 0``
    only the positive branch is evaluated. Call with the model in eval mode (reward dropout off).
    """
    if scale == 0:
        def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(x, t, text_tokens, text_mask, rewards, reward_mask)

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
        x2, t2 = torch.cat([x, x]), torch.cat([t, t])
        v = model(x2, t2, both_tokens, both_mask, both_rewards, both_reward_mask)
        v_pos, v_neg = v.chunk(2)
        return v_pos + scale * (v_pos - v_neg)

    return guided
