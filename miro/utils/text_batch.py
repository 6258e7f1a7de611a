"""Padded text batches: the ``(tokens [B, L, D], mask [B, L])`` pairs every text path hands the DiT.

Encoders, their feature caches, cached-shard batches, caption dropout and the guidance branches all
build or mix such pairs; the padding lives here, below both ``miro.data`` and ``miro.models``, so the
data layer does not reach up into the models for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

TextBatch = tuple[torch.Tensor, torch.Tensor]


def pad_rows(rows: Sequence[torch.Tensor], dim: int, device: torch.device | str = "cpu") -> TextBatch:
    """Right-pad per-caption features ``[n_i, dim]`` into ``(tokens [B, L, dim], mask [B, L])``, L = max n_i.

    Padded positions are zero, as every encoder here returns them. Used for encoder outputs, feature
    caches and cached-shard batches alike, so a batch looks the same whichever path built it."""
    length = max((r.shape[0] for r in rows), default=0)
    dtype = rows[0].dtype if rows else torch.float32
    tokens = torch.zeros(len(rows), length, dim, dtype=dtype, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        tokens[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = True
    return tokens, mask


def pad_to_length(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> TextBatch:
    """A padded batch ``(tokens [B, L, D], mask [B, L])`` right-padded to ``length`` >= L (zeros, False),
    so two text batches can be stacked or mixed row by row."""
    extra = length - tokens.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {tokens.shape[1]} tokens to {length}")
    if extra == 0:
        return tokens, mask
    return F.pad(tokens, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)
