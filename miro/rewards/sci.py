"""The ``sci`` reward: SciScore, a CLIP-H reward model for scientific text-to-image prompts (Science-T2I).

Same formula and preprocessing as PickScore (``logit_scale.exp() * cos``, CLIP-H processor, 77 tokens),
with the processor files MIRO loads: the ones in the SciScore repository itself. The model loads with
transformers' stock ``CLIPModel``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from miro.rewards.base import register_reward
from miro.rewards.clip_common import HFClipScorer, ModuleReward, load_hf_clip
from miro.rewards.weights import WeightFile


@register_reward
class SciReward(ModuleReward):
    """SciScore (higher: the image depicts the scientific phenomenon the caption implies)."""

    name = "sci"
    aliases = ("sciscore",)
    version = "1"
    WEIGHTS = {
        "model": WeightFile("model", "Jialuo21/SciScore", purpose="SciScore CLIP-H, with its processor")
    }

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        dtype: str | torch.dtype = "auto",
        paths: Mapping[str, str] | None = None,
        sources: Mapping[str, str] | None = None,
        scorer: HFClipScorer | None = None,
    ) -> None:
        if scorer is None:
            folder = str(self.locate(paths, sources)["model"])
            scorer = load_hf_clip(self.name, folder, folder)
        super().__init__(scorer, device, batch_size, dtype)


__all__ = ["SciReward"]
