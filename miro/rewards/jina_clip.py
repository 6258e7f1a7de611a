"""The ``clip`` reward: JINA CLIP v2 image-text score, ``logit_scale.exp() * cos(image, text)``.

That is the diagonal of the model's ``logits_per_image``, which MIRO stores (divided by 100). Text is
tokenized with the model's XLM-RoBERTa tokenizer, padded to the longest caption and truncated at
``max_length`` (MIRO used 1024; the model's own ``encode_text`` default is 512). Images are
preprocessed with the parameters of the model's own image processor (size 512, CLIP mean/std, its
resize mode), read from the processor object and applied here on the scoring device.

Security: JINA CLIP v2 is custom code (an EVA02 vision tower and a Jina XLM-RoBERTa text tower), so it
only loads with ``trust_remote_code=True``. The model repository is pinned to ``REVISION``; the code it
pulls from ``jinaai/jina-clip-implementation`` is pinned only if ``code_revision`` is given (otherwise
transformers takes that repository's main branch). Read the code at those revisions before the first
run; docs/rewards.md says what to check. The tests cannot build this model offline: a transformers
CLIP model stands in for the towers there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from miro.rewards.base import register_reward
from miro.rewards.clip_common import ImagePreprocess, ModuleReward, Scorer, cosine, embedding
from miro.rewards.weights import WeightFile, hub_cache_dir, hub_cache_display, local_then_remote

REPO = "jinaai/jina-clip-v2"
# A commit of jinaai/jina-clip-v2 on the hub (see docs/rewards.md before changing or trusting it).
REVISION = "157fc94d1eca40ee28da0eaf1061fb80b859c90e"
_RESIZE_MODES = {"shortest": "crop", "longest": "letterbox", "squash": "squash"}


def preprocess_from_jina(processor: Any) -> ImagePreprocess:
    """Our preprocessing with the settings of a ``JinaCLIPImageProcessor`` (or a dict of them)."""
    get = processor.get if isinstance(processor, Mapping) else lambda k, d=None: getattr(processor, k, d)
    size = get("size")
    size = size[0] if isinstance(size, (tuple, list)) else size
    mode = get("resize_mode", "shortest")
    if mode not in _RESIZE_MODES or get("interpolation", "bicubic") != "bicubic":
        raise ValueError(f"clip: unsupported JINA image processor settings (resize_mode={mode!r})")
    fill = get("fill_color", 0)
    fill = tuple(fill) if isinstance(fill, (tuple, list)) else (int(fill),) * 3
    return ImagePreprocess(
        size=int(size), mean=tuple(get("mean")), std=tuple(get("std")), mode=_RESIZE_MODES[mode], fill=fill
    )


class JinaClipScorer(Scorer):
    """``logit_scale.exp() * cos`` of a model exposing ``get_image_features`` / ``get_text_features``."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, preprocess: ImagePreprocess, max_length: int = 1024
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.preprocess, self.max_length = (
            model,
            tokenizer,
            preprocess,
            max_length,
        )

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        image_emb = embedding(
            self.model.get_image_features(pixel_values=self.preprocess(images).to(self.dtype))
        )
        tokens = self.tokenizer(
            list(captions),
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(images.device)
        text_emb = embedding(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        )
        return self.model.logit_scale.float().exp() * cosine(image_emb, text_emb)


def load_jina_scorer(revision: str, code_revision: str | None, max_length: int) -> JinaClipScorer:
    """Model, tokenizer and image processor from the hub cache (or the network), all at ``revision``."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    common = dict(revision=revision, cache_dir=hub_cache_dir())

    def fetch(local_only: bool) -> tuple[Any, Any, Any]:
        remote = dict(
            common, trust_remote_code=True, code_revision=code_revision, local_files_only=local_only
        )
        model = AutoModel.from_pretrained(REPO, **remote)
        tokenizer = AutoTokenizer.from_pretrained(REPO, local_files_only=local_only, **common)
        processor = AutoImageProcessor.from_pretrained(REPO, **remote)
        return model, tokenizer, processor

    model, tokenizer, processor = local_then_remote(
        JinaClipReward.name,
        f"{REPO}@{revision[:10]} (model, remote code, tokenizer)",
        fetch,
        hub_cache_display(),
    )
    return JinaClipScorer(model.float(), tokenizer, preprocess_from_jina(processor), max_length)


@register_reward
class JinaClipReward(ModuleReward):
    """JINA CLIP v2 image-text similarity (scaled cosine)."""

    name = "clip"
    aliases = ("jina",)
    version = "1"
    WEIGHTS = {
        "model": WeightFile("model", REPO, revision=REVISION, purpose="JINA CLIP v2 (trust_remote_code)")
    }

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        dtype: str | torch.dtype = "auto",
        revision: str = REVISION,
        code_revision: str | None = None,
        max_length: int = 1024,
        scorer: JinaClipScorer | None = None,
    ) -> None:
        if scorer is None:
            scorer = load_jina_scorer(revision, code_revision, max_length)
        super().__init__(scorer, device, batch_size, dtype)

    @classmethod
    def download(cls, sources: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Loading once fills the caches with weights, tokenizer *and* the remote code it imports."""
        if sources:
            raise ValueError(
                "clip: the JINA model is pinned; pass revision/code_revision to the reward instead"
            )
        load_jina_scorer(REVISION, None, 1024)
        return {"model": f"{REPO}@{REVISION} in {hub_cache_display()}"}


__all__ = ["JinaClipReward", "JinaClipScorer", "load_jina_scorer", "preprocess_from_jina"]
