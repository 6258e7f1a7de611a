"""The ``hps`` reward: Human Preference Score v2.1 (open_clip ViT-H-14 fine-tuned on HPD v2).

Score = cosine similarity of the L2-normalised image and text features, as ``hpsv2.score`` computes it.

Why not the ``hpsv2`` package: version 1.2 pins ``protobuf<4`` and ``pytest==7.2``, both older than this
stack, and its wheel ships without the BPE vocabulary its tokenizer opens. Its model is plain open_clip:
the HPSv2 fork's ViT-H-14 state dict matches open_clip 3's ``ViT-H-14`` key for key, so the checkpoint
(``HPS_v2.1_compressed.pt``, weights under ``"state_dict"``) loads into stock open_clip with
``weights_only=True`` and strict key checking.

Preprocessing follows ``hpsv2``'s validation transform, which is *not* open_clip's default: its
``image_transform(..., resize_longest_max=True)`` is ``ToTensor()`` then ``ResizeMaxSize``: the float
image's longest side resized to 224 by torchvision's tensor ``F.resize`` (one bicubic, antialiased pass;
no rounding to grey levels, no clamping, unlike PIL's bicubic) and centred on a black 224 x 224 square
(no cropping). Tokens: open_clip's CLIP tokenizer (bundled vocabulary), context 77.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from miro.rewards.base import register_reward
from miro.rewards.checkpoints import DropRule, LoadReport, RewardCheckpointError, drop_keys, load_strict
from miro.rewards.clip_common import ImagePreprocess, ModuleReward, Scorer, cosine
from miro.rewards.weights import WeightFile


class HpsScorer(Scorer):
    """cos(image features, text features) of an open_clip model."""

    def __init__(
        self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], preprocess: ImagePreprocess
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        image_features = self.model.encode_image(self.preprocess(images).to(self.dtype))
        text_features = self.model.encode_text(self.tokenizer(list(captions)).to(images.device))
        return cosine(image_features, text_features)


def hps_preprocess(image_size: int) -> ImagePreprocess:
    """hpsv2's ``ResizeMaxSize`` on a ``ToTensor()`` image: a float resize (``kernel="tensor"``)."""
    return ImagePreprocess(size=image_size, mode="letterbox", fill=(0, 0, 0), kernel="tensor")


# Keys an open_clip checkpoint may carry that the model does not hold.
OPEN_CLIP_DROPS = (DropRule(r"position_ids$", "position-id buffer of older transformers"),)


def open_clip_state(checkpoint: Path, report: LoadReport) -> dict[str, torch.Tensor]:
    """An open_clip training checkpoint's weights: ``["state_dict"]`` if present, ``module.`` removed.

    hpsv2's training script saves ``{"epoch", "name", "state_dict", "optimizer"}`` with the model wrapped
    in DistributedDataParallel; only ``state_dict`` is read, and the DDP prefix is a rename, not a drop.
    """
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise RewardCheckpointError(f"hps: checkpoint {checkpoint} holds no state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return drop_keys(state, OPEN_CLIP_DROPS, report)


def load_hps_scorer(arch: str, checkpoint: Path) -> HpsScorer:
    """open_clip ``arch`` with random weights, then the HPS checkpoint (strict, ``weights_only``)."""
    import open_clip

    model = open_clip.create_model(arch, pretrained=None)
    report = LoadReport(str(checkpoint))
    load_strict(model, open_clip_state(checkpoint, report), reward="hps", file=checkpoint)
    report.log("hps")
    size = model.visual.image_size
    scorer = HpsScorer(
        model,
        open_clip.get_tokenizer(arch),
        hps_preprocess(int(size[0] if isinstance(size, tuple) else size)),
    )
    scorer.load_report = report
    return scorer


@register_reward
class HpsReward(ModuleReward):
    """HPS v2.1: how much people prefer the image for the caption (cosine, about 0.2-0.35)."""

    name = "hps"
    aliases = ("hpsv2",)
    version = "1"
    WEIGHTS = {
        "checkpoint": WeightFile("file", "xswu/HPSv2", "HPS_v2.1_compressed.pt", purpose="HPS v2.1 ViT-H-14"),
    }

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        dtype: str | torch.dtype = "auto",
        arch: str = "ViT-H-14",
        paths: Mapping[str, str] | None = None,
        sources: Mapping[str, str] | None = None,
        scorer: HpsScorer | None = None,
    ) -> None:
        if scorer is None:
            scorer = load_hps_scorer(arch, self.locate(paths, sources)["checkpoint"])
        super().__init__(scorer, device, batch_size, dtype)


__all__ = ["HpsReward", "HpsScorer", "hps_preprocess", "load_hps_scorer", "open_clip_state"]
