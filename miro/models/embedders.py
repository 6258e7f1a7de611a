"""Conditioning embedders: the flow time (drives adaLN) and the reward levels (become tokens).

Rewards are tokens rather than one more adaLN input because MIRO treats them like words: one token per
reward, placed next to the caption's tokens, so the image can attend to "aesthetic = 0.9" the way it
attends to "red". Each token is ``value embedding + which-reward embedding``; a reward the sample was
never scored with gets a learned *missing* embedding instead of its value embedding, so one model trains
and samples with any subset of rewards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[N] float -> [N, dim]: cos/sin at frequencies spaced geometrically from 1 to 1/max_period."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> [B, hidden]: sinusoidal features of ``t * time_scale`` and an MLP.

    The sinusoid's frequencies were designed for integer diffusion steps (0..1000); scaling t by 1000
    puts a continuous t on the same footing, so nearby times still get distinguishable features.
    """

    def __init__(self, hidden_size: int, frequency_dim: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_embedding(t * self.time_scale, self.frequency_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class FourierFeatures(nn.Module):
    """Value in [0, 1] -> [.., dim] sin/cos features, frequencies geometric from pi to pi * max_frequency.

    A bin level is one of 64 values 1/63 apart; the highest frequency must resolve neighbouring levels
    (max_frequency ~ number of bins), the lowest keeps the embedding smooth and monotone-friendly.
    Fixed, not learned: nothing to drift, and identical levels always embed identically.
    """

    def __init__(self, dim: int, max_frequency: float = 64.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"FourierFeatures: dim must be an even number >= 2, got {dim}")
        freqs = math.pi * torch.logspace(0.0, math.log10(max_frequency), dim // 2)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        args = v.float()[..., None] * self.freqs
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class RewardEmbedder(nn.Module):
    """Reward levels [B, R] in [0, 1] (+ present mask) -> reward tokens [B, R, hidden].

    Each reward has its own MLP over shared Fourier features (rewards live on unrelated scales, so they
    should not share a value embedding). With ``dropout > 0`` a reward is marked missing with that
    probability per sample while training; MIRO itself used 0 and relies on high-vs-low guidance.
    With no reward names the embedder yields zero tokens: the reward-free baseline.
    """

    def __init__(
        self,
        reward_names: Sequence[str],
        hidden_size: int,
        fourier_dim: int = 64,
        max_frequency: float = 64.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"RewardEmbedder: dropout must be in [0, 1], got {dropout}")
        if len(set(reward_names)) != len(reward_names):
            raise ValueError(f"RewardEmbedder: duplicate reward names in {list(reward_names)}")
        self.reward_names = list(reward_names)
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.fourier = FourierFeatures(fourier_dim, max_frequency)
        self.value_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(fourier_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            for _ in self.reward_names
        )
        num = len(self.reward_names)
        self.reward_id = nn.Parameter(torch.randn(num, hidden_size) * 0.02)
        self.missing = nn.Parameter(torch.randn(hidden_size) * 0.02)

    @property
    def num_rewards(self) -> int:
        return len(self.reward_names)

    def forward(
        self, rewards: torch.Tensor | None, reward_mask: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """``rewards=None`` means every reward is missing; ``reward_mask=None`` means all present."""
        num = self.num_rewards
        device, dtype = self.reward_id.device, self.reward_id.dtype
        if num == 0:
            if rewards is not None and rewards.shape[-1] != 0:
                raise ValueError(
                    f"this model has no reward conditioning but got rewards of shape {tuple(rewards.shape)}"
                )
            return torch.zeros(batch_size, 0, self.hidden_size, device=device, dtype=dtype)
        if rewards is None:
            rewards = torch.zeros(batch_size, num, device=device)
            reward_mask = torch.zeros(batch_size, num, dtype=torch.bool, device=device)
        if rewards.shape != (batch_size, num):
            raise ValueError(
                f"rewards must have shape [{batch_size}, {num}] for rewards {self.reward_names}, "
                f"got {tuple(rewards.shape)}"
            )
        if reward_mask is None:
            reward_mask = torch.ones(batch_size, num, dtype=torch.bool, device=rewards.device)
        elif reward_mask.shape != rewards.shape:
            raise ValueError(
                f"reward_mask shape {tuple(reward_mask.shape)} differs from rewards {tuple(rewards.shape)}"
            )
        reward_mask = reward_mask.bool()
        if self.training and self.dropout > 0:
            keep = torch.rand(reward_mask.shape, device=reward_mask.device) >= self.dropout
            reward_mask = reward_mask & keep
        feats = self.fourier(rewards).to(dtype)  # [B, R, F]
        values = torch.stack([mlp(feats[:, i]) for i, mlp in enumerate(self.value_mlps)], dim=1)
        values = torch.where(reward_mask[..., None], values, self.missing.to(values.dtype))
        return values + self.reward_id  # [B, R, hidden]
