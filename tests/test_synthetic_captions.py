"""Synthetic captions: the captioner (a tiny random BLIP through transformers, no download), the
caption-shards stage (every sample gets KEY.syn.txt; resume, rank split, bad samples), the mixing of
the two captions at the configured rate (in memory, streaming, cached) and their cached features."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_text_encoder
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
)

from data_prep.cache_latents import cache_shard
from data_prep.caption_shards import caption_shard, caption_shards
from miro.data.datamodule import ShardDataModule
from miro.data.samples import SYN_CAPTION_EXT, SYN_TEXT_TOKENS_EXT, TEXT_TOKENS_EXT
from miro.data.shards import atomic_shard_writer, encode_jpeg, iter_shard
from miro.models.captioner import CaptionerError, HFCaptioner
from miro.models.vae import LatentVAE

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "blue", "green", "circle",
         "square", "triangle", "picture", "of"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised BLIP captioning model and processor, saved as a hub directory would be."""
    out = tmp_path_factory.mktemp("blip")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    torch.manual_seed(0)
    config = BlipConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, bos_token_id=5, pad_token_id=0,
                         sep_token_id=3, eos_token_id=3, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # words other than the special ones win the greedy search: non-empty captions
        model.text_decoder.cls.predictions.bias[:6] = -1e4
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (24, 24), (200, 20, 20)), Image.new("RGB", (30, 20), (20, 20, 200))]


def test_captioner_loads_a_real_architecture_and_is_deterministic(tiny_blip: Path) -> None:
    captioner = HFCaptioner(str(tiny_blip), max_new_tokens=5)
    captions = captioner(_images())
    assert len(captions) == 2 and all(captions) and captions == captioner(_images())
    assert all(set(c.split()) <= set(WORDS[6:]) for c in captions)
    # exactly what the model's own greedy search decodes
    inputs = captioner.processor(images=_images(), return_tensors="pt")
    ids = captioner.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    decoded = captioner.processor.batch_decode(ids, skip_special_tokens=True)
    assert captions == [" ".join(t.split()) for t in decoded]
    prompted = HFCaptioner(str(tiny_blip), prompt="a picture of", max_new_tokens=5)(_images())
    assert all(not c.startswith("a picture of") for c in prompted)
    with pytest.raises(CaptionerError, match="cannot load captioner"):
        HFCaptioner(str(tiny_blip / "missing"), local_files_only=True)


def _write_raw(path: Path, n: int, bad: set[int] = frozenset()) -> None:
    with atomic_shard_writer(path) as writer:
        for i in range(n):
            image = b"not a jpeg" if i in bad else encode_jpeg(Image.new("RGB", (24, 24), (10 * i, 50, 90)))
            writer.write({"__key__": f"{path.stem}-{i:03d}", "jpg": image,
                          "txt": f"a red circle {i}".encode(), "json": b"{}"})


def test_stage_writes_a_caption_per_sample_resumes_and_splits_ranks(tiny_blip: Path, tmp_path: Path) -> None:
    for name, bad in (("a.tar", {2}), ("b.tar", set())):
        _write_raw(tmp_path / "in" / name, 5, bad)
    captioner = HFCaptioner(str(tiny_blip), max_new_tokens=4)
    summary = caption_shards(str(tmp_path / "in"), tmp_path / "out", captioner, batch_size=3)
    assert summary.n_captioned == 9 and summary.n_skipped == 1 and summary.n_resumed == 0
    report = summary.reports[0]
    assert report.captioner == str(tiny_blip) and report.skipped[0]["key"] == "a-002"
    assert "cannot decode image" in report.skipped[0]["reason"]
    for name in ("a.tar", "b.tar"):
        raw = {s["__key__"]: s for s in iter_shard(tmp_path / "in" / name)}
        for out in iter_shard(tmp_path / "out" / name):
            original = raw[out["__key__"]]
            assert all(out[k] == v for k, v in original.items())  # every field kept byte for byte
            image = Image.open(io.BytesIO(out["jpg"]))
            assert out[SYN_CAPTION_EXT].decode() == captioner([image])[0]
    again = caption_shards(str(tmp_path / "in"), tmp_path / "out", captioner, batch_size=3)
    assert again.n_resumed == 2
    rank1 = caption_shards(str(tmp_path / "in"), tmp_path / "r1", captioner, rank=1, world_size=2)
    assert [r.shard for r in rank1.reports] == ["b.tar"] and not (tmp_path / "r1" / "a.tar").exists()


