"""The LAION aesthetic predictor: OpenAI's ``clip`` package (1.0.1) and the predictor's MLP definition
(as ImageReward 1.5 ships it in ``ImageReward/models/AestheticScore.py``, layer for layer LAION's
``simple_inference.py``), scored as ``AestheticScore.score`` does: ``mlp(normalize(encode_image(x)))``."""

from __future__ import annotations

import sys
import types
from importlib.util import find_spec
from pathlib import Path

import torch
import torch.nn.functional as F

from parity.common import OPENAI_CLIP_TINY, SEED, package_versions, read_inputs, save_result


def stub_package(name: str) -> None:
    """Register package ``name`` without running its ``__init__`` (ImageReward's pulls in diffusers)."""
    module = types.ModuleType(name)
    module.__path__ = list(find_spec(name).submodule_search_locations)
    sys.modules[name] = module


def main(work: Path) -> None:
    import clip
    from clip.clip import _transform
    from clip.model import CLIP
    from PIL import Image

    stub_package("ImageReward")
    stub_package("ImageReward.models")
    from ImageReward.models.AestheticScore import MLP

    out = work / "aesthetic"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED + 40)
    model = CLIP(**OPENAI_CLIP_TINY).float().eval()
    mlp = MLP(OPENAI_CLIP_TINY["embed_dim"]).eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(SEED + 41)
        for p in [*model.parameters(), *mlp.parameters()]:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    # The open_clip-format file MIRO fetches (timm/vit_large_patch14_clip_224.openai) holds OpenAI's
    # state dict under OpenAI's own key names; the head is a plain state dict (.pth).
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    torch.save(mlp.state_dict(), out / "sac+logos+ava1-l14-linearMSE.pth")
    preprocess = _transform(OPENAI_CLIP_TINY["image_resolution"])
    paths, _ = read_inputs(work / "inputs")
    pixels, scores = [], []
    with torch.no_grad():
        for path in paths:
            image = preprocess(Image.open(path)).unsqueeze(0)
            features = F.normalize(model.encode_image(image)).float()
            pixels.append(image[0])
            scores.append(mlp(features)[0, 0])
    versions = package_versions("openai-clip", "image-reward", "torch", "torchvision", "pillow")
    versions["clip module"] = getattr(clip, "__file__", "?")
    save_result(out, torch.stack(pixels), torch.stack(scores), versions)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
