"""The caching stage: cached latents and text features equal what the encoders give, bad samples are
reported, runs resume, ranks split the shards, and cached shards feed the data module."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TINY_VAE
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from data_prep.cache_latents import (
    CacheConfigError,
    CacheReport,
    cache_shard,
    cache_shards,
    key_seed,
)
from miro.cli.rewards import MIRO_SEVEN
from miro.data.datamodule import InMemoryCachedShards, ShardDataModule, StepIndexedBatches
from miro.data.samples import (
    LATENT_EXT,
    LATENT_STD_EXT,
    TEXT_TOKENS_EXT,
    SampleDecodeError,
    decode_cached_sample,
    decode_image,
    encode_array,
    to_model_range,
)
from miro.data.shards import atomic_shard_writer, iter_shard
from miro.models.text import HFTextEncoder, minilm_model_dir
from miro.models.vae import LatentVAE

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16  # the 24 px test images are center-cropped and resized to 16 px -> 8 x 8 latents


@pytest.fixture(scope="module")
def vae() -> LatentVAE:
    torch.manual_seed(0)
    return LatentVAE(model_name_or_path=None, config=TINY_VAE)


@pytest.fixture(scope="module")
def t5() -> HFTextEncoder:
    tokenizer = AutoTokenizer.from_pretrained(minilm_model_dir())
    torch.manual_seed(1)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return HFTextEncoder(max_length=16, model=T5EncoderModel(config), tokenizer=tokenizer)


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _shards(root: Path) -> list[Path]:
    return sorted((root / "scored").glob("*.tar"))


def test_cached_fields_equal_the_encoders_outputs(
    seven_reward_shards: Path, vae: LatentVAE, t5: HFTextEncoder, tmp_path: Path
) -> None:
    shard = _shards(seven_reward_shards)[0]
    report = cache_shard(shard, tmp_path / shard.name, tmp_path / "r.json", vae, t5, SIZE, "mean", 16)
    inputs, outputs = list(iter_shard(shard)), list(iter_shard(tmp_path / shard.name))
    assert (report.n_samples, report.n_cached, report.n_skipped) == (48, 48, 0)
    assert report.latent_shape == [4, 8, 8] and report.text_dim == 32
    assert [s["__key__"] for s in outputs] == [s["__key__"] for s in inputs]
    for raw, out in zip(inputs[:6], outputs[:6], strict=True):
        # everything the scored sample had is kept byte for byte (image included by default)
        assert all(out[k] == v for k, v in raw.items())
        assert set(out) - set(raw) == {LATENT_EXT, TEXT_TOKENS_EXT}
        # round trip: the cached latent is the VAE encoding of the decoded, cropped image
        image = to_model_range(decode_image(out["jpg"], raw["__key__"], SIZE)[None])
        latent = _npy(out[LATENT_EXT])
        assert latent.dtype == np.float32 and latent.shape == (4, 8, 8)
        torch.testing.assert_close(torch.from_numpy(latent), vae.encode(image)[0], rtol=1e-5, atol=1e-5)
        # the caption's real tokens only, in float16
        tokens, mask = t5([out["txt"].decode()])
        cached = _npy(out[TEXT_TOKENS_EXT])
        assert cached.dtype == np.float16 and cached.shape == (int(mask.sum()), 32)
        torch.testing.assert_close(torch.from_numpy(cached).float(), tokens[0, mask[0]], rtol=1e-3, atol=1e-3)
    assert report.text_tokens == sum(_npy(o[TEXT_TOKENS_EXT]).shape[0] for o in outputs)


def test_latent_modes_mean_std_and_seeded_sample(
    seven_reward_shards: Path, vae: LatentVAE, t5: HFTextEncoder, tmp_path: Path
) -> None:
    shard = _shards(seven_reward_shards)[1]
    runs = {}
    for run, batch in [("mean", 48), ("mean_std", 48), ("sample", 48), ("sample_b5", 5)]:
        out = tmp_path / run / shard.name
        mode = run.removesuffix("_b5")
        cache_shard(shard, out, tmp_path / f"{run}.json", vae, t5, SIZE, mode, batch, seed=3)
        runs[run] = list(iter_shard(out))
    first = runs["mean_std"][0]
    mean, std = _npy(first[LATENT_EXT]), _npy(first[LATENT_STD_EXT])
    np.testing.assert_array_equal(mean, _npy(runs["mean"][0][LATENT_EXT]))
    image = to_model_range(decode_image(first["jpg"], first["__key__"], SIZE)[None])
    # the diffusers posterior's std on the diffusion scale (a shift moves the mean only)
    expected_std = vae.vae.encode(image).latent_dist.std[0] * vae.scaling_factor
    torch.testing.assert_close(torch.from_numpy(std), expected_std, rtol=1e-5, atol=1e-6)
    assert (std > 0).all() and LATENT_STD_EXT not in runs["mean"][0]
    # sample = mean + std * eps, eps drawn from the sample key's own generator: independent of batching
    eps = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(key_seed(3, first["__key__"])))
    sample = _npy(runs["sample"][0][LATENT_EXT])
    np.testing.assert_allclose(sample, mean + std * eps.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(runs["sample"], runs["sample_b5"], strict=True):
        np.testing.assert_allclose(_npy(a[LATENT_EXT]), _npy(b[LATENT_EXT]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(sample, mean)


def _corrupt_copy(src: Path, dst: Path) -> Path:
    """A copy in which sample 0's JPEG is garbage and sample 1 has no caption."""
    with atomic_shard_writer(dst) as writer:
        for i, sample in enumerate(iter_shard(src)):
            if i == 0:
                sample["jpg"] = b"\xff\xd8 truncated"
            if i == 1:
                del sample["txt"]
            writer.write(sample)
    return dst


