"""What both sides of a parity run share: the inputs, the tiny architectures, the file names.

Runs in every venv (numpy, PIL, torch only). Images are generated, not downloaded: smooth gradients,
noise, hard-edged shapes and text-like stripes at the odd sizes where resize and crop rules differ
(SDXL's 832 x 1216 among them), so resampling and crop offsets are exercised the way photos would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# (height, width): portrait and landscape, one square; 832x1216 (SDXL), 449x300 and 251x333 (width x
# height) leave an odd centre-crop margin at 224 px (103, 111, 73), where torchvision and transformers
# place the crop one pixel apart.
IMAGE_SIZES = (
    (451, 300),
    (250, 333),
    (1216, 832),
    (512, 512),
    (300, 451),
    (333, 250),
    (300, 449),
    (333, 251),
)
CAPTIONS = (
    "a red circle on a blue background",
    "two blue squares above a yellow triangle",
    "a photograph of a mountain lake at sunset",
    "a cat sitting on a wooden table",
    "an astronaut riding a horse, digital art",
    "a bowl of fruit next to a window",
    "a lighthouse on a rocky coast",
    "a green bicycle leaning against a brick wall",
)
SEED = 0
# Tiny open_clip architecture (same JSON for hpsv2's vendored open_clip and open_clip 3): ViT-H-14's
# layout (GELU) at a few thousand parameters per layer, the real 224 px input and CLIP vocabulary.
OPEN_CLIP_TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
OPEN_CLIP_TINY_NAME = "parity-tiny"
# OpenAI CLIP (the aesthetic predictor's tower) at a tiny size; OpenAI's ViT needs width // 64 heads.
OPENAI_CLIP_TINY = dict(
    embed_dim=16,
    image_resolution=224,
    vision_layers=2,
    vision_width=128,
    vision_patch_size=32,
    context_length=77,
    vocab_size=49408,
    transformer_width=32,
    transformer_heads=2,
    transformer_layers=2,
)
OPENAI_CLIP_TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
OPENAI_CLIP_TINY_NAME = "parity-tiny-openai"
# BLIP's ViT as ImageReward's create_vit builds it, tiny (ImageReward's MLP fixes the text width: 768).
BLIP_VIT_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    image_size=224,
    patch_size=16,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)


def natural_image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic photo-like uint8 RGB image [height, width, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = np.stack(
        [
            120 + 100 * np.sin(3 * yy + phase[0]) * np.cos(2 * xx),
            110 + 90 * np.cos(4 * xx + phase[1]),
            100 + 80 * np.sin(5 * (xx + yy) + phase[2]),
        ],
        axis=-1,
    )
    # Low-frequency texture plus pixel noise, like a sensor.
    coarse = rng.normal(0, 25, (max(height // 16, 2), max(width // 16, 2), 3))
    coarse = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    pad = ((0, height - coarse.shape[0]), (0, width - coarse.shape[1]), (0, 0))
    img = img + np.pad(coarse, pad, mode="edge") + rng.normal(0, 6, img.shape)
    for _ in range(4):  # hard-edged discs and boxes
        cy, cx, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.05, 0.2)
        colour = rng.uniform(0, 255, 3)
        if rng.uniform() < 0.5:
            mask = (yy - cy) ** 2 + ((xx - cx) * width / height) ** 2 < r**2
        else:
            mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * 0.6)
        img[mask] = colour
    stripes = (np.sin(xx * width / 3.0) > 0.6) & (yy > 0.9)  # fine, text-like detail near the bottom
    img[stripes] = 15
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_inputs(folder: Path) -> list[Path]:
    """The images as PNGs (lossless, so every venv decodes the same bytes) and captions.json."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        path = folder / f"image{i}_{w}x{h}.png"
        Image.fromarray(natural_image(h, w, SEED + i)).save(path)
        paths.append(path)
    (folder / "captions.json").write_text(json.dumps(list(CAPTIONS)))
    return paths


def read_inputs(folder: Path) -> tuple[list[Path], list[str]]:
    paths = sorted(folder.glob("image*.png"), key=lambda p: int(p.name[5 : p.name.index("_")]))
    return paths, json.loads((folder / "captions.json").read_text())


def package_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def save_result(folder: Path, pixels, scores, versions: dict[str, str], **extra) -> None:
    """One side's output: preprocessed pixels [N, 3, S, S], scores [N], versions (torch file)."""
    import torch

    torch.save(
        {"pixels": pixels.float().cpu(), "scores": scores.double().cpu(), "versions": versions, **extra},
        folder / "original.pt",
    )
