"""The ``imagereward`` reward: ImageReward v1.0 (BLIP ViT-L image encoder, BERT with cross-attention, MLP).

How the original scores (``ImageReward.score``): the caption is BERT-tokenized (``bert-base-uncased``
plus BLIP's added ``[DEC]``/``[ENC]`` tokens) padded to exactly 35 tokens and truncated there; the image
is bicubic-resized (short side 224), centre-cropped and CLIP-normalised; the BLIP ViT-L output tokens
feed the text encoder's cross-attention; the ``[CLS]`` feature goes through an MLP (the aesthetic
predictor's layout, run in float32); the result is standardised with the training set's mean 0.16717
and std 1.03334.

Why not the ``image-reward`` package: 1.5 pins ``timm==0.6.13``, which breaks open_clip, and it does not
import under transformers 5. Its networks are standard parts, so they are rebuilt here from
transformers' ``BlipVisionModel`` (BLIP's ViT: pre-norm blocks, fused qkv, exact GELU, LayerNorm eps
1e-6) and ``BlipTextModel`` (BLIP's ``med.py`` BERT: no token-type embeddings, cross-attention in every
layer), and ``ImageReward.pt`` is loaded through :func:`map_imagereward_state_dict`, a key mapping that
the tests check on a state dict with the official key names. The checkpoint is a plain state dict and
loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from miro.rewards.aesthetic import AestheticHead
from miro.rewards.base import register_reward
from miro.rewards.checkpoints import DropRule, LoadReport, drop_keys, load_strict, unexpected
from miro.rewards.clip_common import ImagePreprocess, ModuleReward, Scorer, check_vocab
from miro.rewards.weights import WeightFile

log = logging.getLogger(__name__)

# ImageReward's standardisation of the MLP output (ImageReward.py: self.mean / self.std).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35
# BLIP's ViT-L/16 as ImageReward builds it (create_vit('large', 224)).
BLIP_VIT_LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=224,
    patch_size=16,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)

# BLIP VisionTransformer key (after "blip.visual_encoder.") -> transformers BlipVisionModel key.
_VISION_RULES = (
    (r"cls_token$", "embeddings.class_embedding"),
    (r"pos_embed$", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"blocks\.(\d+)\.mlp\.(fc[12])\.", r"encoder.layers.\1.mlp.\2."),
    (r"norm\.", "post_layernorm."),
)
_PREFIXES = {"blip.visual_encoder.": "vision", "blip.text_encoder.": "text", "mlp.": "head"}
# Parts of ImageReward.pt the score never uses, each with the reason it is dropped.
IMAGEREWARD_DROPS = (
    DropRule(r"^blip\.(vision_proj|text_proj)\.", "BLIP's contrastive projection, unused by the score"),
    DropRule(r"position_ids$", "position-id buffer, recomputed by the model"),
)


def _vision_key(key: str) -> str | None:
    for pattern, replacement in _VISION_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    return None


def map_imagereward_state_dict(
    state: Mapping[str, torch.Tensor], report: LoadReport | None = None, file: str | Path = "ImageReward.pt"
) -> dict[str, dict[str, torch.Tensor]]:
    """ImageReward.pt -> ``{"vision": BlipVisionModel, "text": BlipTextModel, "head": AestheticHead}`` dicts.

    Keys that :data:`IMAGEREWARD_DROPS` explains go into ``report``; any other unknown key is a one-line
    :class:`RewardCheckpointError` naming ``file`` and the key.
    """
    report = report if report is not None else LoadReport(str(file))
    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "text": {}, "head": {}}
    for key, value in drop_keys(state, IMAGEREWARD_DROPS, report).items():
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise unexpected("imagereward", file, key)
        part, rest = _PREFIXES[prefix], key[len(prefix) :]
        if part == "vision":
            mapped = _vision_key(rest)
            if mapped is None:
                raise unexpected("imagereward", file, key)
            rest = mapped
        parts[part][rest] = value
    return parts


def text_config_from_med(med: Mapping[str, Any], vision_width: int) -> Any:
    """BLIP's ``med_config.json`` (a BERT config) -> ``BlipTextConfig`` with cross-attention to the ViT."""
    from transformers import BlipTextConfig

    return BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=vision_width,  # ImageReward sets encoder_width to the ViT's width
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        pad_token_id=med.get("pad_token_id", 0),
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
        is_decoder=True,  # builds the cross-attention layers; the forward runs bidirectionally
    )


