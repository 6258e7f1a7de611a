"""HPSv2 with hpsv2 1.2.0's own open_clip fork: ``create_model_and_transforms(..., light_augmentation=True)``
and the scoring of ``hpsv2.img_score.score`` (features from ``model(image, text)``, their dot product)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch

from parity.common import (
    OPEN_CLIP_TINY,
    OPEN_CLIP_TINY_NAME,
    SEED,
    package_versions,
    read_inputs,
    save_result,
)


def main(work: Path) -> None:
    from importlib.util import find_spec

    # Import the vendored open_clip without hpsv2/__init__.py (which pulls in clint/requests for downloads).
    root = Path(find_spec("hpsv2").submodule_search_locations[0])
    for name, path in (("hpsv2", root), ("hpsv2.src", root / "src")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    from hpsv2.src.open_clip import add_model_config, create_model_and_transforms, get_tokenizer
    from PIL import Image

    out = work / "hps"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{OPEN_CLIP_TINY_NAME}.json").write_text(json.dumps(OPEN_CLIP_TINY))
    add_model_config(out / f"{OPEN_CLIP_TINY_NAME}.json")
    torch.manual_seed(SEED + 10)
    model, _, preprocess_val = create_model_and_transforms(
        OPEN_CLIP_TINY_NAME,
        None,
        precision="fp32",
        device="cpu",
        jit=False,
        force_quick_gelu=False,
        force_custom_text=False,
        force_patch_dropout=False,
        force_image_size=None,
        pretrained_image=False,
        image_mean=None,
        image_std=None,
        light_augmentation=True,
        aug_cfg={},
        output_dict=True,
        with_score_predictor=False,
        with_region_predictor=False,
    )
    with torch.no_grad():  # random weights are near-degenerate at init; spread them like trained ones
        gen = torch.Generator().manual_seed(SEED + 11)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval()
    # hpsv2's training checkpoints: {"epoch", "name", "state_dict", "optimizer"}; img_score reads state_dict.
    torch.save({"epoch": 1, "name": "parity", "state_dict": model.state_dict()}, out / "HPS_parity.pt")
    tokenizer = get_tokenizer(OPEN_CLIP_TINY_NAME)
    paths, captions = read_inputs(work / "inputs")
    pixels, scores = [], []
    with torch.no_grad():
        for path, caption in zip(paths, captions, strict=True):
            image = preprocess_val(Image.open(path)).unsqueeze(0)
            text = tokenizer([caption])
            outputs = model(image, text)
            logits = outputs["image_features"] @ outputs["text_features"].T
            pixels.append(image[0])
            scores.append(torch.diagonal(logits)[0])
    save_result(
        out,
        torch.stack(pixels),
        torch.stack(scores),
        package_versions("hpsv2", "torch", "torchvision", "pillow"),
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
