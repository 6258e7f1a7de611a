"""Turn one raw annotated sample into training tensors.

One function per mode, shared by the streaming pipeline and the in-memory cache, so the two can never
disagree on how an image is normalised or how raw reward scores become conditioning values.

Two modes:

* **raw**: ``KEY.jpg`` + ``KEY.txt`` -> an image in [-1, 1] that the training step encodes with the VAE,
  and a caption the text encoder reads (:func:`decode_sample`, :func:`collate`).
* **cached** (written by ``data_prep.cache_latents``): the VAE latent and the text encoder's token
  features are stored with the sample, so a training step decodes no JPEG and runs no frozen encoder
  (:func:`decode_cached_sample`, :func:`collate_cached`). The cached fields, all ``.npy`` bytes
  (``numpy.save``, never pickled):

  ==================  =========================================================================
  ``latent.npy``      float32 [C, h, w]: the VAE posterior mean (or one posterior sample), already
                      on the diffusion scale (``(z - shift) * scaling_factor``)
  ``latent_std.npy``  float32 [C, h, w], optional: the posterior's standard deviation on the same
                      scale; when present, every training step draws ``mean + std * eps``
  ``text_tokens.npy`` float16 [L, D]: the encoder's features of the L real tokens only (no
                      padding; the batch pads and builds the mask)
  ==================  =========================================================================

  The caption (``txt``) and rewards (``rewards.json``) are kept as they were, so binning, logging and
  sample grids work as in raw mode.

A sample may also carry a synthetic caption (``syn.txt``, written by ``make caption-shards``) and, when
cached, its features (``syn_text_tokens.npy``); examples then hold ``syn_caption`` (and
``syn_text_tokens``) beside the original, and the data module mixes the two (MIRO: 50/50).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from miro.data.bins import RewardBins
from miro.data.image_limits import ImageLimits, ImageTooLargeError, open_rgb
from miro.data.shards import IMAGE_EXTS
from miro.utils.text_batch import pad_rows


class SampleDecodeError(ValueError):
    """A sample that cannot be used for training; the message names its key and field."""


def decode_image(data: bytes, key: str, image_size: int, limits: ImageLimits | None = None) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 [3, S, S] (center-cropped square, resized if needed).

    uint8, not float: the in-memory data set keeps a quarter of the bytes, and converting to the model's
    [-1, 1] range (:func:`to_model_range`) is one cheap operation on a whole batch.

    With ``limits`` (latent caching passes them), an image whose header claims more is refused before
    decoding, and a JPEG is decoded in draft mode at the smallest DCT scale still >= ``image_size``.
    """
    try:
        if limits is not None:
            img = open_rgb(data, limits, draft_size=image_size)
        else:
            img = Image.open(io.BytesIO(data))
            img = img.convert("RGB")
    except ImageTooLargeError as err:
        raise SampleDecodeError(f"sample {key}: {err}") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise SampleDecodeError(f"sample {key}: cannot decode image ({err})") from None
    w, h = img.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size[0] != image_size:
        img = img.resize((image_size, image_size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1], the range the flow model and VAE work in."""
    return images.float().div(127.5).sub(1.0)


def reward_conditioning(
    raw_scores: dict[str, float], reward_names: Sequence[str], bins: RewardBins | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores -> (values in [0, 1], present mask) in the order of ``reward_names``.

    A reward that was not scored, is NaN, or has no fitted bins is "missing": value 0, mask False.
    """
    values = torch.zeros(len(reward_names), dtype=torch.float32)
    present = torch.zeros(len(reward_names), dtype=torch.bool)
    for i, name in enumerate(reward_names):
        raw = raw_scores.get(name)
        if raw is None or bins is None or name not in bins.names:
            continue
        value = bins.to_value(name, float(raw))
        if value == value:  # not NaN
            values[i] = float(value)
            present[i] = True
    return values, present


SYN_CAPTION_EXT = "syn.txt"
SYN_TEXT_TOKENS_EXT = "syn_text_tokens.npy"


def caption_of(sample: dict[str, Any], key: str, field: str = "txt") -> str:
    if field not in sample:
        raise SampleDecodeError(f"sample {key}: no caption ({field}) field")
    txt = sample[field]
    if not isinstance(txt, bytes):
        return str(txt)
    try:
        return txt.decode("utf-8")
    except UnicodeDecodeError:
        raise SampleDecodeError(f"sample {key}: caption ({field}) is not UTF-8") from None


def synthetic_caption_of(sample: dict[str, Any], key: str) -> str | None:
    """The synthetic caption (``syn.txt``), or None when the sample has none (or it is empty)."""
    if SYN_CAPTION_EXT not in sample:
        return None
    return caption_of(sample, key, SYN_CAPTION_EXT).strip() or None


def raw_scores(sample: dict[str, Any], key: str, reward_names: Sequence[str]) -> dict[str, float]:
    """The raw scores of ``rewards.json`` ({} when no reward is conditioned on)."""
    if not reward_names:
        return {}
    if "rewards.json" not in sample:
        raise SampleDecodeError(f"sample {key}: no rewards.json field (score the shards first)")
    try:
        return json.loads(sample["rewards.json"])["scores"]
    except (ValueError, KeyError, TypeError) as err:
        raise SampleDecodeError(f"sample {key}: malformed rewards.json ({err})") from None


def decode_sample(
    sample: dict[str, Any], image_size: int, reward_names: Sequence[str], bins: RewardBins | None
) -> dict[str, Any]:
    """Raw webdataset sample (bytes per extension) -> training example."""
    key = sample.get("__key__", "?")
    image_bytes = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
    if image_bytes is None:
        raise SampleDecodeError(f"sample {key}: no image (jpg/png/webp) field")
    caption = caption_of(sample, key)
    values, present = reward_conditioning(raw_scores(sample, key, reward_names), reward_names, bins)
    return {
        "image": decode_image(image_bytes, key, image_size),
        "caption": caption,
        "syn_caption": synthetic_caption_of(sample, key),
        "rewards": values,
        "reward_mask": present,
        "key": key,
    }


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": to_model_range(torch.stack([e["image"] for e in examples])),
        "caption": [e["caption"] for e in examples],
        "rewards": torch.stack([e["rewards"] for e in examples]),
        "reward_mask": torch.stack([e["reward_mask"] for e in examples]),
    }


