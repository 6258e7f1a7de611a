"""What the CLIP-family rewards share: image preprocessing, precision handling and the HF CLIP score.

All seven MIRO rewards look at images through a CLIP-style tower, each with its own resolution,
normalisation and resize rule. The originals preprocess PIL images one at a time; here a whole uint8
batch is preprocessed as tensors on the scoring device. Two resize kernels, because the originals use two:

* ``"pil"`` (:func:`resize_like_pil`): PIL's bicubic, bit for bit. PIL resizes horizontally, rounds to
  uint8, then vertically and rounds again, with filter taps in 22-bit fixed point; that arithmetic is
  reproduced exactly (integer taps, float64 sums, which hold every partial sum exactly), so the result
  equals ``Image.resize(..., BICUBIC)`` to the grey level. A single float pass can be 25 levels off
  next to sharp edges. OpenAI CLIP, open_clip's default transform, BLIP and transformers' image
  processors all resize PIL images.
* ``"tensor"`` (:func:`resize_like_tensor`): one antialiased bicubic ``F.interpolate`` on the float
  image, no rounding, no clamping: what torchvision's ``F.resize`` does to a float tensor. hpsv2 calls
  ``ToTensor()`` *before* its ``ResizeMaxSize``, so HPS resizes this way.

Resize rules (``ImagePreprocess.mode``):

* ``"crop"``: shortest side to ``size`` (the long side truncated as torchvision does), centre crop.
  OpenAI CLIP, open_clip's default, transformers' ``CLIPImageProcessor``, BLIP. The crop offset differs
  when the margin is odd: torchvision's ``CenterCrop`` takes ``round(margin / 2)`` (Python's round, half
  to even), transformers' ``center_crop`` takes ``margin // 2`` (``ImagePreprocess.crop_offset``).
* ``"letterbox"``: longest side to ``size`` (rounded), pad to a square with ``fill``, the image centred
  (left/top padding ``pad // 2``). HPSv2's ``ResizeMaxSize`` and open_clip's ``resize_mode="longest"``.
* ``"pad_square"``: pad to a square with ``fill`` first (LLaVA's ``expand2square``), then resize.
* ``"squash"``: resize to ``size`` x ``size`` ignoring the aspect ratio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from miro.rewards.base import RewardModel
from miro.rewards.checkpoints import LoadReport, hf_loading_report
from miro.rewards.weights import WeightFile, fetch

# OpenAI CLIP's normalisation, used by every model here (BLIP and LLaVA reuse it).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("crop", "letterbox", "pad_square", "squash")
RESIZE_KERNELS = ("pil", "tensor")
CROP_OFFSETS = ("torchvision", "transformers")
# PIL's fixed-point precision for 8-bit resampling (libImaging/Resample.c: 32 - 8 - 2).
_PIL_PRECISION_BITS = 22
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


def _pil_bicubic(x: float) -> float:
    """PIL's bicubic filter (a = -0.5)."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@lru_cache(maxsize=64)
def pil_resize_weights(in_size: int, out_size: int) -> torch.Tensor:
    """PIL's fixed-point bicubic taps for one axis as a float64 [out_size, in_size] matrix of integers.

    A transcription of ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` (Pillow's Resample.c): the
    support widens with the downscaling factor (antialiasing), each row is normalised to sum 1 in double
    precision, then each tap is rounded half away from zero to ``2**22`` fixed point.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    # Pillow multiplies by the inverse; dividing instead can differ in the last bit.
    inv_filterscale = 1.0 / filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = [_pil_bicubic((x - center + 0.5) * inv_filterscale) for x in range(xmin, xmax)]
        total = 0.0
        for tap in taps:
            total += tap
        for offset, tap in enumerate(taps):
            k = tap / total if total != 0.0 else tap
            scaled = k * (1 << _PIL_PRECISION_BITS)
            weights[xx, xmin + offset] = int(scaled - 0.5) if k < 0 else int(scaled + 0.5)
    return weights


def _pil_pass(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One PIL resampling pass along the last axis of float64 grey levels: sum, round, clip to uint8.

    Every product is an integer below 2**31 and every partial sum below 2**53, so float64 is exact.
    """
    acc = x @ weights.to(x.device).T + float(1 << (_PIL_PRECISION_BITS - 1))
    return torch.floor(acc / float(1 << _PIL_PRECISION_BITS)).clamp_(0, 255)


def _pil_major() -> int:
    import PIL

    return int(PIL.__version__.split(".")[0])


# Pillow 13 reordered the passes for tall shrinks; the Pillow installed here decides (the app extra's
# Gradio still needs Pillow < 13, so both occur).
PIL_VERTICAL_FIRST = _pil_major() >= 13


