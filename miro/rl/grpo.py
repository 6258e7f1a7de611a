"""GRPO's math for flow models: group-relative advantages and the clipped chunk surrogate.

No critic: each prompt gets a group of G samples, and a sample's advantage is how much better its reward
is than its group's, in units of the group's spread (:func:`group_advantages`). The policy is the SDE
sampler, whose per-step log-probabilities come from :func:`miro.flow.sampling.sde_step`.

The loss (:func:`chunk_policy_loss`) takes one ratio per chunk of consecutive steps,
r_j = exp(mean over the chunk's steps of (log p_new - log p_old)), the geometric mean of the step ratios,
and PPO's clipped surrogate -min(r_j A, clip(r_j, 1 - e_low, 1 + e_high) A), averaged over samples and
chunks (e_low = e_high = e is PPO's symmetric clip; GCPO clips asymmetrically). With chunks of one step
this is step-level GRPO (Flow-GRPO / DanceGRPO) exactly.

The KL penalty to the reference policy (:func:`policy_kl`) comes in two named forms, because the papers'
code and the exact KL of the transitions differ by the step size and a published beta only means the
same thing with the same form:
- ``flow_grpo`` (Flow-GRPO's code, the default): |mu - mu_ref|^2 / (2 std_t^2), std_t = a sqrt(s / (1 - s))
  the SDE's noise scale, averaged over elements;
- ``transition``: the exact KL between the two Gaussian transitions, |mu - mu_ref|^2 / (2 std_t^2 |dt|);
  at 10 steps it is 1 / |dt| = 4 to 28 times the other, so beta must be that much smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from miro.rl.chunks import chunk_means


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    global_std: bool = False,
    clamp: float = 5.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Rewards [N] ordered group by group (G consecutive samples per prompt) -> advantages [N].

    A = (r - mean of its group) / (std + eps), the std taken within the group or, with ``global_std``,
    over all N (steadier when a group's samples happen to agree), then clamped to +-``clamp``. A group
    whose samples all score the same gets advantage 0: nothing to learn from it.
    """
    r = rewards.float().flatten()
    if group_size < 2 or r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards cannot form groups of {group_size} (need >= 2 per group)")
    groups = r.reshape(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    std = (r.std() if global_std else groups.std(1, keepdim=True)).expand_as(groups)
    adv = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    return adv.clamp(-clamp, clamp).flatten()


@dataclass
class PolicyLoss:
    """The loss to minimise and what to log about it."""

    loss: torch.Tensor  # scalar, with gradient
    ratio_mean: torch.Tensor  # mean chunk ratio (1 before the first update)
    clip_fraction: torch.Tensor  # share of chunk ratios outside [1 - e_low, 1 + e_high]
    approx_kl: torch.Tensor  # mean (log p_old - log p_new) per step: how far the policy moved


def chunk_ratios(log_prob: torch.Tensor, old_log_prob: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Per-step log-probs [N, T] (new and old) -> chunk ratios [N, K] (geometric means of step ratios)."""
    return chunk_means(log_prob - old_log_prob, sizes).exp()


KL_FORMS = ("flow_grpo", "transition")


def policy_kl(
    mean: torch.Tensor, ref_mean: torch.Tensor, noise_scale: torch.Tensor, dt: float, form: str = "flow_grpo"
) -> torch.Tensor:
    """KL penalty of one SDE step to the reference policy, averaged over elements -> [B].

    ``noise_scale`` is std_t = a sqrt(s / (1 - s)) per sample [B] (the transition's std is
    std_t sqrt(|dt|)); ``form`` is ``flow_grpo`` (divide by 2 std_t^2, Flow-GRPO's code) or
    ``transition`` (divide by 2 std_t^2 |dt|, the exact KL of the two Gaussian transitions)."""
    if form not in KL_FORMS:
        raise ValueError(f"kl must be one of {', '.join(KL_FORMS)}, got {form!r}")
    variance = noise_scale.float() ** 2 * (abs(float(dt)) if form == "transition" else 1.0)
    shape = (mean.shape[0],) + (1,) * (mean.ndim - 1)
    kl = (mean.float() - ref_mean.float()) ** 2 / (2 * variance.reshape(shape))
    return kl.flatten(1).mean(1)


def transition_noise_scale(std: torch.Tensor, dt: float) -> torch.Tensor:
    """std_t from a transition's std std_t sqrt(|dt|)."""
    return std / math.sqrt(abs(float(dt)))


def clip_bounds(
    clip_range: float, clip_low: float | None = None, clip_high: float | None = None
) -> tuple[float, float]:
    """(e_low, e_high): each defaults to ``clip_range`` (PPO's symmetric clip)."""
    low = clip_range if clip_low is None else float(clip_low)
    high = clip_range if clip_high is None else float(clip_high)
    if low < 0 or high < 0:
        raise ValueError(f"clip ranges must be >= 0, got clip_low={low}, clip_high={high}")
    return low, high


def clipped_surrogate(
    ratio: torch.Tensor,
    advantage: torch.Tensor,
    clip_range: float,
    clip_low: float | None = None,
    clip_high: float | None = None,
) -> torch.Tensor:
    """PPO's pessimistic bound, as a loss: max(-A r, -A clip(r, 1 - e_low, 1 + e_high)), elementwise.
    ``advantage`` broadcasts against ``ratio`` ([N, 1] against [N, K]); e_low / e_high default to
    ``clip_range``."""
    low, high = clip_bounds(clip_range, clip_low, clip_high)
    unclipped = -advantage * ratio
    clipped = -advantage * ratio.clamp(1.0 - low, 1.0 + high)
    return torch.maximum(unclipped, clipped)


def chunk_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    sizes: Sequence[int],
    clip_range: float,
    chunks: Sequence[int] | None = None,
    clip_low: float | None = None,
    clip_high: float | None = None,
) -> PolicyLoss:
    """The GRPO loss over the chunks ``chunks`` (indices into ``sizes``; None = all).

    ``log_prob``/``old_log_prob`` are [N, T'] for the steps of the selected chunks only, in order (a
    trainer recomputes only the steps it trains on); ``sizes`` are the sizes of all chunks.
    """
    chosen = list(range(len(sizes))) if chunks is None else list(chunks)
    chosen_sizes = [int(sizes[k]) for k in chosen]
    if log_prob.shape != old_log_prob.shape or log_prob.shape[1] != sum(chosen_sizes):
        raise ValueError(
            f"log-probs {tuple(log_prob.shape)} / {tuple(old_log_prob.shape)} do not cover the "
            f"{sum(chosen_sizes)} steps of chunks {chosen}"
        )
    ratio = chunk_ratios(log_prob.float(), old_log_prob.float(), chosen_sizes)
    adv = advantages.float().reshape(-1, 1)
    loss = clipped_surrogate(ratio, adv, clip_range, clip_low, clip_high).mean()
    low, high = clip_bounds(clip_range, clip_low, clip_high)
    with torch.no_grad():
        outside = ((ratio < 1 - low) | (ratio > 1 + high)).float().mean()
        approx_kl = (old_log_prob.float() - log_prob.float()).mean()
    return PolicyLoss(loss, ratio.detach().mean(), outside, approx_kl)
