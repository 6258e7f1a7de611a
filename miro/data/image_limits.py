"""Decoded-size limits for images read from shards, checked before any pixel is decoded.

A web shard is untrusted: a 500 KB PNG can claim 9500 x 9500 pixels and decode to 270 MB, a few of
them in a batch exhaust memory. PIL reads only the header in ``Image.open``, so the size an image
*would* decode to is known before decoding; an image over the limit is refused there with a reason
the stage puts in its report. PIL's own ``DecompressionBombError`` starts at ~179 Mpx, far above what
a training or scoring batch can hold, hence limits of our own.

JPEG draft mode: when the caller knows the size it will resize to (latent caching crops and resizes
to ``image_size``), the JPEG decoder is asked for a 1/2, 1/4 or 1/8 scale that is still at least that
size, so a 4000 px photo cached at 256 px decodes at 500 px.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image


class ImageTooLargeError(ValueError):
    """An image whose header claims more pixels than the limits allow; the message says how many."""


@dataclass(frozen=True)
class ImageLimits:
    """The largest image a stage decodes. Defaults are generous for real data sets (LAION / CC12M
    photos are a few Mpx); ``conf/score.yaml`` and ``conf/cache_latents.yaml`` set them."""

    max_side: int = 8192  # pixels on the long side
    max_pixels: int = 4096 * 4096  # width x height (16.8 Mpx: 48 MB as RGB uint8)

    def __post_init__(self) -> None:
        if int(self.max_side) < 1 or int(self.max_pixels) < 1:
            raise ValueError(
                f"image limits must be positive, got max_side={self.max_side} max_pixels={self.max_pixels}"
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> ImageLimits:
        """From a config mapping (``image_limits`` in conf/), defaults for keys it leaves out."""
        if cfg is None:
            return cls()
        unknown = set(cfg) - {"max_side", "max_pixels"}
        if unknown:
            raise ValueError(f"image_limits: unknown key(s) {sorted(unknown)}; known: max_side, max_pixels")
        values = {k: _positive_int(f"image_limits.{k}", v) for k, v in cfg.items()}
        return cls(**values)

    def to_json(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}

    def check(self, width: int, height: int) -> None:
        if max(width, height) > self.max_side or width * height > self.max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} ({width * height / 1e6:.1f} Mpx), over the decoded-size limit "
                f"(max_side={self.max_side}, max_pixels={self.max_pixels}); not decoded"
            )


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def open_rgb(data: bytes, limits: ImageLimits | None, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image, refusing sizes over ``limits`` from the header alone.

    ``draft_size``: the side the caller will shrink to; a JPEG is then decoded at the smallest DCT
    scale whose both sides are still at least that. Raises :class:`ImageTooLargeError`, or whatever PIL
    raises for a corrupt file.
    """
    with Image.open(io.BytesIO(data)) as img:  # reads the header only
        if limits is not None:
            limits.check(*img.size)
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        return img.convert("RGB")
