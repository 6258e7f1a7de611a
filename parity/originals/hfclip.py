"""PickScore and SciScore as their model cards score: transformers' CLIPModel and its processor
(``AutoProcessor``/``AutoModel``, ``logit_scale.exp() * text_embs @ image_embs.T``), transformers 4.49."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from parity.common import SEED, package_versions, read_inputs, save_result

TINY_CLIP = dict(
    text_config=dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
    ),
    vision_config=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
    ),
    projection_dim=16,
)


def build(work: Path, reward: str, seed: int) -> None:
    from PIL import Image
    from transformers import (
        AutoModel,
        AutoProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    out = work / reward
    model_dir = out / "model"
    # PickScore's card takes the processor of laion/CLIP-ViT-H-14; SciScore's repo carries its own.
    processor_dir = out / "processor" if reward == "pick" else model_dir
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**TINY_CLIP))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer = CLIPTokenizer(str(work / "clip_bpe" / "vocab.json"), str(work / "clip_bpe" / "merges.txt"))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(processor_dir)

    # The model card's code, verbatim in substance.
    processor = AutoProcessor.from_pretrained(processor_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    paths, captions = read_inputs(work / "inputs")
    pixels, scores = [], []
    with torch.no_grad():
        for path, caption in zip(paths, captions, strict=True):
            image_inputs = processor(
                images=[Image.open(path)], padding=True, truncation=True, max_length=77, return_tensors="pt"
            )
            text_inputs = processor(
                text=caption, padding=True, truncation=True, max_length=77, return_tensors="pt"
            )
            image_embs = model.get_image_features(**image_inputs)
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs)
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            score = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
            pixels.append(image_inputs["pixel_values"][0])
            scores.append(score[0])
    save_result(
        out, torch.stack(pixels), torch.stack(scores), package_versions("transformers", "torch", "pillow")
    )


def main(work: Path) -> None:
    build(work, "pick", SEED + 20)
    build(work, "sci", SEED + 30)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
