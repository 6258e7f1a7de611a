"""The ``pick`` reward: PickScore v1, CLIP-H fine-tuned on Pick-a-Pic preferences.

Score = ``logit_scale.exp() * cos(image, text)`` (about 18-24; MIRO divides by 100 before binning), with
the model card's processor, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: short side bicubic to 224, centre
crop, CLIP mean/std; CLIP BPE tokens, padded to the longest caption, truncated at 77. The model loads
with transformers' stock ``CLIPModel``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from miro.rewards.base import register_reward
from miro.rewards.clip_common import HFClipScorer, ModuleReward, load_hf_clip
from miro.rewards.weights import WeightFile


@register_reward
class PickReward(ModuleReward):
    """PickScore v1 (higher: people prefer the image for the caption)."""

    name = "pick"
    aliases = ("pickscore",)
    version = "1"
    WEIGHTS = {
        "model": WeightFile("model", "yuvalkirstain/PickScore_v1", purpose="PickScore CLIP-H"),
        "processor": WeightFile(
            "files",
            "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
            patterns=("*.json", "*.txt"),
            required=("preprocessor_config.json", "tokenizer_config.json"),
            purpose="CLIP-H processor",
        ),
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
            files = self.locate(paths, sources)
            scorer = load_hf_clip(self.name, str(files["model"]), str(files["processor"]))
        super().__init__(scorer, device, batch_size, dtype)


__all__ = ["PickReward"]
