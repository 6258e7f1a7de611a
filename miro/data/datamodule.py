"""LightningDataModule over annotated (scored) WebDataset shards.

Two ways to feed the model, chosen by ``in_memory``:

* **streaming** (real data): a webdataset pipeline - resampled shards (so every rank and worker draws an
  independent, endless stream and no split bookkeeping is needed across nodes), per-sample error
  handling that logs and skips bad samples, a shuffle buffer, decoding, bins applied to rewards, batching.
* **in_memory** (the embedded default, and any data set that fits in RAM): every sample is decoded once
  into one uint8 tensor, and batch ``s`` is drawn with a generator seeded by ``(seed, rank, s)``. On a
  2-core laptop that removes JPEG decoding from the training loop, and because the batch depends only on
  the step, a run resumed from a checkpoint sees exactly the batches a continuous run would have.

Orthogonally, ``cached`` picks what a sample holds (:mod:`miro.data.samples`): raw images and captions,
or the VAE latents and text-encoder features that ``data_prep.cache_latents`` stored with them. Cached
batches carry ``latent`` and ``text_tokens``/``text_mask`` instead of ``image`` (captions stay, for
logging), and the training step then runs neither the VAE nor the text encoder.

``synthetic_caption_prob`` mixes in the synthetic captions of ``make caption-shards`` (``syn.txt``; when
cached, their features): each drawn sample that has one uses it with that probability (MIRO: 0.5).

``filters`` (:mod:`miro.data.filters`) drop samples by stored score or image size while the shards are
read; the number kept and dropped is logged and, with ``filter_report``, saved as JSON with the run.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from miro.data.bins import RewardBins
from miro.data.filters import FilterCounts, SampleFilter, census, keep_sample
from miro.data.samples import (
    LATENT_EXT,
    SampleDecodeError,
    collate,
    collate_cached,
    decode_cached_sample,
    decode_sample,
    to_model_range,
)
from miro.data.shards import IMAGE_EXTS, expand_shards, iter_shard, write_bytes_atomic
from miro.utils.text_batch import pad_rows

log = logging.getLogger(__name__)


def _skip_and_log(err: Exception) -> bool:
    """webdataset handler: skip a bad sample, say which, keep going."""
    log.warning("skipping sample: %s", err)
    return True


def decode_all(
    shards: Sequence[str], decode: Callable[[dict[str, Any]], dict[str, Any]], max_samples: int | None,
    sample_filter: SampleFilter | None = None,
) -> tuple[list[dict[str, Any]], int, FilterCounts | None]:
    """Every decodable sample of ``shards`` that ``sample_filter`` keeps (up to ``max_samples``), how many
    were skipped as undecodable, and the filter's counts (None without a filter)."""
    examples: list[dict[str, Any]] = []
    skipped = 0
    counts = FilterCounts() if sample_filter is not None else None
    for path in shards:
        for raw in iter_shard(path):
            if sample_filter is not None:
                reason = sample_filter.reject(raw, path)
                counts.add(reason)
                if reason is not None:
                    continue
            try:
                examples.append(decode(raw))
            except SampleDecodeError as err:
                skipped += 1
                log.warning("%s: %s", path, err)
                continue
            if max_samples is not None and len(examples) >= max_samples:
                break
        if max_samples is not None and len(examples) >= max_samples:
            break
    if not examples:
        dropped = f", {counts.summary()}" if counts is not None else ""
        raise ValueError(f"no usable samples in {list(shards)[:3]}... ({skipped} skipped{dropped})")
    log.info("loaded %d samples into memory (%d skipped)", len(examples), skipped)
    return examples, skipped, counts


class InMemoryShards:
    """All samples of some shards, decoded once: uint8 images, captions, reward values and masks."""

    def __init__(
        self,
        shards: Sequence[str],
        image_size: int,
        reward_names: Sequence[str],
        bins: RewardBins | None,
        max_samples: int | None = None,
        sample_filter: SampleFilter | None = None,
    ) -> None:
        decode = partial(decode_sample, image_size=image_size, reward_names=reward_names, bins=bins)
        examples, self.skipped, self.filter_counts = decode_all(shards, decode, max_samples, sample_filter)
        self.keys = [e["key"] for e in examples]
        self.images = torch.stack([e["image"] for e in examples])
        self.captions = [e["caption"] for e in examples]
        self.syn_captions: list[str | None] = [e.get("syn_caption") for e in examples]
        self.rewards = torch.stack([e["rewards"] for e in examples])
        self.reward_mask = torch.stack([e["reward_mask"] for e in examples])

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, index: torch.Tensor, synthetic: torch.Tensor | None = None) -> dict[str, Any]:
        """Samples ``index``; rows where ``synthetic`` is True use their synthetic caption, if any."""
        rows = index.tolist()
        use = synthetic.tolist() if synthetic is not None else [False] * len(rows)
        return {
            "image": to_model_range(self.images[index]),
            "caption": [
                self.syn_captions[i] if u and self.syn_captions[i] is not None else self.captions[i]
                for i, u in zip(rows, use, strict=True)
            ],
            "rewards": self.rewards[index],
            "reward_mask": self.reward_mask[index],
        }


