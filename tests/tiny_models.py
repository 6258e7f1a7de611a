"""The tiny exported model the pipeline, CLI, evaluator, GRPO and export-format tests share: built
without training (random weights, perturbed so images depend on text and rewards), so it costs
milliseconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from conftest import OFFLINE_REWARDS

from miro.data.bins import RewardBins
from miro.models.dit import MiroDiT
from miro.models.text import WordTextEncoder
from miro.pretrained import save_pretrained
from miro.shapes.captions import vocabulary

TEXT_CONFIG = {"_target_": "miro.models.text.WordTextEncoder", "dim": 16, "depth": 1, "num_heads": 2}
SAMPLING = {"guidance": 1.5, "steps": 3, "shift": 1.0}


def tiny_model(
    reward_names: Sequence[str] = OFFLINE_REWARDS, seed: int = 0, hidden: int | None = None,
    self_conditioning: bool = False,
) -> MiroDiT:
    """A 24 px tiny DiT whose every weight, the zero-initialised output and gates included, is
    perturbed with seeded noise: its images are neither blank nor independent of text and rewards
    (nor, with ``self_conditioning``, of the previous step's tokens)."""
    torch.manual_seed(seed)
    sc = {"self_conditioning": True} if self_conditioning else {}
    if hidden is not None:
        model = MiroDiT(24, 3, 4, hidden_size=hidden, depth=2, num_heads=2, text_dim=16,
                        reward_names=list(reward_names), **sc)
    else:
        model = MiroDiT.from_size("tiny", image_size=24, in_channels=3, patch_size=4, text_dim=16,
                                  reward_names=list(reward_names), **sc)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


# A diffusers AutoencoderKL of the SDXL VAE's architecture at a tiny size (latent tests; no download).
TINY_VAE = dict(
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    block_out_channels=[8, 16],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
)

def tiny_text_encoder(seed: int = 0) -> WordTextEncoder:
    torch.manual_seed(seed)
    return WordTextEncoder(vocabulary(), dim=16, depth=1, num_heads=2).eval()


def export_tiny_model(
    out_dir: Path, bins_path: Path | None, reward_names: Sequence[str] = OFFLINE_REWARDS, seed: int = 0,
    benchmark: str | None = None,
) -> Path:
    """Save a tiny random model as training would export it; returns the model directory. ``benchmark``
    is recorded as training records its config's (miro-eval's default benchmark for the model)."""
    model, text = tiny_model(reward_names, seed), tiny_text_encoder(seed)
    bins = RewardBins.load(bins_path) if bins_path is not None else None
    text_config = TEXT_CONFIG | {"vocab": list(text.words)}
    extra = {"benchmark": benchmark} if benchmark else None
    return save_pretrained(out_dir, model, text, text_config, list(reward_names), bins, 24, SAMPLING,
                           extra=extra)