# --------------------------------------------------------------------------------------------------
# Cached latents and text features

LATENT_EXT = "latent.npy"
LATENT_STD_EXT = "latent_std.npy"
TEXT_TOKENS_EXT = "text_tokens.npy"


def encode_array(array: np.ndarray) -> bytes:
    """``.npy`` bytes; ``allow_pickle=False`` so reading a shard can never execute code."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes, key: str, field: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise SampleDecodeError(f"sample {key}: malformed {field} ({err})") from None


def decode_cached_sample(
    sample: dict[str, Any], reward_names: Sequence[str], bins: RewardBins | None
) -> dict[str, Any]:
    """Raw sample of a cached shard -> training example (latent, text features, rewards, caption)."""
    key = sample.get("__key__", "?")
    for field in (LATENT_EXT, TEXT_TOKENS_EXT):
        if field not in sample:
            raise SampleDecodeError(f"sample {key}: no {field} field (run cache-latents on the shards)")
    latent = decode_array(sample[LATENT_EXT], key, LATENT_EXT)
    if latent.ndim != 3:
        raise SampleDecodeError(f"sample {key}: {LATENT_EXT} must be [C, h, w], got shape {latent.shape}")
    tokens = decode_array(sample[TEXT_TOKENS_EXT], key, TEXT_TOKENS_EXT)
    if tokens.ndim != 2 or tokens.shape[0] < 1:
        raise SampleDecodeError(
            f"sample {key}: {TEXT_TOKENS_EXT} must be [L >= 1, D], got shape {tokens.shape}"
        )
    example: dict[str, Any] = {
        "latent": torch.from_numpy(latent.astype(np.float32, copy=False)),
        "text_tokens": torch.from_numpy(tokens),
    }
    if LATENT_STD_EXT in sample:
        std = decode_array(sample[LATENT_STD_EXT], key, LATENT_STD_EXT)
        if std.shape != latent.shape:
            raise SampleDecodeError(
                f"sample {key}: {LATENT_STD_EXT} shape {std.shape} differs from {LATENT_EXT} {latent.shape}"
            )
        example["latent_std"] = torch.from_numpy(std.astype(np.float32, copy=False))
    if SYN_TEXT_TOKENS_EXT in sample:
        syn = decode_array(sample[SYN_TEXT_TOKENS_EXT], key, SYN_TEXT_TOKENS_EXT)
        if syn.ndim != 2 or syn.shape[0] < 1 or syn.shape[1] != tokens.shape[1]:
            raise SampleDecodeError(
                f"sample {key}: {SYN_TEXT_TOKENS_EXT} must be [L >= 1, {tokens.shape[1]}], "
                f"got shape {syn.shape}"
            )
        example["syn_text_tokens"] = torch.from_numpy(syn)
    values, present = reward_conditioning(raw_scores(sample, key, reward_names), reward_names, bins)
    example.update(caption=caption_of(sample, key), syn_caption=synthetic_caption_of(sample, key),
                   rewards=values, reward_mask=present, key=key)
    return example


def collate_cached(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Cached examples -> batch with ``latent`` [B, C, h, w], ``text_tokens`` / ``text_mask``, captions."""
    rows = [e["text_tokens"].float() for e in examples]
    text_tokens, text_mask = pad_rows(rows, rows[0].shape[1])
    batch = {
        "latent": torch.stack([e["latent"] for e in examples]),
        "text_tokens": text_tokens,
        "text_mask": text_mask,
        "caption": [e["caption"] for e in examples],
        "rewards": torch.stack([e["rewards"] for e in examples]),
        "reward_mask": torch.stack([e["reward_mask"] for e in examples]),
    }
    stds = [e.get("latent_std") for e in examples]
    if any(s is not None for s in stds):
        if any(s is None for s in stds):
            raise ValueError("a batch mixes samples with and without latent_std.npy; re-cache the shards")
        batch["latent_std"] = torch.stack(stds)
    return batch