class InMemoryCachedShards:
    """All samples of some cached shards: latents (and posterior stds), unpadded text features, rewards."""

    def __init__(
        self,
        shards: Sequence[str],
        reward_names: Sequence[str],
        bins: RewardBins | None,
        max_samples: int | None = None,
        sample_filter: SampleFilter | None = None,
    ) -> None:
        decode = partial(decode_cached_sample, reward_names=reward_names, bins=bins)
        examples, self.skipped, self.filter_counts = decode_all(shards, decode, max_samples, sample_filter)
        self.keys = [e["key"] for e in examples]
        with_std = sum("latent_std" in e for e in examples)
        if with_std not in (0, len(examples)):
            raise ValueError(
                f"{with_std} of {len(examples)} cached samples have latent_std.npy: the shards were cached "
                "with different latent modes; re-cache them with one"
            )
        self.latents = torch.stack([e["latent"] for e in examples])
        self.latent_std = torch.stack([e["latent_std"] for e in examples]) if with_std else None
        self.text_tokens = [e["text_tokens"] for e in examples]  # float16, unpadded
        self.captions = [e["caption"] for e in examples]
        self.syn_text_tokens: list[torch.Tensor | None] = [e.get("syn_text_tokens") for e in examples]
        self.syn_captions: list[str | None] = [e.get("syn_caption") for e in examples]
        self.rewards = torch.stack([e["rewards"] for e in examples])
        self.reward_mask = torch.stack([e["reward_mask"] for e in examples])

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, index: torch.Tensor, synthetic: torch.Tensor | None = None) -> dict[str, Any]:
        """Samples ``index``; rows where ``synthetic`` is True use their synthetic caption's cached
        features (and text) if they have them."""
        rows = index.tolist()
        use = synthetic.tolist() if synthetic is not None else [False] * len(rows)
        syn = [u and self.syn_text_tokens[i] is not None for i, u in zip(rows, use, strict=True)]
        features = [
            (self.syn_text_tokens[i] if s else self.text_tokens[i]).float()
            for i, s in zip(rows, syn, strict=True)
        ]
        text_tokens, text_mask = pad_rows(features, features[0].shape[1])
        batch = {
            "latent": self.latents[index],
            "text_tokens": text_tokens,
            "text_mask": text_mask,
            "caption": [
                (self.syn_captions[i] or self.captions[i]) if s else self.captions[i]
                for i, s in zip(rows, syn, strict=True)
            ],
            "rewards": self.rewards[index],
            "reward_mask": self.reward_mask[index],
        }
        if self.latent_std is not None:
            batch["latent_std"] = self.latent_std[index]
        return batch


def step_seed(seed: int, rank: int, step: int) -> int:
    """A distinct, process-independent RNG seed per (run seed, rank, step)."""
    return ((seed * 1_000_003 + rank) * 1_000_033 + step) % (2**63)


class StepIndexedBatches(IterableDataset):
    """Endless batches where batch number ``s`` depends only on ``(seed, rank, s)``."""

    def __init__(
        self,
        data: InMemoryShards | InMemoryCachedShards,
        batch_size: int,
        seed: int,
        rank: int,
        start_step: int,
        synthetic_caption_prob: float = 0.0,
    ) -> None:
        self.data, self.batch_size, self.seed, self.rank, self.start_step = (
            data,
            batch_size,
            seed,
            rank,
            start_step,
        )
        self.synthetic_caption_prob = synthetic_caption_prob

    def __iter__(self) -> Iterator[dict[str, Any]]:
        step = self.start_step
        while True:
            gen = torch.Generator().manual_seed(step_seed(self.seed, self.rank, step))
            index = torch.randint(len(self.data), (self.batch_size,), generator=gen)
            synthetic = None
            if self.synthetic_caption_prob > 0:  # drawn after the index: batches without mixing are unchanged
                synthetic = torch.rand(self.batch_size, generator=gen) < self.synthetic_caption_prob
            yield self.data.batch(index, synthetic)
            step += 1


class CaptionMixer:
    """webdataset ``map`` stage of the streaming mode: each example that has a synthetic caption uses it
    (its cached features too) with probability ``prob``. Seeded per (seed, rank, worker, start step)."""

    def __init__(self, prob: float, seed: int, rank: int, start_step: int) -> None:
        self.prob, self.seed, self.rank, self.start_step = prob, seed, rank, start_step
        self._rng: random.Random | None = None

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
            self._rng = random.Random(step_seed(self.seed, self.rank * 1009 + worker, self.start_step))
        if self._rng.random() >= self.prob:
            return example
        cached = "text_tokens" in example
        if cached and example.get("syn_text_tokens") is not None:
            example["text_tokens"] = example["syn_text_tokens"]
            example["caption"] = example.get("syn_caption") or example["caption"]
        elif not cached and example.get("syn_caption") is not None:
            example["caption"] = example["syn_caption"]
        return example


