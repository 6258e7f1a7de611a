"""What a benchmark is to the evaluation: a fixed, named list of items and an optional judge.

The evaluation (:mod:`miro.eval.runner`), the evidence study and GRPO's held-out split all ask a
:class:`Benchmark` the same three questions: which prompts (in a fixed order, so two runs with the same
settings see the same images), which category each belongs to (the tables are per category), and how an
image is judged beyond the measured rewards. Nothing here knows a particular domain: the shapes world's
benchmark lives in :mod:`miro.shapes.benchmark`, GenEval's and the prompt-file one next to this module,
and a configuration (``conf/benchmark/*.yaml``) picks one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class BenchmarkItem:
    """One prompt of a benchmark.

    ``metadata`` is whatever the benchmark's judge or output writer needs about the item (GenEval's
    whole metadata line; the shapes world's parsed caption); the evaluation never reads it.
    """

    prompt: str
    category: str
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)


class Benchmark(ABC):
    """A named, ordered set of :class:`BenchmarkItem` and a judge of the images generated for them.

    ``judge`` returns per-image metrics in [0, 1] (NaN where an image cannot be judged), keyed by
    metric name, computed from the images and the reward scores already measured for them (so a judge
    built on a reward, like the shapes world's all-facts-hold rule on its detector reward, does not run
    that reward twice). A benchmark whose judge is external (GenEval's detector runs in GenEval's own
    environment) or is just the rewards returns no metrics.
    """

    name: str = ""
    # Rewards the judge reads from ``scores``; the evaluation measures them even if not asked to.
    required_rewards: tuple[str, ...] = ()

    @abstractmethod
    def items(self) -> Sequence[BenchmarkItem]:
        """The items in their fixed order (the same list on every call)."""

    def judge(
        self, items: Sequence[BenchmarkItem], images: torch.Tensor, scores: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Per-image metrics for ``images`` [N, 3, H, W] in [0, 1] generated for ``items`` (one each)."""
        return {}

    def prompts(self) -> list[str]:
        """The distinct prompts, in order: what GRPO's training prompts must not include."""
        return list(dict.fromkeys(item.prompt for item in self.items()))
