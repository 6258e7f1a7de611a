"""Prompts for GRPO rollouts: a text file or a pool given by the config, minus the evaluation's prompts.

Prompts are drawn per iteration from a generator seeded by (seed, iteration), so a resumed run draws the
prompts an uninterrupted run would have. With ``exclude_eval`` the prompts of the benchmark the model is
evaluated on (the config's ``benchmark``, read from it: ``Benchmark.prompts()``) are removed, so "the
reward rose on held-out prompts" means what it says. The pool itself is domain knowledge and comes from
the config (``conf/experiment/rl_shapes_step.yaml`` asks the shapes plug-in for its grammar's prompts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from miro.data.datamodule import step_seed
from miro.data.prompt_file import read_prompt_file

log = logging.getLogger(__name__)


def training_prompts(
    prompts_file: str | None = None,
    pool: Sequence[str] | None = None,
    held_out: Sequence[str] = (),
) -> list[str]:
    """The prompt pool: ``prompts_file`` if given, else ``pool``; minus the ``held_out`` prompts."""
    if prompts_file:
        prompts = read_prompt_file(prompts_file)
    elif pool:
        prompts = [str(p) for p in pool]
    else:
        raise ValueError("no training prompts: set data.prompts_file (one prompt per line) or data.pool")
    if held_out:
        excluded = set(held_out)
        kept = [p for p in prompts if p not in excluded]
        log.info(
            "prompt pool: %d prompts, %d removed as evaluation prompts", len(kept), len(prompts) - len(kept)
        )
        prompts = kept
    if not prompts:
        raise ValueError("no training prompts left after removing the evaluation prompts")
    return prompts


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

    def __init__(
        self, prompts_per_iteration: int, seed: int = 0, prompts_file: str | None = None,
        pool: Sequence[str] | None = None, exclude_eval: bool = True, held_out: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if prompts_per_iteration < 1:
            raise ValueError(f"prompts_per_iteration must be >= 1, got {prompts_per_iteration}")
        self.prompts_per_iteration = prompts_per_iteration
        self.seed = seed
        self.prompts_file, self.source_pool = prompts_file, list(pool) if pool else None
        self.held_out = list(held_out) if exclude_eval else []
        self.pool: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.pool:
            self.pool = training_prompts(self.prompts_file, self.source_pool, self.held_out)

    def train_dataloader(self) -> DataLoader:
        start = 0
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None and hasattr(module, "iterations_done"):
            start = int(module.iterations_done)
        dataset = PromptBatches(self.pool, self.prompts_per_iteration, self.seed, start)
        return DataLoader(dataset, batch_size=None, num_workers=0)
