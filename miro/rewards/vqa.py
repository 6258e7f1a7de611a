"""The ``vqa`` reward: VQAScore with CLIP-FlanT5, the probability that the model answers "Yes".

How ``t2v_metrics`` scores an (image, caption) pair with ``clip-flant5-xxl`` (read from its public code):

* question ``Does this figure show "{caption}"? Please answer yes or no.``, answer ``Yes``;
* the question is wrapped in the ``t5_chat`` conversation format
  ``"{SYSTEM} USER: <image>\\n{question} ASSISTANT: "`` and the text on each side of ``<image>`` is
  tokenized separately, *each piece ending with its own* ``</s>``;
* the image is padded to a square with the CLIP mean colour (LLaVA's ``expand2square``), then run
  through ``openai/clip-vit-large-patch14-336``'s processor (336 px, CLIP mean/std); the vision tower's
  second-to-last hidden layer minus the CLS token (576 tokens) goes through a 2-layer GELU MLP and
  replaces the ``<image>`` position in the T5 encoder's input embeddings;
* the answer's tokens (``Yes </s>``) are the decoder labels and the score is ``exp(-mean token cross
  entropy)``, i.e. the geometric mean of P(Yes) and P(</s> | Yes), over a vocabulary resized to the
  tokenizer's 32100 tokens (the original calls ``resize_token_embeddings(len(tokenizer))``).

Why not ``t2v_metrics``: 3.0 pins ``torch==2.5.1`` and ``transformers==4.49`` and cannot be resolved with
this stack. The model is standard parts: transformers' ``CLIPVisionModel`` and
``T5ForConditionalGeneration`` plus an MLP, loaded from the checkpoint by :func:`split_clip_t5_state`
(key layout of ``CLIPT5ForConditionalGeneration``: T5 keys at the top level, ``mm_projector.*``, and
optionally ``vision_tower.vision_tower.vision_model.*``, transformers 4's naming, which then overrides the
pretrained CLIP tower as it does in the original; :func:`vision_state` maps it to transformers 5's
``CLIPVisionModel``, which has no ``vision_model.`` level). Tied aliases and stale buffers are dropped
and reported (:mod:`miro.rewards.checkpoints`); any other extra or missing key is a one-line error.
T5 is built on the meta device and filled shard by shard in the target dtype, so the
11B XXL model never exists in float32. ``.bin`` shards load with ``weights_only=True``.

The model size is an option: ``xxl`` (MIRO's choice) or ``xl``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from miro.rewards.base import register_reward
from miro.rewards.checkpoints import (
    DropRule,
    LoadReport,
    RewardCheckpointError,
    hf_loading_report,
    load_strict,
    unexpected,
)
from miro.rewards.clip_common import ImagePreprocess, ModuleReward, Scorer, check_vocab, resolve_dtype
from miro.rewards.weights import WeightFile

log = logging.getLogger(__name__)

QUESTION_TEMPLATE = 'Does this figure show "{}"? Please answer yes or no.'
ANSWER = "Yes"
# t2v_metrics' SYSTEM_MSG (inherited from LLaVA) and its "t5_chat" conversation format.
SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHAT_FORMAT = "{system} USER: <image>\n{question} ASSISTANT: "
IMAGE_PLACEHOLDER = "<image>"
MODEL_SIZES = {
    "xxl": ("zhiqiulin/clip-flant5-xxl", "google/flan-t5-xxl"),
    "xl": ("zhiqiulin/clip-flant5-xl", "google/flan-t5-xl"),
}
_T5_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "tie_word_embeddings",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA's projector types: ``linear`` or ``mlp{N}x_gelu`` (N linear layers, GELU between)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match:
        raise ValueError(f"vqa: unsupported mm_projector_type {kind!r}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class ClipT5Scorer(Scorer):
    """P("Yes") of CLIP-FlanT5 for "does this image show the caption?"."""

    def __init__(
        self,
        vision: nn.Module,
        projector: nn.Module,
        t5: nn.Module,
        tokenizer: Any,
        preprocess: ImagePreprocess,
        select_layer: int = -2,
        select_feature: str = "patch",
        question_template: str = QUESTION_TEMPLATE,
        answer: str = ANSWER,
        system: str = SYSTEM_MESSAGE,
    ) -> None:
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"vqa: unsupported mm_vision_select_feature {select_feature!r}")
        self.vision, self.projector, self.t5 = vision, projector, t5
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.select_layer, self.select_feature = select_layer, select_feature
        self.question_template, self.answer, self.system = question_template, answer, system
        self.vocab_size = len(tokenizer)

    def prompt(self, caption: str) -> tuple[str, str]:
        """The text before and after the image, in the ``t5_chat`` format."""
        text = CHAT_FORMAT.format(system=self.system, question=self.question_template.format(caption))
        before, after = text.split(IMAGE_PLACEHOLDER)
        return before, after

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[self.select_layer]
        return self.projector(hidden[:, 1:] if self.select_feature == "patch" else hidden)

    def encoder_inputs(
        self, images: torch.Tensor, captions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings [B, L, d] (text, image tokens, text; right-padded with zeros) and their mask."""
        image_tokens = self.image_tokens(self.preprocess(images).to(self.dtype))
        pieces = [self.prompt(c) for c in captions]
        # Each piece is tokenized on its own and gets its own </s>, exactly as t5_tokenizer_image_token does.
        before = self.tokenizer([b for b, _ in pieces]).input_ids
        after = self.tokenizer([a for _, a in pieces]).input_ids
        embed = self.t5.get_input_embeddings()
        device = images.device
        rows = [
            torch.cat([embed(torch.tensor(b, device=device)), tokens, embed(torch.tensor(a, device=device))])
            for b, a, tokens in zip(before, after, image_tokens, strict=True)
        ]
        length = max(r.shape[0] for r in rows)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            mask[i, : row.shape[0]] = 1
        return torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows]), mask

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        embeds, mask = self.encoder_inputs(images, captions)
        labels = torch.tensor(self.tokenizer(self.answer).input_ids, device=images.device)
        # Teacher forcing as T5 does with labels: the decoder sees [start, labels[:-1]].
        start = torch.tensor([self.t5.config.decoder_start_token_id], device=images.device)
        decoder_ids = torch.cat([start, labels[:-1]]).repeat(len(captions), 1)
        logits = self.t5(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        log_probs = logits.float()[..., : self.vocab_size].log_softmax(-1)
        # exp(-mean cross entropy) over the answer's tokens, as t2v_metrics computes it.
        return log_probs.gather(-1, labels.repeat(len(captions), 1).unsqueeze(-1)).squeeze(-1).mean(-1).exp()


def checkpoint_shards(folder: Path) -> list[Path]:
    """The weight files of a transformers folder: from its shard index, else the single file.

    Safetensors win over ``.bin``; other files (``training_args.bin``, a pickle of training settings
    in the CLIP-FlanT5 repos) are never opened.
    """
    for index, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (folder / index).is_file():
            names = json.loads((folder / index).read_text())["weight_map"].values()
            return [folder / name for name in sorted(set(names))]
        if (folder / single).is_file():
            return [folder / single]
    raise FileNotFoundError(f"vqa: no model.safetensors or pytorch_model.bin (or their index) in {folder}")


def iter_checkpoint(folder: Path, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor in ``dtype``) over a folder's weight shards, one shard in memory at a time."""
    for shard in checkpoint_shards(folder):
        if shard.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    yield key, f.get_tensor(key).to(dtype)
        else:
            for key, value in torch.load(shard, map_location="cpu", weights_only=True, mmap=True).items():
                yield key, value.to(dtype)


# Keys of a CLIPT5ForConditionalGeneration checkpoint that hold nothing the scorer needs.
CLIP_T5_DROPS = (
    DropRule(r"^embed_tokens\.", "alias of T5's shared embedding (tied)"),
    DropRule(r"^(encoder|decoder)\.embed_tokens\.", "alias of T5's shared embedding (tied)"),
    DropRule(r"^vision_tower\.vision_tower\..*position_ids$", "position-id buffer of older transformers"),
)
VISION_PREFIX = "vision_tower.vision_tower."


def split_clip_t5_state(
    items: Iterator[tuple[str, torch.Tensor]], report: LoadReport | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """``CLIPT5ForConditionalGeneration`` keys -> ``{"t5": ..., "projector": ..., "vision": ...}``.

    Keys that :data:`CLIP_T5_DROPS` explains (tied aliases, stale buffers) are dropped into ``report``.
    Vision keys keep the name they have under ``vision_tower.vision_tower.`` (the original's
    ``CLIPVisionModel``, so ``vision_model.*``); :func:`vision_state` fits them to the model at hand.
    """
    report = report if report is not None else LoadReport("?")
    parts: dict[str, dict[str, torch.Tensor]] = {"t5": {}, "projector": {}, "vision": {}}
    for key, value in items:
        rule = next((r for r in CLIP_T5_DROPS if r.matches(key)), None)
        if rule is not None:
            report.drop(key, rule.reason)
        elif key.startswith("mm_projector."):
            parts["projector"][key.removeprefix("mm_projector.")] = value
        elif key.startswith(VISION_PREFIX):
            parts["vision"][key.removeprefix(VISION_PREFIX)] = value
        else:
            parts["t5"][key] = value
    return parts


def vision_state(state: Mapping[str, torch.Tensor], vision: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint vision-tower keys in the naming of ``vision``'s own state dict.

    The original stores a transformers-4 ``CLIPVisionModel``, whose weights sit under ``vision_model.``;
    transformers 5's ``CLIPVisionModel`` has no such level. The prefix is removed only when the model's
    keys lack it, so a checkpoint in either naming loads into either version.
    """
    own = vision.state_dict()
    if any(k.startswith("vision_model.") for k in own):
        return dict(state)
    return {k.removeprefix("vision_model."): v for k, v in state.items()}


def load_clip_t5_scorer(
    model_dir: Path, tokenizer_dir: Path, vision_dir: Path, dtype: torch.dtype
) -> ClipT5Scorer:
    from transformers import AutoTokenizer, CLIPVisionModel, T5Config, T5ForConditionalGeneration

    config = json.loads((model_dir / "config.json").read_text())
    t5_config = T5Config(**{k: config[k] for k in _T5_FIELDS if k in config})
    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(t5_config)
    vision, vision_info = CLIPVisionModel.from_pretrained(str(vision_dir), output_loading_info=True)
    hf_loading_report("vqa", vision_dir, vision_info, LoadReport(str(vision_dir)))
    vision = vision.to(dtype)
    projector = build_projector(
        config.get("mm_projector_type", "mlp2x_gelu"), config["mm_hidden_size"], t5_config.d_model
    )
    report = LoadReport(str(model_dir))
    parts = split_clip_t5_state(iter_checkpoint(model_dir, dtype), report)
    result = t5.load_state_dict(parts["t5"], strict=False, assign=True)
    if result.unexpected_keys:
        raise unexpected("vqa", model_dir, result.unexpected_keys[0], len(result.unexpected_keys))
    t5.set_input_embeddings(t5.shared)  # the encoder/decoder embeddings are T5's shared table
    missing = [name for name, p in [*t5.named_parameters(), *t5.named_buffers()] if p.is_meta]
    if missing:
        more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
        raise RewardCheckpointError(f"vqa: checkpoint {model_dir}: missing key {missing[0]!r}{more}")
    load_strict(projector, parts["projector"], reward="vqa", file=model_dir, part="mm_projector.")
    projector.to(dtype)
    if parts["vision"]:
        # The checkpoint's tower overrides the pretrained one, as in the original.
        load_strict(
            vision, vision_state(parts["vision"], vision), reward="vqa", file=model_dir, part=VISION_PREFIX
        )
    report.log("vqa")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    check_vocab("vqa", len(tokenizer), t5_config.vocab_size, str(tokenizer_dir))
    processor = json.loads((vision_dir / "preprocessor_config.json").read_text())
    preprocess = ImagePreprocess.from_hf_processor(processor, mode="pad_square")
    # expand2square's background: the processor's mean colour in 0..255, truncated as the original does.
    preprocess = ImagePreprocess(
        size=preprocess.size,
        mean=preprocess.mean,
        std=preprocess.std,
        mode="pad_square",
        fill=tuple(int(m * 255) for m in preprocess.mean),
        crop_offset=preprocess.crop_offset,
    )
    scorer = ClipT5Scorer(
        vision,
        projector,
        t5,
        tokenizer,
        preprocess,
        select_layer=config.get("mm_vision_select_layer", -2),
        select_feature=config.get("mm_vision_select_feature", "patch"),
    )
    scorer.load_report = report
    return scorer


@register_reward
class VqaReward(ModuleReward):
    """VQAScore: P("Yes") that the image shows the caption, in [0, 1]."""

    name = "vqa"
    aliases = ("vqascore",)
    version = "1"
    WEIGHTS = {
        "model": WeightFile("model", MODEL_SIZES["xxl"][0], purpose="CLIP-FlanT5 (T5 + projector)"),
        "tokenizer": WeightFile(
            "files",
            MODEL_SIZES["xxl"][1],
            patterns=("*.json", "spiece.model"),
            required=("tokenizer_config.json",),
            purpose="FlanT5 tokenizer",
        ),
        "vision": WeightFile("model", "openai/clip-vit-large-patch14-336", purpose="CLIP ViT-L/14-336 tower"),
    }

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        dtype: str | torch.dtype = "auto",
        model_size: str = "xxl",
        paths: Mapping[str, str] | None = None,
        sources: Mapping[str, str] | None = None,
        scorer: ClipT5Scorer | None = None,
    ) -> None:
        if scorer is None:
            files = self.locate(paths, {**self.size_sources(model_size), **(sources or {})})
            load_dtype = resolve_dtype(dtype, torch.device(device))
            scorer = load_clip_t5_scorer(files["model"], files["tokenizer"], files["vision"], load_dtype)
        super().__init__(scorer, device, batch_size, dtype)

    @staticmethod
    def size_sources(model_size: str) -> dict[str, str]:
        if model_size not in MODEL_SIZES:
            raise ValueError(f"vqa: unknown model_size {model_size!r}; use one of {', '.join(MODEL_SIZES)}")
        model, tokenizer = MODEL_SIZES[model_size]
        return {"model": model, "tokenizer": tokenizer}


__all__ = [
    "ClipT5Scorer",
    "VqaReward",
    "build_projector",
    "checkpoint_shards",
    "iter_checkpoint",
    "load_clip_t5_scorer",
    "split_clip_t5_state",
    "vision_state",
]
