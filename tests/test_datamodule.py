"""The training data: annotated shards -> batches of images, captions and binned reward conditioning."""

from __future__ import annotations

import json
import math
from itertools import islice
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_REWARDS

from miro.data.bins import RewardBins
from miro.data.datamodule import InMemoryShards, ShardDataModule, StepIndexedBatches
from miro.data.samples import SampleDecodeError, decode_sample, reward_conditioning
from miro.data.shards import atomic_shard_writer, iter_shard


def test_reward_conditioning_marks_unscored_and_nan_rewards_missing(scored_shapes: Path) -> None:
    bins = RewardBins.load(scored_shapes / "bins.json")
    edges = bins.rewards["sharpness"].edges
    raw = {"sharpness": float(edges[0]) + 1e-9, "colorfulness": math.nan}  # lowest edge -> level 1
    values, present = reward_conditioning(raw, ["sharpness", "colorfulness", "alignment"], bins)
    assert present.tolist() == [True, False, False]
    assert values[0].item() == pytest.approx(1 / (bins.n_levels("sharpness") - 1))
    assert values[1:].tolist() == [0.0, 0.0]


def test_decode_errors_name_the_sample_and_field(scored_shapes: Path) -> None:
    sample = next(iter_shard(next((scored_shapes / "scored").glob("*.tar"))))
    key = sample["__key__"]
    for field, message in [
        ("txt", r"no caption \(txt\) field"),
        ("rewards.json", "no rewards.json field"),
        ("jpg", "no image"),
    ]:
        broken = {k: v for k, v in sample.items() if k != field}
        with pytest.raises(SampleDecodeError, match=f"sample {key}: {message}"):
            decode_sample(broken, 24, OFFLINE_REWARDS, None)
    with pytest.raises(SampleDecodeError, match=f"sample {key}: cannot decode image"):
        decode_sample({**sample, "jpg": b"not a jpeg"}, 24, OFFLINE_REWARDS, None)


def _with_corrupt_samples(src: Path, dst: Path) -> Path:
    """A copy of a scored shard in which the first sample's JPEG is garbage and the second has no caption."""
    with atomic_shard_writer(dst) as writer:
        for i, sample in enumerate(iter_shard(src)):
            if i == 0:
                sample["jpg"] = b"\xff\xd8 truncated"
            if i == 1:
                del sample["txt"]
            writer.write(sample)
    return dst


def test_in_memory_data_skips_bad_samples_and_batches_depend_only_on_the_step(
    scored_shapes: Path, tmp_path: Path
) -> None:
    shard = sorted((scored_shapes / "scored").glob("*.tar"))[0]
    bad = _with_corrupt_samples(shard, tmp_path / "bad.tar")
    bins = RewardBins.load(scored_shapes / "bins.json")
    data = InMemoryShards([str(bad)], 24, OFFLINE_REWARDS, bins)
    assert (len(data), data.skipped) == (46, 2)
    assert data.images.dtype == torch.uint8 and data.images.shape == (46, 3, 24, 24)
    batches = list(islice(StepIndexedBatches(data, 8, seed=0, rank=0, start_step=0), 5))
    resumed = next(iter(StepIndexedBatches(data, 8, seed=0, rank=0, start_step=3)))
    assert resumed["caption"] == batches[3]["caption"]
    assert torch.equal(resumed["image"], batches[3]["image"])
    other_rank = next(iter(StepIndexedBatches(data, 8, seed=0, rank=1, start_step=3)))
    assert other_rank["caption"] != batches[3]["caption"]
    assert batches[0]["image"].min() >= -1 and batches[0]["image"].max() <= 1


def test_streaming_pipeline_yields_full_batches_and_skips_bad_samples(
    scored_shapes: Path, tmp_path: Path
) -> None:
    shards = sorted((scored_shapes / "scored").glob("*.tar"))
    _with_corrupt_samples(shards[0], tmp_path / "00000.tar")
    dm = ShardDataModule(
        shards=str(tmp_path / "00000.tar"),
        bins_path=str(scored_shapes / "bins.json"),
        reward_names=OFFLINE_REWARDS,
        image_size=24,
        batch_size=8,
        num_workers=0,
        shuffle_buffer=16,
    )
    dm.setup("fit")
    batches = list(islice(iter(dm.train_dataloader()), 8))  # 64 samples: the 46 good ones, resampled
    for batch in batches:
        assert batch["image"].shape == (8, 3, 24, 24) and batch["image"].dtype == torch.float32
        assert batch["rewards"].shape == (8, 4) and batch["reward_mask"].all()
        assert ((batch["rewards"] >= 0) & (batch["rewards"] <= 1)).all()
    captions = {c for b in batches for c in b["caption"]}
    good = [s for i, s in enumerate(iter_shard(shards[0])) if i >= 2]
    assert captions <= {s["txt"].decode() for s in good}


def test_missing_bins_for_a_conditioned_reward_is_a_clear_error(scored_shapes: Path, tmp_path: Path) -> None:
    bins = json.loads((scored_shapes / "bins.json").read_text())
    del bins["rewards"]["sharpness"]
    (tmp_path / "bins.json").write_text(json.dumps(bins))
    dm = ShardDataModule(
        shards=str(scored_shapes / "scored"),
        bins_path=str(tmp_path / "bins.json"),
        reward_names=OFFLINE_REWARDS,
        image_size=24,
        batch_size=8,
    )
    with pytest.raises(ValueError, match=r"has no bins for reward\(s\) \['sharpness'\]"):
        dm.setup("fit")
