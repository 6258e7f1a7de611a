"""Entry point of the multi-process GRPO test: ``python tests/rl_ddp_entry.py <miro.rl overrides>``.

It is ``python -m miro.rl`` plus two test-only things, both of which every process Lightning launches
re-imports (the launcher re-runs this script): a simple reward (``test_brightness``) and a record of the
prompts each rank rolls out, appended as JSON lines to ``$RL_PROMPT_LOG.rank<r>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from miro.rewards.base import RewardModel, register_reward
from miro.rl.module import GRPOModule


@register_reward
class Brightness(RewardModel):
    """Mean pixel value in [0, 1]: a reward any policy can raise."""

    name = "test_brightness"
    version = "1"

    def score_batch(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        return images.float().mean((1, 2, 3)) / 255.0


@contextmanager
def record_prompts(log_prefix: str | Path) -> Iterator[None]:
    """Append every rank's (iteration, first global prompt index, prompts, rewards) to <prefix>.rank<r>."""
    original = GRPOModule.collect

    def collect(self: GRPOModule, prompts: list[str], iteration: int = 0, first_index: int = 0):  # noqa: ANN202
        batch = original(self, prompts, iteration, first_index)
        record = {"iteration": iteration, "first": first_index, "prompts": prompts,
                  "reward": batch["reward"].tolist()}  # fmt: skip
        path = Path(f"{log_prefix}.rank{self.world()[0]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return batch

    GRPOModule.collect = collect  # type: ignore[method-assign]
    try:
        yield
    finally:
        GRPOModule.collect = original  # type: ignore[method-assign]


if __name__ == "__main__":
    from miro.rl.__main__ import main

    with record_prompts(os.environ["RL_PROMPT_LOG"]):
        main()