def test_an_empty_caption_is_a_skipped_sample(tmp_path: Path) -> None:
    _write_raw(tmp_path / "in.tar", 3)
    report = caption_shard(tmp_path / "in.tar", tmp_path / "out.tar", tmp_path / "r.json",
                           lambda images: ["a blue square", "  ", "a green circle"], batch_size=3)
    assert report.n_captioned == 2 and report.skipped == [{"key": "in-001", "reason":
                                                           "the captioner wrote an empty caption"}]


def _with_syn(root: Path) -> Path:
    """Shards whose every sample has a synthetic caption 'a green triangle' (vocabulary words)."""
    _write_raw(root / "raw" / "s.tar", 8)
    caption_shards(str(root / "raw"), root / "syn", lambda images: ["a green triangle"] * len(images))
    return root / "syn"


def _fraction(batches, n: int = 40) -> float:  # noqa: ANN001
    captions = [c for _, b in zip(range(n), batches, strict=False) for c in b["caption"]]
    return sum(c == "a green triangle" for c in captions) / len(captions)


@pytest.mark.parametrize("in_memory", [True, False])
def test_training_mixes_the_captions_at_the_configured_rate(tmp_path: Path, in_memory: bool) -> None:
    shards = _with_syn(tmp_path)
    seen = {}
    for prob in (0.0, 0.5, 1.0):
        dm = ShardDataModule(str(shards), None, [], 16, 8, num_workers=0, in_memory=in_memory,
                             shuffle_buffer=4, synthetic_caption_prob=prob)
        dm.setup()
        seen[prob] = _fraction(iter(dm.train_dataloader()))
    assert seen[0.0] == 0.0 and seen[1.0] == 1.0
    assert 0.4 < seen[0.5] < 0.6  # 320 draws: 0.5 +- 0.1 is 3.6 standard errors
    with pytest.raises(ValueError, match="synthetic_caption_prob"):
        ShardDataModule(str(shards), None, [], 16, 8, synthetic_caption_prob=1.5)


def test_caching_stores_both_captions_features_and_training_mixes_them(tmp_path: Path) -> None:
    shards = _with_syn(tmp_path)
    torch.manual_seed(0)
    vae = LatentVAE(model_name_or_path=None, config=dict(
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[8, 16],
        layers_per_block=1, latent_channels=4, norm_num_groups=4))
    text = tiny_text_encoder()
    cache_shard(shards / "s.tar", tmp_path / "cached" / "s.tar", tmp_path / "r.json", vae, text, 16, "mean",
                4)
    out = list(iter_shard(tmp_path / "cached" / "s.tar"))
    tokens, mask = text(["a green triangle"])
    syn = np.load(io.BytesIO(out[0][SYN_TEXT_TOKENS_EXT]), allow_pickle=False)
    torch.testing.assert_close(torch.from_numpy(syn).float(), tokens[0, mask[0]], rtol=1e-3, atol=1e-3)
    assert TEXT_TOKENS_EXT in out[0] and out[0][SYN_CAPTION_EXT] == b"a green triangle"
    dm = ShardDataModule(str(tmp_path / "cached"), None, [], 16, 8, num_workers=0, in_memory=True,
                         cached=True, synthetic_caption_prob=1.0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["caption"] == ["a green triangle"] * 8
    length = int(mask.sum())
    torch.testing.assert_close(batch["text_tokens"][0, :length], torch.from_numpy(syn).float())
