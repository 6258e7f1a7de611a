"""What the CLIP-family rewards share: image preprocessing, precision handling and the HF CLIP score.

All seven MIRO rewards look at images through a CLIP-style tower, each with its own resolution,
normalisation and resize rule. The originals preprocess PIL images one at a time; here a whole uint8
batch is preprocessed as tensors on the scoring device, reproducing PIL's bicubic resampling: PIL
resizes horizontally, rounds to uint8, then vertically and rounds again; doing the same two antialiased
passes in torch matches PIL to within 2 grey levels (measured, see the tests), where a single float
pass can be off by 25 levels next to sharp edges.

Resize rules (``ImagePreprocess.mode``):

* ``"crop"``: shortest side to ``size`` (the long side truncated as torchvision does), centre crop.
  OpenAI CLIP, open_clip's default, transformers' ``CLIPImageProcessor``, BLIP.
* ``"letterbox"``: longest side to ``size`` (rounded), pad to a square with ``fill``, the image centred
  (left/top padding ``pad // 2``). HPSv2's ``ResizeMaxSize`` and open_clip's ``resize_mode="longest"``.
* ``"pad_square"``: pad to a square with ``fill`` first (LLaVA's ``expand2square``), then resize.
* ``"squash"``: resize to ``size`` x ``size`` ignoring the aspect ratio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from miro.rewards.base import RewardModel
from miro.rewards.weights import WeightFile, fetch

# OpenAI CLIP's normalisation, used by every model here (BLIP and LLaVA reuse it).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("crop", "letterbox", "pad_square", "squash")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA (fp16 overflows in T5), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resize_like_pil(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of float [B, C, H, W] in 0..255, the way PIL does it (two rounded passes)."""
    if x.shape[-1] != width:
        x = F.interpolate(x, size=(x.shape[-2], width), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    if x.shape[-2] != height:
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x


def _pad_to(x: torch.Tensor, height: int, width: int, fill: Sequence[float]) -> torch.Tensor:
    """Centre ``x`` on a ``height`` x ``width`` canvas of colour ``fill`` (left/top offset pad // 2)."""
    b, c, h, w = x.shape
    canvas = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1).expand(b, c, height, width)
    canvas = canvas.clone()
    top, left = (height - h) // 2, (width - w) // 2
    canvas[:, :, top : top + h, left : left + w] = x
    return canvas


@dataclass(frozen=True)
class ImagePreprocess:
    """uint8 [B, 3, H, W] (any device) -> normalised float32 [B, 3, size, size]."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    mode: str = "crop"
    fill: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown resize mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.size < 1:
            raise ValueError(f"image size must be positive, got {self.size}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        x = images.float()
        h, w = x.shape[-2:]
        s = self.size
        if self.mode == "crop":
            # torchvision's Resize(int): the short side becomes s, the long side is truncated.
            nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
            x = resize_like_pil(x, nh, nw)
            top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
            x = x[:, :, top : top + s, left : left + s]
        elif self.mode == "letterbox":
            scale = s / max(h, w)
            x = resize_like_pil(x, round(h * scale), round(w * scale))
            x = _pad_to(x, s, s, self.fill)
        elif self.mode == "pad_square":
            side = max(h, w)
            x = resize_like_pil(_pad_to(x, side, side, self.fill), s, s)
        else:
            x = resize_like_pil(x, s, s)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255.0
        return (x - mean) / std

    @classmethod
    def from_hf_processor(cls, config: Mapping[str, Any], mode: str = "crop") -> ImagePreprocess:
        """From a transformers ``CLIPImageProcessor`` config (``preprocessor_config.json``)."""
        size = config.get("crop_size", config.get("size"))
        if isinstance(size, Mapping):
            size = size.get("height", size.get("shortest_edge"))
        if not isinstance(size, int):
            raise ValueError(f"cannot read an image size from processor config {dict(config)}")
        if config.get("resample", 3) != 3:
            raise ValueError(
                f"processor config asks for resample={config['resample']}; only bicubic (3) is supported"
            )
        return cls(
            size=size,
            mean=tuple(config.get("image_mean", CLIP_MEAN)),
            std=tuple(config.get("image_std", CLIP_STD)),
            mode=mode,
        )


def embedding(output: Any) -> torch.Tensor:
    """Projected features from ``get_*_features``: a tensor (transformers 4), or an output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity, computed in float32 whatever the model's precision."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


class Scorer(nn.Module):
    """A reward's maths: uint8 images on the model's device + captions -> float32 [B].

    ``cast`` moves the parts that may run in low precision; heads that the originals run in float32
    stay float32 (a subclass lists them in ``fp32_modules``).
    """

    fp32_modules: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.dtype = torch.float32

    def cast(self, device: torch.device, dtype: torch.dtype) -> Scorer:
        self.to(device=device, dtype=dtype)
        for name in self.fp32_modules:
            getattr(self, name).to(dtype=torch.float32)
        self.dtype = dtype
        return self

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError


class ModuleReward(RewardModel):
    """A :class:`RewardModel` around a :class:`Scorer`: device, dtype, eval mode, batching, weights.

    ``WEIGHTS`` names each outside file the loader needs. Constructors take ``paths`` (component ->
    local file or folder, used as is) and ``sources`` (component -> another hub repo id or URL); every
    component not given a path is fetched through :mod:`miro.rewards.weights`.
    """

    WEIGHTS: ClassVar[dict[str, WeightFile]] = {}

    def __init__(
        self,
        scorer: Scorer,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        dtype: str | torch.dtype = "auto",
    ) -> None:
        super().__init__(device, batch_size)
        self.dtype = resolve_dtype(dtype, self.device)
        self.scorer = scorer.eval().requires_grad_(False).cast(self.device, self.dtype)

    @classmethod
    def weight_files(cls, sources: Mapping[str, str] | None = None) -> dict[str, WeightFile]:
        files = dict(cls.WEIGHTS)
        for component, source in (sources or {}).items():
            if component not in files:
                raise ValueError(
                    f"{cls.name}: unknown weights component {component!r}; use {', '.join(files)}"
                )
            files[component] = replace(files[component], source=source, revision=None)
        return files

    @classmethod
    def download(cls, sources: Mapping[str, str] | None = None) -> dict[str, Path]:
        """Fetch every weight file now (``miro-rewards download``); returns the local paths."""
        return {component: fetch(cls.name, spec) for component, spec in cls.weight_files(sources).items()}

    @classmethod
    def locate(
        cls, paths: Mapping[str, str] | None = None, sources: Mapping[str, str] | None = None
    ) -> dict[str, Path]:
        """Local paths of all components: the ``paths`` given, the rest fetched (cache first)."""
        files = cls.weight_files(sources)
        paths = dict(paths or {})
        unknown = set(paths) - set(files)
        if unknown:
            raise ValueError(
                f"{cls.name}: unknown weights component(s) {sorted(unknown)}; use {', '.join(files)}"
            )
        out = {}
        for component, spec in files.items():
            if component in paths:
                out[component] = Path(paths[component])
                if not out[component].exists():
                    raise FileNotFoundError(f"{cls.name}: {component} weights {out[component]} do not exist")
            else:
                out[component] = fetch(cls.name, spec)
        return out

    def to(self, device: str | torch.device) -> ModuleReward:
        super().to(device)
        self.scorer.cast(self.device, self.dtype)
        return self

    @torch.inference_mode()
    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(captions):
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(captions)} captions")
        return self.scorer(images.to(self.device, non_blocking=True), list(captions)).float().cpu()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version!r}, device={self.device}, dtype={self.dtype})"


class HFClipScorer(Scorer):
    """``logit_scale.exp() * cos(image, text)`` with a transformers CLIP model (PickScore, SciScore).

    Text: padded to the longest caption, truncated to ``max_length`` tokens, as the model cards do.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, preprocess: ImagePreprocess, max_length: int = 77
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.preprocess, self.max_length = (
            model,
            tokenizer,
            preprocess,
            max_length,
        )

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        device = images.device
        pixels = self.preprocess(images).to(self.dtype)
        image_emb = embedding(self.model.get_image_features(pixel_values=pixels))
        tokens = self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        text_emb = embedding(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        )
        return self.model.logit_scale.float().exp() * cosine(image_emb, text_emb)


def load_hf_clip(reward: str, model_dir: str, processor_dir: str) -> HFClipScorer:
    """A transformers ``CLIPModel`` folder plus the folder of the processor the model card names."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(processor_dir)
    check_vocab(reward, len(tokenizer), model.config.text_config.vocab_size, processor_dir)
    config = json.loads((Path(processor_dir) / "preprocessor_config.json").read_text())
    return HFClipScorer(model, tokenizer, ImagePreprocess.from_hf_processor(config))


def check_vocab(reward: str, tokenizer_size: int, model_vocab: int, source: str) -> None:
    """Offline, some tokenizer loaders quietly return a stub; a size mismatch exposes it."""
    if tokenizer_size > model_vocab or tokenizer_size < model_vocab // 2:
        raise ValueError(
            f"{reward}: tokenizer from {source} has {tokenizer_size} tokens but the model's vocabulary has "
            f"{model_vocab}; the tokenizer files are missing or wrong"
        )


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HFClipScorer",
    "ImagePreprocess",
    "ModuleReward",
    "Scorer",
    "check_vocab",
    "cosine",
    "embedding",
    "load_hf_clip",
    "resize_like_pil",
    "resolve_dtype",
]
