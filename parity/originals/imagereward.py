"""ImageReward 1.5's own ``ImageReward`` model (BLIP_Pretrain + MLP) at a tiny size, scored with its own
``ImageReward.score(prompt, image)`` (BERT tokens padded to 35, torchvision preprocessing on PIL).

Two things cannot be had offline and are replaced, identically on both sides: BLIP's ViT-L is built
by ImageReward's own ``VisionTransformer`` class at a tiny width (``create_vit`` hard-codes ViT-L), and
``bert-base-uncased``'s vocabulary is a tiny WordPiece vocabulary covering the captions (the BERT
tokenizer code is transformers' own either way).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from parity.common import BLIP_VIT_TINY, SEED, package_versions, read_inputs, save_result
from parity.originals.aesthetic import stub_package

TEXT_WIDTH = 768  # ImageReward's MLP(768) fixes the text encoder's width


def main(work: Path) -> None:
    from PIL import Image
    from transformers import BertTokenizer

    out = work / "imagereward"
    out.mkdir(parents=True, exist_ok=True)
    vocab_file = out / "vocab.txt"
    _, captions = read_inputs(work / "inputs")
    words = sorted({w for c in captions for w in c.lower().replace(",", " ,").split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_file.write_text("\n".join(specials + words + ["##s", "##ing", "."]) + "\n")

    # bert-base-uncased -> the tiny vocabulary (init_tokenizer then adds [DEC] and [ENC] as always).
    original_from_pretrained = BertTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        if name == "bert-base-uncased":
            return cls(vocab_file=str(vocab_file), do_lower_case=True)
        return original_from_pretrained(cls, name, *args, **kwargs)

    BertTokenizer.from_pretrained = classmethod(from_pretrained)
    n_vocab = len(specials) + len(words) + 3 + 2
    med = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TEXT_WIDTH,
        "initializer_range": 0.02,
        "intermediate_size": 256,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": n_vocab,
        "encoder_width": BLIP_VIT_TINY["hidden_size"],
        "add_cross_attention": True,
    }
    (out / "med_config.json").write_text(json.dumps(med, indent=2))

    stub_package("ImageReward")
    import ImageReward.models.BLIP.blip_pretrain as blip_pretrain
    from ImageReward.models.BLIP.vit import VisionTransformer

    def tiny_vit(vit, image_size, *args, **kwargs):
        width = BLIP_VIT_TINY["hidden_size"]
        encoder = VisionTransformer(
            img_size=image_size,
            patch_size=BLIP_VIT_TINY["patch_size"],
            embed_dim=width,
            depth=BLIP_VIT_TINY["num_hidden_layers"],
            num_heads=BLIP_VIT_TINY["num_attention_heads"],
            mlp_ratio=BLIP_VIT_TINY["intermediate_size"] / width,
        )
        return encoder, width

    blip_pretrain.create_vit = tiny_vit
    from ImageReward.ImageReward import ImageReward

    torch.manual_seed(SEED + 50)
    model = ImageReward(med_config=str(out / "med_config.json"), device="cpu").eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(SEED + 51)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    # ImageReward.pt is the model's plain state dict (ImageReward.utils.load: load_state_dict(strict=False)).
    torch.save(model.state_dict(), out / "ImageReward.pt")
    paths, captions = read_inputs(work / "inputs")
    pixels, scores = [], []
    with torch.no_grad():
        for path, caption in zip(paths, captions, strict=True):
            image = Image.open(path)
            pixels.append(model.preprocess(image))
            scores.append(torch.tensor(model.score(caption, image)))
    versions = package_versions(
        "image-reward", "timm", "fairscale", "transformers", "torch", "torchvision", "pillow"
    )
    save_result(out, torch.stack(pixels), torch.stack(scores), versions)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
