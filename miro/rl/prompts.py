"""Prompts for GRPO rollouts: a text file, or the embedded benchmark's grammar minus its test prompts.

Prompts are drawn per iteration from a generator seeded by (seed, iteration), so a resumed run draws the
prompts an uninterrupted run would have. With ``exclude_eval`` the prompts ``miro-eval`` scores (its
default set) are removed, so "the reward rose on held-out prompts" means what it says.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from miro.data.datamodule import step_seed
from miro.data.prompt_file import read_prompt_file
from miro.shapes.benchmark import benchmark_prompts

log = logging.getLogger(__name__)


def training_prompts(
    prompts_file: str | None = None,
    benchmark_seed: int = 1,
    per_category: int = 64,
    exclude_eval: bool = True,
    eval_per_category: int = 16,
    eval_seed: int = 0,
) -> list[str]:
    """The prompt pool: ``prompts_file`` if given, else distinct benchmark prompts drawn with
    ``benchmark_seed``; with ``exclude_eval``, minus those of the evaluator's set (``eval_*``)."""
    if prompts_file:
        pool = read_prompt_file(prompts_file)
    else:
        pool = list(dict.fromkeys(p.prompt for p in benchmark_prompts(per_category, benchmark_seed)))
    if exclude_eval:
        held_out = {p.prompt for p in benchmark_prompts(eval_per_category, eval_seed)}
        kept = [p for p in pool if p not in held_out]
        log.info(
            "prompt pool: %d prompts, %d removed as evaluation prompts", len(kept), len(pool) - len(kept)
        )
        pool = kept
    if not pool:
        raise ValueError("no training prompts left after removing the evaluation prompts")
    return pool


class PromptBatches(IterableDataset):
    """Endless batches of ``batch_size`` prompts; batch i depends only on (seed, i)."""

    def __init__(self, pool: list[str], batch_size: int, seed: int, start: int = 0) -> None:
        self.pool, self.batch_size, self.seed, self.start = pool, batch_size, seed, start

    def __iter__(self) -> Iterator[list[str]]:
        i = self.start
        while True:
            gen = torch.Generator().manual_seed(step_seed(self.seed, 0, i))
            index = torch.randint(len(self.pool), (self.batch_size,), generator=gen)
            yield [self.pool[j] for j in index.tolist()]
            i += 1


class PromptDataModule(L.LightningDataModule):
    """Feeds one batch of prompts per GRPO iteration. On resume it starts at the module's
    ``iterations_done`` (restored from the checkpoint before the loader is built)."""

    def __init__(self, prompts_per_iteration: int, seed: int = 0, **pool_options: object) -> None:
        super().__init__()
        if prompts_per_iteration < 1:
            raise ValueError(f"prompts_per_iteration must be >= 1, got {prompts_per_iteration}")
        self.prompts_per_iteration = prompts_per_iteration
        self.seed = seed
        self.pool_options = pool_options
        self.pool: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.pool:
            self.pool = training_prompts(**self.pool_options)  # type: ignore[arg-type]

    def train_dataloader(self) -> DataLoader:
        start = 0
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None and hasattr(module, "iterations_done"):
            start = int(module.iterations_done)
        dataset = PromptBatches(self.pool, self.prompts_per_iteration, self.seed, start)
        return DataLoader(dataset, batch_size=None, num_workers=0)
