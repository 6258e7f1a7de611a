"""The ``aesthetic`` reward: LAION's "improved aesthetic predictor" on OpenAI CLIP ViT-L/14.

The predictor (``sac+logos+ava1-l14-linearMSE.pth``) is a stack of linear layers with no activation
(the "linearMSE" variant; the dropouts only act in training) applied to the L2-normalised CLIP image
embedding. The original runs OpenAI's ``clip`` package; the same weights in open_clip's format
(``timm/vit_large_patch14_clip_224.openai``) load into open_clip's ``ViT-L-14-quickgelu``, whose
QuickGELU activation is what OpenAI trained with. Preprocessing is OpenAI CLIP's: bicubic resize of
the short side to 224, centre crop, CLIP mean/std. Scores are roughly 1-10 (MIRO divides by 10 before
binning; bins do not care).

The head runs in float32 whatever the tower's dtype, as the original does with its numpy features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from miro.rewards.base import register_reward
from miro.rewards.checkpoints import DropRule, LoadReport, drop_keys, load_strict
from miro.rewards.clip_common import ImagePreprocess, ModuleReward, Scorer
from miro.rewards.weights import WeightFile

HEAD_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
# Layer widths of the published head after the input (its checkpoint fixes them).
HEAD_WIDTHS = (1024, 128, 64, 16, 1)
OPEN_CLIP_DROPS = (DropRule(r"position_ids$", "position-id buffer of older transformers"),)


class AestheticHead(nn.Module):
    """Linear layers with the published checkpoint's layout (``layers.0/2/4/6/7``; dropouts between)."""

    def __init__(self, input_dim: int = 768) -> None:
        super().__init__()
        w = HEAD_WIDTHS
        self.layers = nn.Sequential(
            nn.Linear(input_dim, w[0]),
            nn.Dropout(0.2),
            nn.Linear(w[0], w[1]),
            nn.Dropout(0.2),
            nn.Linear(w[1], w[2]),
            nn.Dropout(0.1),
            nn.Linear(w[2], w[3]),
            nn.Linear(w[3], w[4]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AestheticScorer(Scorer):
    """Head(normalise(CLIP image embedding)); captions are ignored."""

    fp32_modules = ("head",)

    def __init__(self, visual: nn.Module, head: AestheticHead, preprocess: ImagePreprocess) -> None:
        super().__init__()
        self.visual, self.head, self.preprocess = visual, head, preprocess

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        features = self.visual(self.preprocess(images).to(self.dtype))
        return self.head(F.normalize(features.float(), dim=-1)).squeeze(-1)


def image_size(visual: nn.Module) -> int:
    size = visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def load_aesthetic_scorer(clip_arch: str, clip_weights: Path, head_weights: Path) -> AestheticScorer:
    """open_clip ``clip_arch`` with ``clip_weights``; the head from ``head_weights`` (a plain state dict)."""
    import open_clip

    from miro.rewards.hps import open_clip_state

    model = open_clip.create_model(clip_arch, pretrained=None)
    report = LoadReport(str(clip_weights))
    if Path(clip_weights).suffix == ".safetensors":
        from safetensors.torch import load_file

        state = drop_keys(load_file(str(clip_weights)), OPEN_CLIP_DROPS, report)
    else:
        state = open_clip_state(Path(clip_weights), report)
    load_strict(model, state, reward="aesthetic", file=clip_weights)
    report.log("aesthetic")
    visual = model.visual
    head = AestheticHead(visual.output_dim)
    head_state = torch.load(head_weights, map_location="cpu", weights_only=True)
    load_strict(head, head_state, reward="aesthetic", file=head_weights)
    scorer = AestheticScorer(visual, head, ImagePreprocess(size=image_size(visual)))
    scorer.load_report = report
    return scorer


@register_reward
class AestheticReward(ModuleReward):
    """LAION aesthetic score of the image alone (higher is better, about 1-10)."""

    name = "aesthetic"
    aliases = ("aes",)
    version = "1"
    needs_captions = False
    WEIGHTS = {
        "clip": WeightFile(
            "file",
            "timm/vit_large_patch14_clip_224.openai",
            "open_clip_model.safetensors",
            purpose="OpenAI CLIP ViT-L/14 in open_clip format",
        ),
        "head": WeightFile(
            "url", HEAD_URL, "sac+logos+ava1-l14-linearMSE.pth", purpose="LAION aesthetic MLP"
        ),
    }

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        dtype: str | torch.dtype = "auto",
        clip_arch: str = "ViT-L-14-quickgelu",
        paths: Mapping[str, str] | None = None,
        sources: Mapping[str, str] | None = None,
        scorer: AestheticScorer | None = None,
    ) -> None:
        if scorer is None:
            files = self.locate(paths, sources)
            scorer = load_aesthetic_scorer(clip_arch, files["clip"], files["head"])
        super().__init__(scorer, device, batch_size, dtype)


__all__ = ["AestheticHead", "AestheticReward", "AestheticScorer", "load_aesthetic_scorer"]
