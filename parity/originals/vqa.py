"""VQAScore with t2v-metrics 3.0's own ``CLIPT5ForConditionalGeneration`` and ``CLIPT5Model.forward``
(the ``t5_chat`` prompt, ``expand2square`` + ``CLIPImageProcessor``, ``exp(-mean CE)`` of ``Yes </s>``).

Replaced, identically on both sides, because it cannot be had offline: FlanT5's sentencepiece model (a
tiny unigram model trained here on the prompt text; the original tokenizes with the slow ``T5Tokenizer``
as t2v-metrics does, MIRO with the ``tokenizer.json`` converted from it, as the hub repos ship both).
t2v-metrics casts the model to bfloat16 unconditionally; this script keeps float32 (a no-op ``.to``
dtype) so the comparison measures the code, not bfloat16 rounding.
"""

from __future__ import annotations

import io
import sys
import types
from importlib.util import find_spec
from pathlib import Path

import torch

from parity.common import CAPTIONS, SEED, package_versions, read_inputs, save_result

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def stub(name: str, path: Path) -> None:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


def tiny_tokenizer(folder: Path) -> None:
    import sentencepiece as spm
    from transformers import T5Tokenizer, T5TokenizerFast

    question = 'Does this figure show "{}"? Please answer yes or no.'
    corpus = [f"{SYSTEM} USER: \n{question.format(c)} ASSISTANT: Yes" for c in CAPTIONS] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=160,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    slow = T5Tokenizer(str(folder / "spiece.model"), extra_ids=0, legacy=True)
    slow.save_pretrained(folder)
    T5TokenizerFast.from_pretrained(str(folder), from_slow=True, legacy=True).save_pretrained(folder)


def main(work: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    root = Path(find_spec("t2v_metrics").submodule_search_locations[0])
    stub("t2v_metrics", root)  # its __init__ needs ffmpeg and imports every model family
    stub("t2v_metrics.models", root / "models")
    stub("t2v_metrics.models.vqascore_models", root / "models" / "vqascore_models")
    from t2v_metrics.models.vqascore_models import clip_t5_model
    from t2v_metrics.models.vqascore_models.clip_t5.model import CLIPT5Config, CLIPT5ForConditionalGeneration

    out = work / "vqa"
    tokenizer_dir, vision_dir, model_dir = out / "tokenizer", out / "vision", out / "model"
    tiny_tokenizer(tokenizer_dir)
    torch.manual_seed(SEED + 60)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=336,
            patch_size=48,
        )
    )
    vision.save_pretrained(vision_dir)
    CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3
    ).save_pretrained(vision_dir)
    from transformers import AutoTokenizer

    n_vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=False))
    config = CLIPT5Config(
        vocab_size=n_vocab + 4,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        mm_vision_tower=str(vision_dir),
        mm_hidden_size=32,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
    )
    model = CLIPT5ForConditionalGeneration(config)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(SEED + 61)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    # The hub repos hold pickled .bin shards of the full model, vision tower included.
    model.save_pretrained(model_dir, safe_serialization=False, max_shard_size="200KB")

    entry = clip_t5_model.CLIP_T5_MODELS["clip-flant5-xxl"]
    entry["tokenizer"]["path"], entry["model"]["path"] = str(tokenizer_dir), str(model_dir)
    to = torch.nn.Module.to

    def to_float32(self, *args, **kwargs):  # t2v-metrics casts to bfloat16; keep float32 (see docstring)
        kwargs.pop("dtype", None)
        return to(self, *[a for a in args if not isinstance(a, torch.dtype)], **kwargs)

    torch.nn.Module.to = to_float32
    scorer = clip_t5_model.CLIPT5Model("clip-flant5-xxl", device="cpu", cache_dir=str(out / "cache"))
    torch.nn.Module.to = to
    paths, captions = read_inputs(work / "inputs")
    pixels, scores = [], []
    with torch.no_grad():
        for path, caption in zip(paths, captions, strict=True):
            pixels.append(scorer.load_images([str(path)])[0])
            scores.append(scorer.forward([str(path)], [caption])[0])
    versions = package_versions("t2v-metrics", "transformers", "sentencepiece", "torch", "pillow")
    save_result(out, torch.stack(pixels), torch.stack(scores), versions)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
