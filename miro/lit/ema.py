"""Exponential moving average of weights.

Kept as a plain sibling module (``ema_model`` next to ``model``) rather than Lightning's
``WeightAveraging`` callback: that callback averages the *whole* LightningModule (frozen multi-GB text
encoders included) and swaps the averaged weights into the checkpoint's ``state_dict``. Here the EMA
weights are ordinary module state, saved and restored with everything else, and sampling callbacks and
export read them directly.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """Decay used at optimiser step ``step`` (0-based): ramps up as (1 + s) / (10 + s) so short runs
    are not dominated by the random initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every parameter that trains; buffers copied."""
    ema_params, params = [], []
    for (name, p_ema), (name_m, p) in zip(ema.named_parameters(), model.named_parameters(), strict=True):
        if name != name_m:
            raise ValueError(f"EMA and model parameters differ: {name} vs {name_m}")
        if p.requires_grad:
            ema_params.append(p_ema)
            params.append(p.detach().to(p_ema.dtype))
    if params:
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
