"""Chunks of consecutive sampling steps for chunk-level GRPO (pure functions, no model).

A rollout of T Euler/SDE transitions is split into K contiguous chunks. GRPO then takes one policy
ratio per chunk (the geometric mean of its step ratios, see :mod:`miro.rl.grpo`), so steps that do the
same kind of work share one trust-region decision: K = T is step-level GRPO, K = 1 one ratio for the
whole trajectory. A chunking is a list of sizes that sums to T, in sampling order (noise end first).

Which steps belong together is read off the sampler's *temporal dynamics*: the relative L1 change of the
state per transition, L1rel(i) = |x_{i+1} - x_i|_1 / |x_i|_1, divided by the state *before* the step as
in the Chunk-GRPO (GCPO) paper. It hardly depends on the prompt but varies strongly along the trajectory.
:func:`dynamic_chunks` cuts the curve where its level changes: it chooses the K contiguous segments
that minimise the spread of log L1rel inside each segment (exact 1-D segmentation by dynamic
programming). Logarithms, because L1rel spans orders of magnitude and "similar dynamics" means a similar
*ratio* of change; a plain variance would spend every cut on the few largest steps.

Weighted chunk sampling (:func:`chunk_sampling_weights`) draws the chunks an update trains on with
probability proportional to the chunk's mean L1rel measured on the noisy (SDE) rollouts of the current
iteration, as GCPO does. Along a rollout the injected noise is largest at the noise end, so these
weights favour the high-noise chunks, where the image's layout is decided.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Chunks = list[int]  # sizes in sampling order, summing to the number of transitions


def check_chunks(sizes: Sequence[int], transitions: int) -> Chunks:
    """Validate a chunk list against a rollout with ``transitions`` steps; returns it as a list."""
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"chunk sizes must be positive integers, got {sizes}")
    if sum(sizes) != transitions:
        raise ValueError(
            f"chunk sizes {sizes} sum to {sum(sizes)}, but the sampler makes {transitions} transitions"
        )
    return sizes


def equal_chunks(transitions: int, size: int) -> Chunks:
    """Chunks of ``size`` steps; the last one takes the remainder (size 1 is step-level GRPO)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    full, rest = divmod(transitions, size)
    return [size] * full + ([rest] if rest else [])


def chunk_bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """[(start, end)) step ranges of each chunk: [2, 3] -> [(0, 2), (2, 5)]."""
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + int(size)))
        start += int(size)
    return bounds


def relative_l1_per_sample(trajectory: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """L1rel of every transition of every sample: states [T + 1, B, ...] -> [T, B] float32.

    L1rel(i) = |x_{i+1} - x_i|_1 / |x_i|_1: the change of step i relative to the state it started from
    (the paper's denominator; dividing by the state after the step moves chunk boundaries)."""
    states = torch.stack(list(trajectory)) if not isinstance(trajectory, torch.Tensor) else trajectory
    states = states.float().flatten(2)  # [T + 1, B, D]
    change = (states[1:] - states[:-1]).abs().sum(-1)
    size = states[:-1].abs().sum(-1).clamp_min(1e-12)
    return change / size


def relative_l1(trajectory: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """L1rel per transition, averaged over the batch: states [T + 1, B, ...] -> [T] float32."""
    return relative_l1_per_sample(trajectory).mean(1)


def dynamic_chunks(l1rel: torch.Tensor | Sequence[float], num_chunks: int) -> Chunks:
    """Cut the L1rel curve into ``num_chunks`` contiguous chunks of similar dynamics.

    Minimises the summed squared deviation of log L1rel from its chunk mean over all contiguous
    segmentations (dynamic programming, O(K T^2), trivial for sampling schedules). Ties go to the
    earliest cut, so the result is deterministic.
    """
    y = torch.as_tensor(l1rel, dtype=torch.float64).flatten()
    n = y.numel()
    if not 1 <= num_chunks <= n:
        raise ValueError(f"num_chunks must be between 1 and the {n} transitions, got {num_chunks}")
    if not torch.isfinite(y).all() or (y <= 0).any():
        raise ValueError("relative L1 changes must be finite and positive")
    y = y.log()
    prefix = torch.cat([y.new_zeros(1), y.cumsum(0)]).tolist()
    prefix_sq = torch.cat([y.new_zeros(1), (y * y).cumsum(0)]).tolist()

    def cost(i: int, j: int) -> float:  # spread of y[i:j] around its mean
        total = prefix[j] - prefix[i]
        return (prefix_sq[j] - prefix_sq[i]) - total * total / (j - i)

    inf = float("inf")
    # best[k][j]: least cost of splitting y[:j] into k segments; cut[k][j]: start of the last segment
    best = [[inf] * (n + 1) for _ in range(num_chunks + 1)]
    cut = [[0] * (n + 1) for _ in range(num_chunks + 1)]
    best[0][0] = 0.0
    for k in range(1, num_chunks + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + cost(i, j)
                if c < best[k][j] - 1e-12:
                    best[k][j], cut[k][j] = c, i
    sizes, j = [], n
    for k in range(num_chunks, 0, -1):
        i = cut[k][j]
        sizes.append(j - i)
        j = i
    return sizes[::-1]


def chunk_means(values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Mean of a per-step tensor [..., T] over each chunk -> [..., K]."""
    return torch.stack([values[..., a:b].mean(-1) for a, b in chunk_bounds(sizes)], dim=-1)


def chunk_sampling_weights(l1rel: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Probabilities [K] proportional to each chunk's mean L1rel.

    Pass the L1rel measured on the current noisy rollouts (GCPO): it is largest at the noise end, so the
    high-noise chunks are drawn most. (On the deterministic ODE trajectory the curve can rise towards
    the clean end instead, which would favour the wrong chunks.)"""
    means = chunk_means(torch.as_tensor(l1rel, dtype=torch.float32), sizes)
    if (means <= 0).any() or not torch.isfinite(means).all():
        raise ValueError(f"chunk weights need positive finite L1rel means, got {means.tolist()}")
    return means / means.sum()


def sample_chunks(weights: torch.Tensor, count: int, generator: torch.Generator | None = None) -> list[int]:
    """Draw ``count`` distinct chunk indices with probability proportional to ``weights``, in sampling
    order (sorted), reproducibly from ``generator``."""
    k = weights.numel()
    if not 1 <= count <= k:
        raise ValueError(f"can draw 1 to {k} chunks, asked for {count}")
    picked = torch.multinomial(weights.float().cpu(), count, replacement=False, generator=generator)
    return sorted(picked.tolist())