def blip_tokenizer(vocab_file: Path) -> Any:
    """``bert-base-uncased`` with BLIP's extra tokens (``[DEC]`` as BOS, ``[ENC]``), as ``init_tokenizer``."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageRewardScorer(Scorer):
    """(MLP(text encoder [CLS] | cross-attention to ViT tokens) - mean) / std."""

    fp32_modules = ("head",)

    def __init__(
        self,
        vision: nn.Module,
        text: nn.Module,
        head: AestheticHead,
        tokenizer: Any,
        preprocess: ImagePreprocess,
        max_length: int = TEXT_MAX_LENGTH,
        mean: float = REWARD_MEAN,
        std: float = REWARD_STD,
    ) -> None:
        super().__init__()
        self.vision, self.text, self.head = vision, text, head
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.max_length, self.mean, self.std = max_length, mean, std

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        image_tokens = self.vision(pixel_values=self.preprocess(images).to(self.dtype)).last_hidden_state
        tokens = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(images.device)
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=images.device)
        hidden = self.text(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        reward = self.head(hidden[:, 0].float()).squeeze(-1)
        return (reward - self.mean) / self.std


def load_imagereward_scorer(
    checkpoint: Path, med_config: Path, vocab_file: Path, vision: Mapping[str, Any] = BLIP_VIT_LARGE
) -> ImageRewardScorer:
    """The checkpoint's three parts into transformers' BLIP classes (``vision``: the ViT's config)."""
    from transformers import BlipTextModel, BlipVisionConfig, BlipVisionModel

    vision_config = BlipVisionConfig(**vision)
    med = json.loads(Path(med_config).read_text())
    text_config = text_config_from_med(med, vision_config.hidden_size)
    tokenizer = blip_tokenizer(vocab_file)
    check_vocab("imagereward", len(tokenizer), text_config.vocab_size, str(vocab_file))
    report = LoadReport(str(checkpoint))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    parts = map_imagereward_state_dict(state, report, checkpoint)
    vision, text = BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False)
    head = AestheticHead(text_config.hidden_size)
    for module, part in ((vision, "vision"), (text, "text"), (head, "head")):
        # The message names our key for the vision part (its file name is mapped); text/head keep theirs.
        prefix = {"text": "blip.text_encoder.", "head": "mlp.", "vision": "(mapped vision) "}[part]
        load_strict(module, parts[part], reward="imagereward", file=checkpoint, part=prefix)
    report.log("imagereward")
    preprocess = ImagePreprocess(size=vision_config.image_size)
    scorer = ImageRewardScorer(vision, text, head, tokenizer, preprocess)
    scorer.load_report = report
    return scorer


@register_reward
class ImageRewardReward(ModuleReward):
    """ImageReward v1.0: standardised human preference for the image given the caption (about -2..2)."""

    name = "imagereward"
    aliases = ("ir",)
    version = "1"
    WEIGHTS = {
        "checkpoint": WeightFile("file", "THUDM/ImageReward", "ImageReward.pt", purpose="ImageReward v1.0"),
        "med_config": WeightFile("file", "THUDM/ImageReward", "med_config.json", purpose="BLIP text config"),
        "vocab": WeightFile("file", "google-bert/bert-base-uncased", "vocab.txt", purpose="BERT vocabulary"),
    }

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        dtype: str | torch.dtype = "auto",
        paths: Mapping[str, str] | None = None,
        sources: Mapping[str, str] | None = None,
        vision: Mapping[str, Any] = BLIP_VIT_LARGE,
        scorer: ImageRewardScorer | None = None,
    ) -> None:
        if scorer is None:
            files = self.locate(paths, sources)
            scorer = load_imagereward_scorer(files["checkpoint"], files["med_config"], files["vocab"], vision)
        super().__init__(scorer, device, batch_size, dtype)


__all__ = [
    "ImageRewardReward",
    "ImageRewardScorer",
    "blip_tokenizer",
    "load_imagereward_scorer",
    "map_imagereward_state_dict",
    "text_config_from_med",
]
