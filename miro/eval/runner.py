"""Run the evaluations on a trained model: benchmark, reward-control sweeps and best-of-N.

Every number comes with its spread: means with standard errors over images, accuracies with binomial
standard errors, so a reader can tell an effect from noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from miro.eval.benchmark import BenchmarkPrompt, benchmark_prompts, score_benchmark
from miro.pipeline import TARGET_MAX, MiroPipeline
from miro.rewards.base import RewardModel

log = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass
class EvalSettings:
    per_category: int = 16           # benchmark prompts per category
    samples_per_prompt: int = 2      # benchmark images per prompt
    sweep_levels: tuple[float, ...] = (0.0, 2.5, 5.0, 7.5, 10.0)
    sweep_images: int = 48           # images per sweep point
    best_of_prompts: int = 6         # prompts in the best-of-N study
    best_of_max: int = 32            # N = 1 .. best_of_max
    guidance: float | None = None    # None: the model's default
    steps: int | None = None
    seed: int = 0
    batch_size: int = 64


@dataclass
class EvalResults:
    model: str
    settings: dict[str, Any]
    benchmark: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # "high"/"low" -> rows
    rewards_at: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # level -> reward -> stats
    sweeps: dict[str, list[dict[str, float]]] = field(default_factory=dict)     # reward -> points
    best_of_n: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # model -> reward -> curve
    data_range: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_se(values: torch.Tensor) -> dict[str, float]:
    v = values.float()[~values.float().isnan()]
    n = int(v.numel())
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    se = float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se, "n": n}


class Evaluator:
    def __init__(
        self, pipe: MiroPipeline, rewards: Mapping[str, RewardModel], settings: EvalSettings,
        progress: Progress | None = None,
    ) -> None:
        self.pipe, self.rewards, self.s = pipe, dict(rewards), settings
        self.progress = progress or (lambda n: None)

    # -- generation and scoring --------------------------------------------------------------------
    def generate(self, pipe: MiroPipeline, prompts: Sequence[str], seeds: Sequence[int],
                 targets: Mapping[str, float] | None) -> torch.Tensor:
        out = []
        for i in range(0, len(prompts), self.s.batch_size):
            out.append(pipe(
                list(prompts[i : i + self.s.batch_size]), rewards=dict(targets or {}) if pipe.reward_names else None,
                guidance=self.s.guidance, steps=self.s.steps, seed=list(seeds[i : i + self.s.batch_size]),
                output="tensor",
            ))
            self.progress(len(out[-1]))
        return torch.cat(out)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {name: model.score(images, list(prompts)) for name, model in self.rewards.items()}

    # -- the three studies ---------------------------------------------------------------------------
    def benchmark(self, level: float) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]], torch.Tensor]:
        """Benchmark prompts with every reward target at ``level``: per-category table, mean rewards."""
        items: list[BenchmarkPrompt] = [
            p for p in benchmark_prompts(self.s.per_category, self.s.seed) for _ in range(self.s.samples_per_prompt)
        ]
        prompts = [p.prompt for p in items]
        seeds = [self.s.seed + i for i in range(len(items))]
        targets = {n: level for n in self.pipe.reward_names}
        images = self.generate(self.pipe, prompts, seeds, targets)
        scores = self.score(images, prompts)
        rows: list[dict[str, Any]] = []
        if "alignment" in scores:
            per_cat, overall = score_benchmark(items, scores["alignment"])
            rows = [asdict(r) for r in [*per_cat, overall]]
        return rows, {name: mean_se(v) for name, v in scores.items()}, images

    def sweep(self, reward: str) -> list[dict[str, float]]:
        """Sweep one reward's target over the levels, others at the top; measure that reward."""
        prompts_all = [p.prompt for p in benchmark_prompts(self.s.per_category, self.s.seed)]
        prompts = [prompts_all[i % len(prompts_all)] for i in range(self.s.sweep_images)]
        seeds = [self.s.seed + 10_000 + i for i in range(len(prompts))]
        points = []
        for level in self.s.sweep_levels:
            targets = {n: TARGET_MAX for n in self.pipe.reward_names} | {reward: level}
            images = self.generate(self.pipe, prompts, seeds, targets)
            values = self.rewards[reward].score(images, prompts)
            point = {"target": float(level), **mean_se(values)}
            if reward == "alignment":
                correct = (values >= 1.0 - 1e-6).float()
                acc = float(correct.mean())
                point |= {"accuracy": acc, "accuracy_se": math.sqrt(acc * (1 - acc) / len(values))}
            points.append(point)
        return points

    def best_of_n(self, pipe: MiroPipeline) -> dict[str, list[float]]:
        """Expected best reward among N samples per prompt, N = 1..best_of_max (mean over prompts)."""
        prompts_all = [p.prompt for p in benchmark_prompts(self.s.per_category, self.s.seed)]
        step = max(1, len(prompts_all) // self.s.best_of_prompts)
        chosen = prompts_all[::step][: self.s.best_of_prompts]
        prompts = [p for p in chosen for _ in range(self.s.best_of_max)]
        seeds = [self.s.seed + 20_000 + i for i in range(len(prompts))]
        images = self.generate(pipe, prompts, seeds, {n: TARGET_MAX for n in pipe.reward_names})
        curves = {}
        for name, values in self.score(images, prompts).items():
            grid = values.nan_to_num(0.0).reshape(len(chosen), self.s.best_of_max)
            running_max = torch.cummax(grid, dim=1).values  # [P, N]
            curves[name] = running_max.mean(0).tolist()
        return curves

    def run(self, model_name: str, baseline: MiroPipeline | None = None) -> EvalResults:
        res = EvalResults(model=model_name, settings=asdict(self.s))
        bins = self.pipe.pretrained.bins
        for name in self.rewards:
            if bins is not None and name in bins.names:
                res.data_range[name] = bins.data_range(name)
        levels = {"high": TARGET_MAX, "low": 0.0} if self.pipe.reward_names else {"unconditional": TARGET_MAX}
        for label, level in levels.items():
            log.info("benchmark at %s targets", label)
            rows, reward_stats, _ = self.benchmark(level)
            res.benchmark[label], res.rewards_at[label] = rows, reward_stats
        for name in self.pipe.reward_names:
            if name in self.rewards:
                log.info("control sweep: %s", name)
                res.sweeps[name] = self.sweep(name)
        if self.s.best_of_max > 0:
            res.best_of_n[model_name] = self.best_of_n(self.pipe)
            if baseline is not None:
                res.best_of_n["baseline"] = self.best_of_n(baseline)
        return res

    def total_images(self, with_baseline: bool = False) -> int:
        """How many images :meth:`run` generates (for a progress bar)."""
        n_bench = len(benchmark_prompts(self.s.per_category, self.s.seed)) * self.s.samples_per_prompt
        n = n_bench * (2 if self.pipe.reward_names else 1)
        n += sum(1 for r in self.pipe.reward_names if r in self.rewards) * len(self.s.sweep_levels) * self.s.sweep_images
        n += self.s.best_of_prompts * self.s.best_of_max * (2 if with_baseline else 1) if self.s.best_of_max else 0
        return n


def control_check(res: EvalResults) -> dict[str, Any]:
    """The demo's acceptance numbers: alignment accuracy at target 10 vs 0 (difference / its SE), and
    whether each sweep rises with its target while staying inside the training data's range."""
    out: dict[str, Any] = {}
    points = res.sweeps.get("alignment")
    if points and "accuracy" in points[0]:
        lo, hi = points[0], points[-1]
        diff = hi["accuracy"] - lo["accuracy"]
        se = math.sqrt(hi["accuracy_se"] ** 2 + lo["accuracy_se"] ** 2)
        out["alignment_accuracy"] = {
            "low_target": lo["accuracy"], "high_target": hi["accuracy"], "difference": diff, "se": se,
            "z": diff / se if se > 0 else float("inf") if diff > 0 else 0.0,
        }
    for name, pts in res.sweeps.items():
        means = np.array([p["mean"] for p in pts])
        rng = res.data_range.get(name)
        slope = float(np.polyfit([p["target"] for p in pts], means, 1)[0]) if len(pts) > 1 else float("nan")
        out[name] = {
            "slope_per_target_unit": slope,
            "rises": bool(slope > 0 and means[-1] > means[0]),
            "within_data_range": bool(rng is None or (means.min() >= rng[0] and means.max() <= rng[1])),
        }
    return out
