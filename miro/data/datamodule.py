"""LightningDataModule over annotated (scored) WebDataset shards.

Two ways to feed the model, chosen by ``in_memory``:

* **streaming** (real data): a webdataset pipeline - resampled shards (so every rank and worker draws an
  independent, endless stream and no split bookkeeping is needed across nodes), per-sample error
  handling that logs and skips bad samples, a shuffle buffer, decoding, bins applied to rewards, batching.
* **in_memory** (the embedded default, and any data set that fits in RAM): every sample is decoded once
  into one uint8 tensor, and batch ``s`` is drawn with a generator seeded by ``(seed, rank, s)``. On a
  2-core laptop that removes JPEG decoding from the training loop, and because the batch depends only on
  the step, a run resumed from a checkpoint sees exactly the batches a continuous run would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from miro.data.bins import RewardBins
from miro.data.samples import SampleDecodeError, collate, decode_sample, to_model_range
from miro.data.shards import expand_shards, iter_shard

log = logging.getLogger(__name__)


def _skip_and_log(err: Exception) -> bool:
    """webdataset handler: skip a bad sample, say which, keep going."""
    log.warning("skipping sample: %s", err)
    return True


class InMemoryShards:
    """All samples of some shards, decoded once: uint8 images, captions, reward values and masks."""

    def __init__(
        self,
        shards: Sequence[str],
        image_size: int,
        reward_names: Sequence[str],
        bins: RewardBins | None,
        max_samples: int | None = None,
    ) -> None:
        images, captions, rewards, masks = [], [], [], []
        skipped = 0
        for path in shards:
            for raw in iter_shard(path):
                try:
                    ex = decode_sample(raw, image_size, reward_names, bins)
                except SampleDecodeError as err:
                    skipped += 1
                    log.warning("%s: %s", path, err)
                    continue
                images.append(ex["image"])
                captions.append(ex["caption"])
                rewards.append(ex["rewards"])
                masks.append(ex["reward_mask"])
                if max_samples is not None and len(images) >= max_samples:
                    break
            if max_samples is not None and len(images) >= max_samples:
                break
        if not images:
            raise ValueError(f"no usable samples in {list(shards)[:3]}... ({skipped} skipped)")
        self.images = torch.stack(images)
        self.captions = captions
        self.rewards = torch.stack(rewards)
        self.reward_mask = torch.stack(masks)
        self.skipped = skipped
        log.info("loaded %d samples into memory (%d skipped)", len(captions), skipped)

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, index: torch.Tensor) -> dict[str, Any]:
        return {
            "image": to_model_range(self.images[index]),
            "caption": [self.captions[i] for i in index.tolist()],
            "rewards": self.rewards[index],
            "reward_mask": self.reward_mask[index],
        }


def step_seed(seed: int, rank: int, step: int) -> int:
    """A distinct, process-independent RNG seed per (run seed, rank, step)."""
    return ((seed * 1_000_003 + rank) * 1_000_033 + step) % (2**63)


class StepIndexedBatches(IterableDataset):
    """Endless batches where batch number ``s`` depends only on ``(seed, rank, s)``."""

    def __init__(self, data: InMemoryShards, batch_size: int, seed: int, rank: int, start_step: int) -> None:
        self.data, self.batch_size, self.seed, self.rank, self.start_step = (
            data,
            batch_size,
            seed,
            rank,
            start_step,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        step = self.start_step
        while True:
            gen = torch.Generator().manual_seed(step_seed(self.seed, self.rank, step))
            yield self.data.batch(torch.randint(len(self.data), (self.batch_size,), generator=gen))
            step += 1


class ShardDataModule(L.LightningDataModule):
    def __init__(
        self,
        shards: str | list[str],
        bins_path: str | None,
        reward_names: Sequence[str],
        image_size: int,
        batch_size: int,
        num_workers: int = 2,
        shuffle_buffer: int = 2000,
        in_memory: bool = False,
        max_in_memory_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.shards = shards
        self.bins_path = bins_path
        self.reward_names = list(reward_names)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.in_memory = in_memory
        self.max_in_memory_samples = max_in_memory_samples
        self.seed = seed
        self.bins: RewardBins | None = None
        self._memory: InMemoryShards | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.reward_names and self.bins is None:
            if not self.bins_path:
                raise ValueError(
                    "the model is conditioned on rewards but data.bins_path is not set (run fit-bins)"
                )
            self.bins = RewardBins.load(self.bins_path)
            missing = [n for n in self.reward_names if n not in self.bins.names]
            if missing:
                raise ValueError(
                    f"{self.bins_path} has no bins for reward(s) {missing}; it has {self.bins.names}"
                )
        self.urls = expand_shards(self.shards)
        if self.in_memory and self._memory is None:
            self._memory = InMemoryShards(
                self.urls, self.image_size, self.reward_names, self.bins, self.max_in_memory_samples
            )

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        start = self.trainer.global_step if self.trainer is not None else 0
        if self._memory is not None:
            dataset = StepIndexedBatches(self._memory, self.batch_size, self.seed, rank, start)
            return DataLoader(dataset, batch_size=None, num_workers=0)
        decode = partial(
            decode_sample, image_size=self.image_size, reward_names=self.reward_names, bins=self.bins
        )
        pipeline = wds.DataPipeline(
            # webdataset mixes rank and worker id into this seed; the start step makes a resumed run
            # draw a fresh stream instead of replaying the shards it already saw.
            wds.ResampledShards(self.urls, seed=step_seed(self.seed, 0, start), deterministic=True),
            wds.tarfile_to_samples(handler=_skip_and_log),
            wds.shuffle(self.shuffle_buffer),
            wds.map(decode, handler=_skip_and_log),
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
        )
        return DataLoader(
            pipeline, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0
        )
