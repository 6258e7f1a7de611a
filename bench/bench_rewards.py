"""Images per second of each MIRO reward at full size, with random weights (no downloads needed).

Each reward is the real architecture (open_clip / transformers classes at the published sizes) with
random weights, driven end to end through ``RewardModel.score_batch``: uint8 images on the CPU,
preprocessing and tokenization included. Weight values do not change the speed. JINA CLIP v2 needs its
remote code, so ``clip`` is timed on a stand-in of similar size (a ViT-L/14 at 512 px and a 24-layer,
1024-wide text tower) and labelled as such.

    python bench/bench_rewards.py --device cuda --dtype bfloat16 --out bench/results_rewards_h100.json
    python bench/bench_rewards.py --tiny            # CPU smoke run with tiny configs

Results are printed as JSON lines (and written to --out); name the machine when committing them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from miro.rewards.aesthetic import AestheticHead, AestheticReward, AestheticScorer
from miro.rewards.clip_common import HFClipScorer, ImagePreprocess, ModuleReward, resolve_dtype
from miro.rewards.hps import HpsReward, HpsScorer, hps_preprocess
from miro.rewards.imagereward import (
    BLIP_VIT_LARGE,
    ImageRewardReward,
    ImageRewardScorer,
    blip_tokenizer,
    text_config_from_med,
)
from miro.rewards.jina_clip import JinaClipReward, JinaClipScorer
from miro.rewards.pick import PickReward
from miro.rewards.sci import SciReward
from miro.rewards.vqa import SYSTEM_MESSAGE, ClipT5Scorer, VqaReward, build_projector

CAPTION = "a photograph of a red vintage bicycle leaning against a brick wall next to a blue door, sunny day"
BERT_BASE_MED = dict(
    vocab_size=30524,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    pad_token_id=0,
)
T5_SIZES = {
    "xxl": dict(d_model=4096, d_ff=10240, num_heads=64, num_layers=24),
    "xl": dict(d_model=2048, d_ff=5120, num_heads=32, num_layers=24),
}


@contextmanager
def building_on(device: torch.device, dtype: torch.dtype):
    """Create parameters directly on the device in the compute dtype (an 11B T5 never sits in CPU RAM)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def clip_tokenizer(folder: Path):
    """CLIP's BPE (bundled with open_clip) as a transformers tokenizer."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = [
        tuple(m.split()) for m in gzip.open(default_bpe()).read().decode().split("\n")[1 : 49152 - 256 - 1]
    ]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))


def word_tokenizer(words: list[str], vocab_size: int):
    """A T5-style word-level tokenizer (<pad>=0, </s>=1 appended): the prompt has the real token count."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    for i in range(len(vocab), vocab_size):
        vocab[f"<extra_{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def hf_clip(vision: dict, text: dict, projection: int):
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=projection))


