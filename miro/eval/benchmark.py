"""A GenEval-style benchmark for the shapes world.

Six categories as in GenEval (single object, two objects, counting, colours, colour attribution,
position), a fixed prompt set drawn from the caption grammar with a fixed seed, and a programmatic
judge: an image is correct when *every* fact its prompt asserts holds for the objects the alignment
detector finds (GenEval's all-or-nothing rule); the mean fraction of facts that hold is reported too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from miro.data.captions import COLOURS, SHAPES, CaptionSpec, Phrase, render_caption

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "color_attr", "position")
RELATIONS = ("above", "below", "left of", "right of")


@dataclass(frozen=True)
class BenchmarkPrompt:
    category: str
    prompt: str


def _two_distinct(rng: np.random.Generator, items: Sequence[str]) -> tuple[str, str]:
    i, j = rng.choice(len(items), size=2, replace=False)
    return items[i], items[j]


def _spec(category: str, rng: np.random.Generator) -> CaptionSpec:
    shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
    if category == "single_object":
        return CaptionSpec((Phrase(shape),))
    if category == "two_object":
        a, b = _two_distinct(rng, SHAPES)
        return CaptionSpec((Phrase(a), Phrase(b)))
    if category == "counting":
        return CaptionSpec((Phrase(shape, colour, int(rng.integers(2, 5)), exact=True),))
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


def benchmark_prompts(per_category: int = 16, seed: int = 0) -> list[BenchmarkPrompt]:
    """The fixed prompt set: ``per_category`` distinct prompts per category (fewer if a category has
    fewer distinct prompts), the same for every model and run with the same seed."""
    rng = np.random.default_rng(seed)
    out: list[BenchmarkPrompt] = []
    for category in CATEGORIES:
        seen: dict[str, None] = {}
        for _ in range(per_category * 50):
            if len(seen) >= per_category:
                break
            seen.setdefault(render_caption(_spec(category, rng)))
        out.extend(BenchmarkPrompt(category, p) for p in seen)
    return out


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
    rows = []
    for category in dict.fromkeys(p.category for p in prompts):
        idx = torch.tensor([i for i, p in enumerate(prompts) if p.category == category])
        values = alignment[idx]
        correct = (values >= 1.0 - 1e-6).float()
        acc = float(correct.mean())
        rows.append(CategoryScore(category, len(idx), acc, math.sqrt(acc * (1 - acc) / len(idx)),
                                  float(values.nan_to_num(0.0).mean())))
    mean_acc = float(np.mean([r.accuracy for r in rows]))
    se = math.sqrt(sum(r.accuracy_se**2 for r in rows)) / len(rows)
    overall = CategoryScore("overall", len(prompts), mean_acc, se, float(np.mean([r.alignment for r in rows])))
    return rows, overall
