"""The ``alignment`` reward: does the image show what its shapes-world caption says?

A programmatic stand-in for GenEval-style detectors: a small deterministic detector finds coloured
shapes in the pixels, the caption is parsed into facts with the shapes grammar
(:mod:`miro.shapes.captions`), and the score is the fraction of those facts that hold. It reads nothing
but pixels and caption, so it scores generated images exactly as it scores the training data.

The detector has to tolerate what small generators and web-like degradations produce (blur, noise,
soft edges, washed-out or tinted colours, JPEG smear) without being satisfiable by noise:

1. Pixels go to CIELAB and the background colour is the median of the frame's border (scenes keep
   objects off the border; the median shrugs off one that touches it in a generated image).
2. Each pixel's offset from the background is compared with each object colour's offset: a pixel
   gets the colour whose *direction* it follows most closely (cosine >= ``min_cos``) if it has gone at
   least ``min_alpha`` of the way there. Working with directions rather than absolute colours makes
   low contrast (which shrinks every offset) and soft edges (partial offsets) harmless.
3. Each colour's labelled pixels seed a sharper mask: pixels more than half-way from the background
   to the colour *as observed in this image*, projected with lightness amplified by
   ``edge_lightness_gain`` because JPEG and chroma subsampling smear chroma but keep lightness edges.
4. Connected regions with at least ``min_area`` of the image in seed pixels (and at least
   ``min_seed_fraction`` of their pixels seeds, so growth cannot knit scattered noise together) are
   objects. Their shape is the nearest prototype in three scale-free features of the mask: the fill
   of its bounding box, the share of it in the box's top half (upward triangles are bottom-heavy)
   and how empty the box's corners are; regions too far from every prototype, or too elongated,
   are "unknown" and match no caption.

Pure noise yields no region large enough and a blank image no region at all, so both score 0.
Captions outside the grammar score NaN (the reward is undefined, not zero): downstream that is a
missing reward value rather than a claim that the image is misaligned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from miro.rewards.base import RewardModel, register_reward
from miro.shapes.captions import COLOURS, CaptionParseError, Fact, fraction_true, parse_caption
from miro.shapes.scenes import OBJECT_RGB

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
# Typical shape_features of each shape, measured on rendered shapes at 24-64 px: antialiasing at these
# sizes moves fill and top share off their ideal values (1, 0.5), (pi/4, 0.5), (0.5, 0.25), and a
# 9-pixel circle digitises to a rounded square whose fill alone would say "square"; its empty corners don't.
SHAPE_PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "square": (0.98, 0.5, 0.1),
    "circle": (0.77, 0.5, 1.0),
    "triangle": (0.6, 0.3, 0.6),
}
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detected:
    """A detected object: ``center`` is its bounding-box centre (fractions of width and height, y down)
    and ``area`` its share of the image; ``shape`` is ``"unknown"`` when no prototype fits."""

    shape: str
    colour: str
    center: tuple[float, float]
    area: float


@dataclass(frozen=True)
class DetectorConfig:
    """Detector tolerances (tuned on degraded renders at 32 px, see the module docstring)."""

    min_area: float = 0.02  # 20 px at 32 px: above a 4x4 patch, below the smallest rendered shape
    min_cos: float = 0.8
    min_alpha: float = 0.35
    edge_lightness_gain: float = 16.0
    min_seed_fraction: float = 0.5
    min_aspect: float = 0.6
    feature_scale: tuple[float, float, float] = (0.1, 0.06, 0.4)
    max_shape_distance: float = 3.0


def _srgb_to_linear_table() -> np.ndarray:
    v = np.arange(256, dtype=np.float64) / 255.0
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92).astype(np.float32)


_SRGB_TO_LINEAR = _srgb_to_linear_table()
# Linear sRGB -> XYZ, rows divided by the D65 white point so that white maps to (1, 1, 1).
_RGB_TO_XYZ = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=np.float32
) / np.array([[0.95047], [1.0], [1.08883]], dtype=np.float32)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] sRGB -> float32 [..., 3] CIELAB (D65)."""
    xyz = _SRGB_TO_LINEAR[rgb] @ _RGB_TO_XYZ.T
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1
    )


_REFERENCE_LAB = srgb_to_lab(np.array([OBJECT_RGB[c] for c in COLOURS], dtype=np.uint8))


def estimate_background(lab: np.ndarray) -> np.ndarray:
    """Lab colour of the background: the median of the frame's one-pixel border."""
    border = np.concatenate([lab[0], lab[-1], lab[1:-1, 0], lab[1:-1, -1]])
    return np.median(border, axis=0)


def classify_pixels(lab: np.ndarray, background: np.ndarray, config: DetectorConfig) -> np.ndarray:
    """Per-pixel index into ``COLOURS``, or -1 for background (step 2 of the module docstring)."""
    offsets = lab - background
    directions = _REFERENCE_LAB - background  # colours x 3
    dots = offsets @ directions.T  # H, W, colours
    lengths2 = np.maximum((directions**2).sum(-1), 1e-6)  # 0 only when the background is an object colour
    cos = dots / np.sqrt(lengths2 * np.maximum((offsets**2).sum(-1, keepdims=True), 1e-12))
    best = cos.argmax(-1)[..., None]
    ok = (np.take_along_axis(cos, best, -1) >= config.min_cos) & (
        np.take_along_axis(dots / lengths2, best, -1) >= config.min_alpha
    )
    return np.where(ok[..., 0], best[..., 0], -1)