def resize_like_pil(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of float [B, C, H, W] grey levels (integers in 0..255) exactly as PIL does it.

    Two passes, each rounded to uint8, in Pillow's order (``ImagingResampleInner``): horizontal first,
    unless the height shrinks by more than twice as many pixels as the width does (Pillow 13 then runs
    the vertical pass first; Pillow releases before that change always went horizontal first: the
    installed Pillow's order is used, :data:`PIL_VERTICAL_FIRST`). An axis
    whose size does not change is not resampled.
    """
    dtype = x.dtype
    x = x.to(torch.float64)
    in_height, in_width = x.shape[-2:]

    def horizontal(t: torch.Tensor) -> torch.Tensor:
        return _pil_pass(t, pil_resize_weights(t.shape[-1], width)) if t.shape[-1] != width else t

    def vertical(t: torch.Tensor) -> torch.Tensor:
        if t.shape[-2] == height:
            return t
        return _pil_pass(t.transpose(-1, -2), pil_resize_weights(t.shape[-2], height)).transpose(-1, -2)

    shrink = in_height - height
    vertical_first = PIL_VERTICAL_FIRST and shrink > 0 and shrink > (in_width - width) * 2
    x = horizontal(vertical(x)) if vertical_first else vertical(horizontal(x))
    return x.to(dtype)


def resize_like_tensor(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's ``F.resize`` of a float tensor: one antialiased bicubic pass, no rounding or clamping."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)


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
    """uint8 [B, 3, H, W] (any device) -> normalised float32 [B, 3, size, size].

    ``kernel``: ``"pil"`` (PIL's two rounded passes, bit-exact) or ``"tensor"`` (one float pass, as
    torchvision resizes a float tensor). ``crop_offset``: how ``"crop"`` places an odd margin,
    ``"torchvision"`` (``round(margin / 2)``) or ``"transformers"`` (``margin // 2``).
    """

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    mode: str = "crop"
    fill: tuple[int, int, int] = (0, 0, 0)
    kernel: str = "pil"
    crop_offset: str = "torchvision"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown resize mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.kernel not in RESIZE_KERNELS:
            raise ValueError(f"unknown resize kernel {self.kernel!r}; use one of {', '.join(RESIZE_KERNELS)}")
        if self.crop_offset not in CROP_OFFSETS:
            raise ValueError(
                f"unknown crop offset {self.crop_offset!r}; use one of {', '.join(CROP_OFFSETS)}"
            )
        if self.size < 1:
            raise ValueError(f"image size must be positive, got {self.size}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        x = self.resize(images)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255.0
        return (x - mean) / std

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """The geometric part: uint8 [B, 3, H, W] -> float [B, 3, size, size] in grey levels 0..255."""
        x = images.float()
        h, w = x.shape[-2:]
        s = self.size
        resize = resize_like_pil if self.kernel == "pil" else resize_like_tensor
        if self.mode == "crop":
            # torchvision's Resize(int) and transformers' shortest_edge: the short side becomes s, the
            # long side is truncated.
            nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
            x = resize(x, nh, nw)
            top, left = self.centre_crop_offset(nh - s), self.centre_crop_offset(nw - s)
            x = x[:, :, top : top + s, left : left + s]
        elif self.mode == "letterbox":
            scale = s / max(h, w)
            x = resize(x, round(h * scale), round(w * scale))
            x = _pad_to(x, s, s, self.fill)
        elif self.mode == "pad_square":
            side = max(h, w)
            x = resize(_pad_to(x, side, side, self.fill), s, s)
        else:
            x = resize(x, s, s)
        return x

    def centre_crop_offset(self, margin: int) -> int:
        """Top (or left) offset of a centre crop that leaves ``margin`` pixels."""
        if self.crop_offset == "transformers":
            return margin // 2  # transformers.image_transforms.center_crop
        return int(round(margin / 2.0))  # torchvision.transforms.functional.center_crop

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
            crop_offset="transformers",
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
        # What the loader dropped from the checkpoint and why (None: built in memory, not loaded).
        self.load_report: LoadReport | None = None

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

    model, info = CLIPModel.from_pretrained(model_dir, output_loading_info=True)
    report = LoadReport(str(model_dir))
    hf_loading_report(reward, model_dir, info, report)
    tokenizer = AutoTokenizer.from_pretrained(processor_dir)
    check_vocab(reward, len(tokenizer), model.config.text_config.vocab_size, processor_dir)
    config = json.loads((Path(processor_dir) / "preprocessor_config.json").read_text())
    scorer = HFClipScorer(model, tokenizer, ImagePreprocess.from_hf_processor(config))
    scorer.load_report = report
    return scorer


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
    "pil_resize_weights",
    "resize_like_pil",
    "resize_like_tensor",
    "resolve_dtype",
]