def test_bad_samples_are_reported_and_runs_resume_and_split_by_rank(
    seven_reward_shards: Path, vae: LatentVAE, t5: HFTextEncoder, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    shards = _shards(seven_reward_shards)
    _corrupt_copy(shards[0], inputs / shards[0].name)
    (inputs / shards[1].name).write_bytes(shards[1].read_bytes())
    keys = [s["__key__"] for s in islice(iter_shard(shards[0]), 2)]
    out = tmp_path / "out"
    kwargs = dict(image_size=SIZE, batch_size=32, keep_image=False)
    rank1 = cache_shards(str(inputs), out, vae, t5, rank=1, world_size=2, **kwargs)
    assert [r.shard for r in rank1.reports] == [shards[1].name]  # rank i of W takes shards i, i + W, ...
    summary = cache_shards(str(inputs), out, vae, t5, **kwargs)
    assert summary.n_resumed == 1 and summary.n_cached == 94 and summary.n_skipped == 2
    report = CacheReport.load(out / "reports" / f"{shards[0].stem}.json")
    assert [s["key"] for s in report.skipped] == keys
    assert "cannot decode image" in report.skipped[0]["reason"]
    assert report.skipped[1]["reason"] == "no caption (txt) field"
    cached = list(iter_shard(out / shards[0].name))
    assert len(cached) == 46 and not any("jpg" in s for s in cached)  # keep_image=False
    # A run killed before the report was written redoes that shard, to the same bytes.
    before = (out / shards[0].name).read_bytes()
    (out / "reports" / f"{shards[0].stem}.json").unlink()
    again = cache_shards(str(inputs), out, vae, t5, **kwargs)
    assert again.n_resumed == 1 and (out / shards[0].name).read_bytes() == before


def test_bad_settings_are_clear_errors(
    seven_reward_shards: Path, vae: LatentVAE, t5: HFTextEncoder, tmp_path: Path
) -> None:
    shard = str(_shards(seven_reward_shards)[0])
    with pytest.raises(CacheConfigError, match="latent must be one of mean, mean_std, sample"):
        cache_shards(shard, tmp_path, vae, t5, latent="posterior")
    with pytest.raises(CacheConfigError, match="image_size 15 is not a positive multiple"):
        cache_shards(shard, tmp_path, vae, t5, image_size=15)
    with pytest.raises(CacheConfigError, match="batch_size must be >= 1"):
        cache_shards(shard, tmp_path, vae, t5, batch_size=0)


def test_cached_sample_decoding_names_the_sample_and_field() -> None:
    good = {
        "__key__": "k7",
        "txt": b"a red fox",
        LATENT_EXT: encode_array(np.zeros((4, 2, 2), np.float32)),
        TEXT_TOKENS_EXT: encode_array(np.ones((3, 5), np.float16)),
    }
    example = decode_cached_sample(good, [], None)
    assert example["latent"].shape == (4, 2, 2) and example["text_tokens"].dtype == torch.float16
    for broken, message in [
        ({LATENT_EXT: None}, r"sample k7: no latent\.npy field \(run cache-latents"),
        ({TEXT_TOKENS_EXT: b"garbage"}, r"sample k7: malformed text_tokens\.npy"),
        ({LATENT_EXT: encode_array(np.zeros((4, 2), np.float32))}, r"latent\.npy must be \[C, h, w\]"),
        ({TEXT_TOKENS_EXT: encode_array(np.ones((0, 5), np.float16))}, r"must be \[L >= 1, D\]"),
        ({LATENT_STD_EXT: encode_array(np.ones((4, 3, 3), np.float32))}, "latent_std.npy shape"),
    ]:
        sample = {**good, **broken}
        sample = {k: v for k, v in sample.items() if v is not None}
        with pytest.raises(SampleDecodeError, match=message):
            decode_cached_sample(sample, [], None)
    with pytest.raises(SampleDecodeError, match="no rewards.json"):
        decode_cached_sample(good, ["aesthetic"], None)


@pytest.fixture(scope="module")
def cached_dir(seven_reward_shards: Path, vae: LatentVAE, t5: HFTextEncoder, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cached")
    cache_shards(str(seven_reward_shards / "scored"), root / "cached", vae, t5, SIZE, "mean_std", 32)
    (root / "bins.json").write_bytes((seven_reward_shards / "bins.json").read_bytes())
    return root


def test_cached_batches_stream_and_load_into_memory(cached_dir: Path) -> None:
    common = dict(
        shards=str(cached_dir / "cached"), bins_path=str(cached_dir / "bins.json"), reward_names=MIRO_SEVEN,
        image_size=SIZE, batch_size=8, num_workers=0, shuffle_buffer=16, cached=True,
    )
    dm = ShardDataModule(**common)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["latent"].shape == (8, 4, 8, 8) and batch["latent_std"].shape == (8, 4, 8, 8)
    tokens, mask = batch["text_tokens"], batch["text_mask"]
    assert tokens.dtype == torch.float32 and tokens.shape[:2] == mask.shape and tokens.shape[2] == 32
    assert mask[:, 0].all() and mask.sum(1).max() == mask.shape[1]  # padded to the longest caption
    assert tokens[~mask].abs().sum() == 0
    assert len(batch["caption"]) == 8 and batch["rewards"].shape == (8, 7) and batch["reward_mask"].all()

    shards = [str(p) for p in sorted((cached_dir / "cached").glob("*.tar"))]
    memory = InMemoryCachedShards(shards, MIRO_SEVEN, dm.bins)
    stream = list(islice(StepIndexedBatches(memory, 8, seed=0, rank=0, start_step=0), 6))
    resumed = next(iter(StepIndexedBatches(memory, 8, seed=0, rank=0, start_step=5)))
    assert len(memory) == 96 and memory.latent_std is not None
    assert resumed["caption"] == stream[5]["caption"]
    assert torch.equal(resumed["text_tokens"], stream[5]["text_tokens"])
    assert torch.equal(resumed["latent_std"], stream[5]["latent_std"])

    raw = ShardDataModule(**{**common, "cached": False})
    raw.setup("fit")  # keep_image=True: the cached shards still train in raw mode
    assert next(iter(raw.train_dataloader()))["image"].shape == (8, 3, SIZE, SIZE)


def test_raw_shards_in_cached_mode_fail_at_once(seven_reward_shards: Path) -> None:
    dm = ShardDataModule(
        shards=str(seven_reward_shards / "scored"), bins_path=str(seven_reward_shards / "bins.json"),
        reward_names=MIRO_SEVEN, image_size=SIZE, batch_size=8, cached=True,
    )
    with pytest.raises(ValueError, match=r"data.cached is true but shard .* has no latent\.npy"):
        dm.setup("fit")


def test_stage_command_line(seven_reward_shards: Path, tmp_path: Path) -> None:
    """``python -m data_prep.cache_latents`` with a random tiny VAE and the offline MiniLM encoder."""
    tiny = (
        "+vae.config={down_block_types:[DownEncoderBlock2D,DownEncoderBlock2D],"
        "up_block_types:[UpDecoderBlock2D,UpDecoderBlock2D],block_out_channels:[8,16],"
        "layers_per_block:1,latent_channels:4,norm_num_groups:4}"
    )
    shard = _shards(seven_reward_shards)[0]
    cmd = [
        sys.executable, "-m", "data_prep.cache_latents", f"input={shard}", f"output={tmp_path / 'out'}",
        "text_encoder=minilm", "vae.model_name_or_path=null", tiny, f"image_size={SIZE}", "progress=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cached 48 samples (mean latents), skipped 0 (1 shards, 0 already done)" in proc.stdout
    assert _npy(next(iter_shard(tmp_path / "out" / shard.name))[TEXT_TOKENS_EXT]).shape[1] == 384
    bad = subprocess.run(
        [*cmd[:5], "latent=posterior"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: latent must be one of mean, mean_std, sample, got 'posterior'"
    )


def test_limits_draft_truncation_and_settings_apply_to_caching(
    vae: LatentVAE, t5: HFTextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: caching reads images through the same limits, JPEG draft mode, truncation checks and
    per-shard settings as scoring."""
    from PIL import Image, ImageFile

    from miro.data.image_limits import ImageLimits
    from miro.data.shards import encode_jpeg

    rng = np.random.default_rng(0)
    big = encode_jpeg(Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)))
    samples = [{"__key__": f"{i:06d}", "jpg": big, "txt": b"a red circle"} for i in range(4)]
    samples[2]["jpg"] = encode_jpeg(Image.fromarray(rng.integers(0, 256, (30, 300, 3), dtype=np.uint8)))
    with atomic_shard_writer(tmp_path / "in" / "00000.tar") as writer:
        for s in samples:
            writer.write(s)
    loaded: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self):  # the size of every image the decoder produces
        loaded.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    out, kwargs = tmp_path / "out", dict(image_size=SIZE, batch_size=4, limits=ImageLimits(max_side=280))
    summary = cache_shards(str(tmp_path / "in"), out, vae, t5, **kwargs)
    report = summary.reports[0]
    assert [s["key"] for s in report.skipped] == ["000002"] and "300x30" in report.skipped[0]["reason"]
    assert set(loaded) == {(32, 32)}  # 256 px JPEGs drafted to 1/8 (>= 16 px); 300x30 never decoded
    assert report.settings["image_limits"] == {"max_side": 280, "max_pixels": 4096 * 4096}
    assert cache_shards(str(tmp_path / "in"), out, vae, t5, **kwargs).n_resumed == 1
    assert cache_shards(str(tmp_path / "in"), out, vae, t5, **kwargs, keep_image=False).n_resumed == 0
    shard = tmp_path / "in" / "00000.tar"
    shard.write_bytes(shard.read_bytes()[:1536])  # cut inside the second sample
    cut = cache_shards(str(tmp_path / "in"), out, vae, t5, **kwargs)
    assert "00000.tar is truncated" in cut.reports[0].truncated and cut.n_cached == 0
    assert CacheReport.load(out / "reports" / "00000.json").truncated
    assert not (out / "00000.tar").exists()  # the output made from the earlier, complete input is gone
