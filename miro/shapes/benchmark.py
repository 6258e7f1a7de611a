"""A GenEval-style benchmark for the shapes world.

Six categories as in GenEval (single object, two objects, counting, colours, colour attribution,
position), a fixed prompt set drawn from the caption grammar with a fixed seed, and a programmatic
judge: an image is correct when *every* fact its prompt asserts holds for the objects the alignment
detector finds (GenEval's all-or-nothing rule); the mean fraction of facts that hold is reported too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from miro.eval.benchmark import Benchmark, BenchmarkItem, Metric
from miro.shapes.captions import COLOURS, SHAPES, CaptionSpec, Phrase, render_caption

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "color_attr", "position")
RELATIONS = ("above", "below", "left of", "right of")
# Counting asks for 2 to MAX_COUNT objects by default (the numbers tests/test_shapes_pinned.py pins).
MAX_COUNT = 4


@dataclass(frozen=True)
class BenchmarkPrompt:
    category: str
    prompt: str
    spec: CaptionSpec  # what the prompt asserts; the judge checks exactly these facts


def _two_distinct(rng: np.random.Generator, items: Sequence[str]) -> tuple[str, str]:
    i, j = rng.choice(len(items), size=2, replace=False)
    return items[i], items[j]


def _spec(category: str, rng: np.random.Generator, max_count: int = MAX_COUNT) -> CaptionSpec:
    shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
    if category == "single_object":
        return CaptionSpec((Phrase(shape),))
    if category == "two_object":
        a, b = _two_distinct(rng, SHAPES)
        return CaptionSpec((Phrase(a), Phrase(b)))
    if category == "counting":
        return CaptionSpec((Phrase(shape, colour, int(rng.integers(2, max_count + 1)), exact=True),))
    if category == "colors":
        return CaptionSpec((Phrase(shape, colour),))
    if category == "color_attr":
        (a, b), (ca, cb) = _two_distinct(rng, SHAPES), _two_distinct(rng, COLOURS)
        return CaptionSpec((Phrase(a, ca), Phrase(b, cb)))
    if category == "position":
        (ca, cb) = _two_distinct(rng, COLOURS)
        b = SHAPES[rng.integers(len(SHAPES))]
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        return CaptionSpec((Phrase(shape, ca), Phrase(b, cb)), relation=relation)
    raise ValueError(f"unknown benchmark category {category!r}; known: {', '.join(CATEGORIES)}")


def benchmark_prompts(
    per_category: int = 16, seed: int = 0, max_count: int = MAX_COUNT
) -> list[BenchmarkPrompt]:
    """The fixed prompt set: ``per_category`` prompts for each category, the same for every model and
    run with the same seed.

    ``max_count`` is the largest count the counting category asks for (from 2): set it to the world's
    ``--max-objects`` so that the benchmark asks only for scenes the training data shows (a model cannot
    learn "four circles" from images with at most two objects). The default, 4, keeps the numbers of
    the benchmark as it was first defined.

    Prompts are interleaved (prompt j of every category, then prompt j + 1), so any prefix of the list
    covers the categories evenly and a smaller study can reuse the first images of a larger one. A
    category with fewer distinct prompts than ``per_category`` (single_object has 3) repeats its
    prompts in order; a repeat is generated with its own seed, so it is a new sample, and every
    category weighs the same in the overall accuracy.
    """
    if per_category < 1:
        raise ValueError(f"per_category must be at least 1, got {per_category}")
    if max_count < 2:
        raise ValueError(f"max_count must be at least 2 (counting asks for 2 or more), got {max_count}")
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[tuple[str, CaptionSpec]]] = {}
    for category in CATEGORIES:
        seen: dict[str, CaptionSpec] = {}
        for _ in range(per_category * 50):
            if len(seen) >= per_category:
                break
            spec = _spec(category, rng, max_count)
            seen.setdefault(render_caption(spec), spec)
        distinct = list(seen.items())
        chosen[category] = [distinct[j % len(distinct)] for j in range(per_category)]
    return [BenchmarkPrompt(c, *chosen[c][j]) for j in range(per_category) for c in CATEGORIES]


def all_facts_hold(alignment: torch.Tensor) -> torch.Tensor:
    """GenEval's all-or-nothing rule on alignment scores (the fraction of a prompt's facts that hold):
    1.0 where every fact holds, else 0.0; NaN (a prompt the judge cannot check) counts as wrong."""
    return (alignment.float() >= 1.0 - 1e-6).float()


@dataclass
class CategoryScore:
    category: str
    n: int
    accuracy: float
    accuracy_se: float
    alignment: float


def score_benchmark(
    prompts: Sequence[BenchmarkPrompt], alignment: torch.Tensor
) -> tuple[list[CategoryScore], CategoryScore]:
    """Per-category and overall scores from the alignment reward of each image (1.0 = all facts hold).

    The overall accuracy is the mean over categories (as GenEval reports it); standard errors are
    binomial, sqrt(p (1 - p) / n).
    """
    alignment = alignment.float()
    if alignment.shape != (len(prompts),):
        raise ValueError(f"{len(prompts)} prompts but alignment scores of shape {tuple(alignment.shape)}")
    rows = []
    present = {p.category for p in prompts}
    for category in [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES)):
        idx = torch.tensor([i for i, p in enumerate(prompts) if p.category == category])
        values = alignment[idx]
        acc = float(all_facts_hold(values).mean())
        rows.append(CategoryScore(category, len(idx), acc, math.sqrt(acc * (1 - acc) / len(idx)),
                                  float(values.nan_to_num(0.0).mean())))
    mean_acc = float(np.mean([r.accuracy for r in rows]))
    se = math.sqrt(sum(r.accuracy_se**2 for r in rows)) / len(rows)
    mean_alignment = float(np.mean([r.alignment for r in rows]))
    overall = CategoryScore("overall", len(prompts), mean_acc, se, mean_alignment)
    return rows, overall


class ShapesBenchmark(Benchmark):
    """The shapes world's benchmark as the evaluation sees it (``conf/benchmark/shapes.yaml``).

    Items are :func:`benchmark_prompts` (``per_category`` prompts per category drawn with ``seed``,
    counts up to ``max_count``: conf/benchmark/shapes.yaml sets it to the demo world's ``MAX_OBJECTS``);
    the judge reads the alignment detector's scores (the fraction of a prompt's facts that hold) and
    returns GenEval's all-or-nothing ``accuracy`` and that fraction, ``alignment`` (NaN counted 0).
    """

    name = "shapes"
    required_rewards = ("alignment",)
    metrics = (
        Metric("accuracy", binary=True, description="every fact of the prompt holds"),
        Metric("alignment", description="the mean fraction of the prompt's facts that hold"),
    )
    measures_model_rewards = True

    def __init__(self, per_category: int = 16, seed: int = 0, max_count: int = MAX_COUNT) -> None:
        self.per_category, self.seed, self.max_count = int(per_category), int(seed), int(max_count)
        self._items = [
            BenchmarkItem(p.prompt, p.category, {"spec": p.spec})
            for p in benchmark_prompts(self.per_category, self.seed, self.max_count)
        ]

    def items(self) -> list[BenchmarkItem]:
        return list(self._items)

    def categories(self) -> list[str]:
        return [c for c in CATEGORIES if any(item.category == c for item in self._items)]

    def judge(
        self, items: Sequence[BenchmarkItem], images: torch.Tensor, scores: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        alignment = scores["alignment"].float()
        return {"accuracy": all_facts_hold(alignment), "alignment": alignment.nan_to_num(0.0)}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "per_category": self.per_category,
            "seed": self.seed,
            "max_count": self.max_count,
        }


def training_prompts(per_category: int = 64, seed: int = 1, max_count: int = MAX_COUNT) -> list[str]:
    """GRPO's default prompt pool for the shapes world: distinct benchmark-style prompts drawn with
    another seed than the evaluation's (``conf/experiment/rl_shapes_step.yaml`` names this function;
    the evaluation's own prompts are removed from it by the core, read from the chosen benchmark)."""
    return list(dict.fromkeys(p.prompt for p in benchmark_prompts(per_category, seed, max_count)))
