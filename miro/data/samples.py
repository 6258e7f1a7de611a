"""Turn one raw annotated sample into training tensors.

One function, shared by the streaming pipeline and the in-memory cache, so the two can never disagree
on how an image is normalised or how raw reward scores become conditioning values.
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


class SampleDecodeError(ValueError):
    """A sample that cannot be used for training; the message names its key and field."""


def decode_image(data: bytes, key: str, image_size: int) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 [3, S, S] (center-cropped square, resized if needed).

    uint8, not float: the in-memory data set keeps a quarter of the bytes, and converting to the model's
    [-1, 1] range (:func:`to_model_range`) is one cheap operation on a whole batch.
    """
    try:
        img = Image.open(io.BytesIO(data))
        img = img.convert("RGB")
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


def decode_sample(
    sample: dict[str, Any], image_size: int, reward_names: Sequence[str], bins: RewardBins | None
) -> dict[str, Any]:
    """Raw webdataset sample (bytes per extension) -> training example."""
    key = sample.get("__key__", "?")
    image_bytes = next((sample[ext] for ext in ("jpg", "jpeg", "png", "webp") if ext in sample), None)
    if image_bytes is None:
        raise SampleDecodeError(f"sample {key}: no image (jpg/png/webp) field")
    if "txt" not in sample:
        raise SampleDecodeError(f"sample {key}: no caption (txt) field")
    caption = sample["txt"].decode("utf-8") if isinstance(sample["txt"], bytes) else str(sample["txt"])
    scores: dict[str, float] = {}
    if reward_names:
        if "rewards.json" not in sample:
            raise SampleDecodeError(f"sample {key}: no rewards.json field (score the shards first)")
        try:
            scores = json.loads(sample["rewards.json"])["scores"]
        except (ValueError, KeyError, TypeError) as err:
            raise SampleDecodeError(f"sample {key}: malformed rewards.json ({err})") from None
    values, present = reward_conditioning(scores, reward_names, bins)
    return {
        "image": decode_image(image_bytes, key, image_size),
        "caption": caption,
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