def object_masks(
    lab: np.ndarray, label: np.ndarray, background: np.ndarray, colour: int, config: DetectorConfig
) -> np.ndarray:
    """Sharp masks of one colour's objects (step 3): a coverage estimate that survives blur and
    JPEG smear; it never takes pixels labelled with another colour and stays near the seeds."""
    seeds = label == colour
    observed = np.median(lab[seeds], axis=0)
    gain = np.array([config.edge_lightness_gain, 1.0, 1.0], dtype=np.float32)
    direction = (observed - background) * gain
    coverage = ((lab - background) @ direction) / max(float((observed - background) @ direction), 1e-6)
    near = ndimage.binary_dilation(seeds, structure=_EIGHT_CONNECTED, iterations=2)
    return (coverage > 0.5) & near & ((label == colour) | (label < 0))


def shape_features(mask: np.ndarray) -> tuple[float, float, float]:
    """Scale-free features of a mask cropped to its bounding box: the fill of the box, the share of the
    mask in the box's top half (upward triangles are bottom-heavy) and the share of empty pixels in
    the box's four corners (right triangles with legs a fifth of the side): 0 for a square, 1 for a
    circle, 2/3 for an ideal upward triangle."""
    h, w = mask.shape
    rows = mask.sum(1).astype(np.float64)
    area = rows.sum()
    half = h // 2
    top = rows[:half].sum() + (rows[half] / 2 if h % 2 else 0.0)
    k = max(1, round(0.2 * min(h, w)))
    corner = np.add.outer(np.arange(k), np.arange(k)) < k
    flips = (mask[:k, :k], mask[:k, ::-1][:, :k], mask[::-1][:k, :k], mask[::-1, ::-1][:k, :k])
    empty = sum(int((~c[corner]).sum()) for c in flips) / (4 * corner.sum())
    return float(area / (h * w)), float(top / area), float(empty)


def classify_shape(mask: np.ndarray, config: DetectorConfig) -> str:
    """Nearest prototype shape of a cropped mask, or ``"unknown"`` for elongated or odd regions."""
    h, w = mask.shape
    if min(h, w) / max(h, w) < config.min_aspect:
        return UNKNOWN
    features = np.array(shape_features(mask))
    scale = np.array(config.feature_scale)
    dist = {s: float(np.linalg.norm((features - p) / scale)) for s, p in SHAPE_PROTOTYPES.items()}
    best = min(dist, key=dist.__getitem__)
    return best if dist[best] <= config.max_shape_distance else UNKNOWN


def detect_objects(image: np.ndarray, config: DetectorConfig | None = None) -> list[Detected]:
    """Coloured shapes in an RGB uint8 [H, W, 3] image, from the pixels alone."""
    config = config or DetectorConfig()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise ValueError(
            f"expected a uint8 image of shape [H, W, 3] with H, W >= 8, got {image.dtype} {image.shape}"
        )
    h, w = image.shape[:2]
    lab = srgb_to_lab(image)
    background = estimate_background(lab)
    label = classify_pixels(lab, background, config)
    min_pixels = config.min_area * h * w
    found = []
    for colour in np.unique(label):
        if colour < 0 or (label == colour).sum() < min_pixels:
            continue
        regions, n = ndimage.label(
            object_masks(lab, label, background, int(colour), config), _EIGHT_CONNECTED
        )
        sizes = np.bincount(regions.ravel(), minlength=n + 1)
        seeds = np.bincount(regions.ravel(), weights=(label == colour).ravel(), minlength=n + 1)
        for r, box in enumerate(ndimage.find_objects(regions), start=1):
            if box is None or seeds[r] < min_pixels or seeds[r] < config.min_seed_fraction * sizes[r]:
                continue
            ys, xs = box
            mask = ndimage.binary_fill_holes(regions[box] == r)
            center = ((xs.start + xs.stop) / 2 / w, (ys.start + ys.stop) / 2 / h)
            found.append(
                Detected(classify_shape(mask, config), COLOURS[colour], center, float(mask.sum() / (h * w)))
            )
    return found


@lru_cache(maxsize=65536)
def _facts(caption: str) -> tuple[Fact, ...] | None:
    """Parsed captions, cached: evaluation loops score the same prompts over and over."""
    try:
        return tuple(parse_caption(caption))
    except CaptionParseError as err:
        log.debug("alignment: %s", err)
        return None


@register_reward
class AlignmentReward(RewardModel):
    """Fraction of the caption's facts (objects with colours, exact counts, relations) seen in the image.

    ``relation_margin`` (in image widths) is how far apart two centres must be for "left of" etc. to
    hold; captions only state relations with a much larger gap, so this only absorbs jitter.
    """

    name = "alignment"
    version = "1"
    aliases = ("align",)
    needs_captions = True

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        relation_margin: float = 0.02,
        config: DetectorConfig | None = None,
    ) -> None:
        super().__init__(device, batch_size)
        self.relation_margin = float(relation_margin)
        self.config = config or DetectorConfig()

    def score_image(self, image: np.ndarray, caption: str) -> float:
        """Score one RGB uint8 [H, W, 3] image; NaN if the caption is not in the shapes grammar."""
        facts = _facts(caption)
        if facts is None:
            return float("nan")
        return fraction_true(facts, detect_objects(image, self.config), self.relation_margin)

    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(captions):
            raise ValueError(f"alignment: {images.shape[0]} images but {len(captions)} captions")
        hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        scores = [self.score_image(img, cap) for img, cap in zip(hwc, captions, strict=True)]
        return torch.tensor(scores, dtype=torch.float32)