def builders(
    tiny: bool, vqa_size: str, workdir: Path
) -> dict[str, Callable[[], tuple[type[ModuleReward], object]]]:
    """reward name -> function building (reward class, scorer with random weights)."""
    import open_clip

    if tiny:
        for name, cfg in {
            "bench-tiny": {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
            },
        }.items():
            (workdir / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(workdir)
    res = 32 if tiny else None
    clip_h_vision = dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
    )
    clip_h_text = dict(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        max_position_embeddings=77,
    )
    small_vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    small_text = dict(
        vocab_size=49408,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
    )
    tokenizer = clip_tokenizer(workdir)

    def aesthetic():
        model = open_clip.create_model("bench-tiny" if tiny else "ViT-L-14-quickgelu")
        head = AestheticHead(model.visual.output_dim)
        return AestheticReward, AestheticScorer(model.visual, head, ImagePreprocess(size=res or 224))

    def hps():
        arch = "bench-tiny" if tiny else "ViT-H-14"
        return HpsReward, HpsScorer(
            open_clip.create_model(arch), open_clip.get_tokenizer(arch), hps_preprocess(res or 224)
        )

    def imagereward():
        from transformers import BlipTextModel, BlipVisionConfig, BlipVisionModel

        vision_cfg = dict(BLIP_VIT_LARGE) | (
            dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=32,
            )
            if tiny
            else {}
        )
        words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        words += sorted(set(CAPTION.split())) + [
            f"w{i}" for i in range(30522 - len(words) - len(set(CAPTION.split())))
        ]
        (workdir / "vocab.txt").write_text("\n".join(words) + "\n")
        med = BERT_BASE_MED | (
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
            if tiny
            else {}
        )
        text = BlipTextModel(text_config_from_med(med, vision_cfg["hidden_size"]), add_pooling_layer=False)
        scorer = ImageRewardScorer(
            BlipVisionModel(BlipVisionConfig(**vision_cfg)),
            text,
            AestheticHead(med["hidden_size"]),
            blip_tokenizer(workdir / "vocab.txt"),
            ImagePreprocess(size=vision_cfg["image_size"]),
        )
        return ImageRewardReward, scorer

    def clip_h(cls):
        def build():
            model = (
                hf_clip(small_vision, small_text, 12) if tiny else hf_clip(clip_h_vision, clip_h_text, 1024)
            )
            return cls, HFClipScorer(model, tokenizer, ImagePreprocess(size=res or 224))

        return build

    def vqa():
        from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config, T5ForConditionalGeneration

        vision_cfg = (
            dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=3,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
            )
            if tiny
            else dict(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=336,
                patch_size=14,
            )
        )
        size = dict(d_model=32, d_ff=64, num_heads=2, num_layers=2) if tiny else T5_SIZES[vqa_size]
        t5 = T5ForConditionalGeneration(
            T5Config(
                vocab_size=32128,
                d_kv=64 if not tiny else 16,
                num_decoder_layers=size["num_layers"],
                feed_forward_proj="gated-gelu",
                tie_word_embeddings=False,
                decoder_start_token_id=0,
                **size,
            )
        )
        words = (
            (
                SYSTEM_MESSAGE
                + " USER : ASSISTANT Does this figure show ? Please answer yes or no . Yes "
                + CAPTION
            )
            .replace(".", " . ")
            .replace(",", " , ")
            .replace("'", " ' ")
            .split()
        )
        scorer = ClipT5Scorer(
            CLIPVisionModel(CLIPVisionConfig(**vision_cfg)),
            build_projector("mlp2x_gelu", vision_cfg["hidden_size"], size["d_model"]),
            t5,
            word_tokenizer(words, 32100),
            ImagePreprocess(size=vision_cfg["image_size"], mode="pad_square", fill=(122, 116, 104)),
        )
        return VqaReward, scorer

    def jina_standin():
        vision = dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=512,
            patch_size=14,
        )
        text = dict(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            max_position_embeddings=77,
        )
        model = hf_clip(small_vision, small_text, 12) if tiny else hf_clip(vision, text, 1024)
        return JinaClipReward, JinaClipScorer(
            model, tokenizer, ImagePreprocess(size=res or 512), max_length=77
        )

    return {
        "aesthetic": aesthetic,
        "hps": hps,
        "imagereward": imagereward,
        "pick": clip_h(PickReward),
        "sci": clip_h(SciReward),
        "vqa": vqa,
        "clip": jina_standin,
    }


def time_reward(reward: ModuleReward, batch: int, image_size: int, warmup: int, iters: int) -> float:
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8)
    captions = [CAPTION] * batch
    sync = torch.cuda.synchronize if reward.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        reward.score_batch(images, captions)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        reward.score_batch(images, captions)
    sync()
    return batch * iters / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rewards", default="aesthetic,hps,imagereward,pick,sci,clip,vqa")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--vqa-batch-size", type=int, default=16)
    p.add_argument("--vqa-size", choices=tuple(T5_SIZES), default="xxl")
    p.add_argument("--image-size", type=int, default=256, help="input images (square), before preprocessing")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    from miro.utils.hardware import cpu_info
    from miro.utils.machine import cpu_name

    cpu = cpu_info()
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()} ({cpu.kind})"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        build = builders(args.tiny, args.vqa_size, Path(tmp))
        for name in args.rewards.split(","):
            torch.manual_seed(0)
            with building_on(device, dtype):
                cls, scorer = build[name]()
            batch = args.vqa_batch_size if name == "vqa" else args.batch_size
            reward = cls(scorer=scorer, device=device, dtype=dtype, batch_size=batch)
            rate = time_reward(reward, batch, args.image_size, args.warmup, args.iters)
            row = {
                "reward": name
                + (" (stand-in towers)" if name == "clip" else "")
                + (f" ({args.vqa_size})" if name == "vqa" else ""),
                "images_per_s": round(rate, 2),
                "batch": batch,
                "params_m": round(sum(p.numel() for p in scorer.parameters()) / 1e6, 1),
                "device": machine,
                "dtype": str(dtype).removeprefix("torch."),
                "tiny": args.tiny,
                "image_size": args.image_size,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu_kind": cpu.kind,
            }
            print(json.dumps(row), flush=True)
            results.append(row)
            del reward, scorer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