class ShardDataModule(L.LightningDataModule):
    """Training batches from annotated shards; see the module docstring for the modes.

    With ``cached``, ``image_size`` must be the size ``cache-latents`` cropped to: batches do not use
    it, but sample grids and the export record it as the pixel size. ``pin_memory`` speeds up
    host-to-GPU copies; ``prefetch_factor`` batches are kept ready per worker. ``filters``: rules of
    :mod:`miro.data.filters` (None: keep everything); streaming counts them in a census over the
    shards' small fields at setup (``filter_census``), in-memory while loading.
    """

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
        cached: bool = False,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        filters: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
        filter_report: str | None = None,
        filter_census: bool = True,
        synthetic_caption_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= synthetic_caption_prob <= 1.0:
            raise ValueError(f"data.synthetic_caption_prob must be in [0, 1], got {synthetic_caption_prob}")
        self.synthetic_caption_prob = float(synthetic_caption_prob)
        self.sample_filter = SampleFilter.from_config(filters)
        self.filter_report = filter_report
        self.filter_census = filter_census
        self.filter_counts: FilterCounts | None = None
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
        self.cached = cached
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.bins: RewardBins | None = None
        self._memory: InMemoryShards | InMemoryCachedShards | None = None

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
        if not self.in_memory:
            self._check_mode(self.urls[0])
        if self.in_memory and self._memory is None:
            if self.cached:
                self._memory = InMemoryCachedShards(
                    self.urls, self.reward_names, self.bins, self.max_in_memory_samples, self.sample_filter
                )
            else:
                self._memory = InMemoryShards(
                    self.urls, self.image_size, self.reward_names, self.bins, self.max_in_memory_samples,
                    self.sample_filter,
                )
            self._report_filter(self._memory.filter_counts, "in_memory")
        elif not self.in_memory and self.sample_filter is not None and self.filter_census:
            if self.filter_counts is None:
                counts = census(self.urls, self.sample_filter)
                if counts.kept == 0:
                    raise ValueError(f"data.filters drop every sample of {self.shards}: {counts.summary()}")
                self._report_filter(counts, "census")

    def _report_filter(self, counts: FilterCounts | None, how: str) -> None:
        """Log the filter's kept/dropped counts and save them (rank 0) to ``filter_report``."""
        if counts is None:
            return
        self.filter_counts = counts
        log.info("%s", counts.summary())
        rank_zero = self.trainer is None or self.trainer.is_global_zero
        if self.filter_report and rank_zero:
            report = counts.to_json() | {
                "counted": how,
                "shards": len(self.urls),
                "rules": [
                    {"shards": r.shards, "min_scores": dict(r.min_scores), "max_scores": dict(r.max_scores),
                     "min_width": r.min_width, "min_height": r.min_height}
                    for r in self.sample_filter.rules
                ],
            }
            Path(self.filter_report).parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.filter_report, (json.dumps(report, indent=2) + "\n").encode())

    def _check_mode(self, shard: str) -> None:
        """Fail now if the shards do not hold what the mode reads: the endless resampled stream would
        otherwise skip every sample, one warning at a time, and never yield a batch."""
        first = next(iter_shard(shard), None)
        if first is None:
            raise ValueError(f"shard {shard} is empty")
        if self.cached and LATENT_EXT not in first:
            raise ValueError(
                f"data.cached is true but shard {shard} has no {LATENT_EXT} (sample {first['__key__']}): "
                "run cache-latents on the shards, or train from raw images (data=webdataset)"
            )
        if not self.cached and not any(ext in first for ext in IMAGE_EXTS):
            raise ValueError(
                f"shard {shard} has no image (sample {first['__key__']}); if it holds cached latents, set "
                "data.cached=true (data=cached)"
            )

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        start = self.trainer.global_step if self.trainer is not None else 0
        if self._memory is not None:
            dataset = StepIndexedBatches(
                self._memory, self.batch_size, self.seed, rank, start, self.synthetic_caption_prob
            )
            return DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=self.pin_memory)
        if self.cached:
            decode = partial(decode_cached_sample, reward_names=self.reward_names, bins=self.bins)
            collation = collate_cached
        else:
            decode = partial(
                decode_sample, image_size=self.image_size, reward_names=self.reward_names, bins=self.bins
            )
            collation = collate
        pipeline = wds.DataPipeline(
            # webdataset mixes rank and worker id into this seed; the start step makes a resumed run
            # draw a fresh stream instead of replaying the shards it already saw.
            wds.ResampledShards(self.urls, seed=step_seed(self.seed, 0, start), deterministic=True),
            wds.tarfile_to_samples(handler=_skip_and_log),
            *([wds.select(partial(keep_sample, self.sample_filter))] if self.sample_filter else []),
            wds.shuffle(self.shuffle_buffer),
            wds.map(decode, handler=_skip_and_log),
            *([wds.map(CaptionMixer(self.synthetic_caption_prob, self.seed, rank, start))]
              if self.synthetic_caption_prob > 0 else []),
            wds.batched(self.batch_size, collation_fn=collation, partial=False),
        )
        return DataLoader(
            pipeline,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
        )
