"""Run the evaluations on a trained model: benchmark, reward-control sweeps and best-of-N.

The prompts, their categories and how an image is judged beyond its rewards come from a
:class:`~miro.eval.benchmark.Benchmark` (chosen by name, ``conf/benchmark/``); nothing here knows a
particular domain. A judge's metrics (the shapes world's all-facts-hold accuracy) fill the benchmark
table and are swept with the rewards the judge reads; a benchmark without a judge (a prompt file
judged by rewards) gets the rewards' means, overall and per category.

Every number comes with its spread: means with standard errors over images, accuracies with binomial
standard errors, so a reader can tell an effect from noise.

All studies draw from one list of benchmark items (prompt, seed), and an image is defined by its item
and the reward targets. Two consequences make the evaluation cheap and its comparisons sharp:

* images are generated once and reused: every sweep's top point (that reward at 10, the others at
  10) is the benchmark at all targets 10, and a sweep over fewer images uses the first ones;
* comparisons between targets are *paired*: the same prompts and the same initial noise at both
  levels, so the standard error of a difference is that of the per-image differences, which is much
  smaller than the two unpaired standard errors combined when the noise explains much of the score.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miro.eval.benchmark import Benchmark, BenchmarkItem, category_rows, mean_se, metric_stats
from miro.pipeline import MODEL_DEFAULT, TARGET_MAX, MiroPipeline, canonical_reward_name, parse_reward_spec
from miro.rewards.base import RewardModel
from miro.utils.hardware import cpu_info, thread_changes

log = logging.getLogger(__name__)
Progress = Callable[[int], None]
Targets = tuple[tuple[str, float], ...]  # sorted (reward, target) pairs: a hashable image condition
# The headline condition of a reward-conditioned model: every reward at its top target.
TOP_CONDITION = f"all targets {TARGET_MAX:g}"


@dataclass
class EvalSettings:
    """How many images each study uses (the prompts are the benchmark's).

    The defaults are sized for the embedded demo: 832 images (the shapes benchmark's 96 prompts x 2;
    alignment, the reward its judge reads, swept over all of them, the other rewards over the first 32;
    best-of-16 on 4 prompts). Measured on the
    reference 2-core CPU with the demo-size model (hidden 128, depth 6, 32 px, 25 steps, bf16): 89 s
    on one thread, 52 s on two. With 192 pairs the standard error of the alignment accuracy
    difference is at most sqrt(2 * 0.21 / 192) = 0.047 at accuracy ~0.3 even if pairing did not
    help (it does: the same noise at both targets), so a difference of 0.1 clears two of them.
    """

    samples_per_prompt: int = 2      # benchmark images per prompt
    sweep_levels: tuple[float, ...] = (0.0, 5.0, 10.0)
    sweep_images: int = 32           # images per sweep point, rewards the judge does not read
    best_of_prompts: int = 4         # prompts in the best-of-N study
    best_of_max: int = 16            # N = 1 .. best_of_max
    all_low: bool = False            # also run the benchmark with every target at 0
    guidance: float | None = None    # None: the model's default
    steps: int | None = None
    # The evaluated model's negative branch (never the baseline's): None keeps the model's default.
    negative_rewards: str | None = None  # targets as NAME=VALUE,...; unnamed rewards 0 ("" = all 0)
    negative_prompt: str | None = None   # caption of the negative branch ("" = empty text; None: the model's)
    push: str | None = None              # push one reward: negative = all targets except this one at 0
    # Targets of the headline condition as NAME=VALUE,... (unnamed rewards 10); None: every reward at 10.
    targets: str | None = None
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("samples_per_prompt", "sweep_images", "best_of_prompts", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.best_of_max < 0:
            raise ValueError(f"best_of_max must be >= 0, got {self.best_of_max}")
        self.sweep_levels = tuple(sorted({float(x) for x in self.sweep_levels}))
        if len(self.sweep_levels) < 2 or not all(0.0 <= x <= TARGET_MAX for x in self.sweep_levels):
            raise ValueError(
                f"sweep_levels needs at least two distinct targets in [0, {TARGET_MAX:g}], "
                f"got {self.sweep_levels}"
            )


@dataclass
class EvalResults:
    """Everything :meth:`Evaluator.run` measured, keyed as the comments say (JSON-ready via to_dict)."""

    model: str
    settings: dict[str, Any]
    sampling: dict[str, Any] = field(default_factory=dict)  # guidance, steps, precision actually used
    # the benchmark (its describe()) and its judge's metrics, headline first: {benchmark, metrics}
    judge: dict[str, Any] = field(default_factory=dict)
    # condition label -> per-category rows of the judge's metrics (METRIC, METRIC_se) and a last row
    # "overall"; empty for a benchmark without a judge. condition label -> reward -> mean/se/n
    benchmark: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rewards_at: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # condition label -> category -> reward -> mean/se/n
    rewards_by_category: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    # condition label -> reward (per_image) / judge metric (per_image_metrics) -> one value per benchmark
    # image (prompt order, fixed seeds), so two evaluations with the same settings can be compared image
    # by image (miro-eval compare)
    per_image: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    per_image_metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # reward -> sweep points (with the judge's metrics for the rewards the judge reads);
    # reward -> "reward" (and each judge metric) -> paired top - bottom
    sweeps: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    contrasts: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    best_of_n: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # model -> reward -> curve
    data_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    images_generated: int = 0
    image_dir: str | None = None  # where the headline images went for an external judge (GenEval)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(high: torch.Tensor, low: torch.Tensor) -> dict[str, float]:
    """Mean of ``high - low`` over pairs (same prompt and noise), its standard error and z = mean / se."""
    high, low = high.float(), low.float()
    if high.shape != low.shape:
        raise ValueError(f"paired values need equal shapes, got {tuple(high.shape)} and {tuple(low.shape)}")
    keep = ~(high.isnan() | low.isnan())
    stats = mean_se(high[keep] - low[keep])
    diff, se = stats["mean"], stats["se"]
    if math.isnan(diff) or math.isnan(se):
        z = float("nan")
    elif se > 0:
        z = diff / se
    else:  # every pair moved by exactly the same amount
        z = math.copysign(math.inf, diff) if diff else 0.0
    return {"difference": diff, "se": se, "z": z, "n": stats["n"]}


def expected_best_of(values: torch.Tensor, max_n: int | None = None) -> list[float]:
    """Expected maximum of N samples drawn without replacement from each row of ``values`` [P, M],
    N = 1..max_n, averaged over rows.

    Uses every subset at once (the order-statistics form: the k-th smallest of M values is the best of
    a random N-subset with probability C(k-1, N-1) / C(M, N)) instead of one running maximum, which
    depends on the arbitrary order in which samples were drawn.
    """
    rows = torch.sort(values.double(), dim=1).values  # ascending
    m = rows.shape[1]
    max_n = m if max_n is None else min(max_n, m)
    curve = []
    for n in range(1, max_n + 1):
        weights = torch.tensor([math.comb(k - 1, n - 1) for k in range(1, m + 1)], dtype=torch.float64)
        curve.append(float((rows @ (weights / math.comb(m, n))).mean()))
    return curve


class Evaluator:
    """Generates (with caching) and scores the images of every study; :meth:`run` returns the results."""

    def __init__(
        self, pipe: MiroPipeline, rewards: Mapping[str, RewardModel], settings: EvalSettings,
        benchmark: Benchmark, progress: Progress | None = None, image_dir: str | Path | None = None,
    ) -> None:
        self.pipe, self.rewards, self.s, self.bench = pipe, dict(rewards), settings, benchmark
        if settings.negative_rewards is not None:
            if not pipe.reward_names:
                raise ValueError("negative_rewards needs a model with reward conditioning; this one has none")
            parse_reward_spec(settings.negative_rewards, pipe.reward_names)  # a bad spec fails here, named
        if settings.push is not None:
            if settings.negative_rewards is not None:
                raise ValueError("give push or negative_rewards, not both: push builds the negative branch")
            canonical_reward_name(settings.push, pipe.reward_names)  # an unknown reward fails here, named
        self.headline_targets = self.top() | parse_reward_spec(settings.targets, pipe.reward_names)
        self.progress = progress or (lambda n: None)
        self.image_dir = Path(image_dir) if image_dir is not None and benchmark.writes_images else None
        self.items: list[BenchmarkItem] = [
            item for item in benchmark.items() for _ in range(settings.samples_per_prompt)
        ]
        self.seeds = [settings.seed + i for i in range(len(self.items))]
        self._cache: dict[tuple[int, Targets], torch.Tensor] = {}
        self.images_generated = 0

    # -- what to generate ----------------------------------------------------------------------------
    def top(self, pipe: MiroPipeline | None = None) -> dict[str, float]:
        return dict.fromkeys((pipe or self.pipe).reward_names, TARGET_MAX)

    def swept_rewards(self) -> list[str]:
        return [name for name in self.pipe.reward_names if name in self.rewards]

    def sweep_size(self, reward: str) -> int:
        """A reward the judge reads uses every benchmark item (the judge's metric is the headline
        number); the others fewer."""
        if reward in self.bench.required_rewards:
            return len(self.items)
        return min(self.s.sweep_images, len(self.items))

    def requests(self) -> Iterator[tuple[dict[str, float], int]]:
        """(targets, number of benchmark items) for every image set the benchmark and sweeps use."""
        for targets in self.conditions().values():
            yield targets, len(self.items)
        for name in self.swept_rewards():
            for level in self.s.sweep_levels:
                yield self.top() | {name: level}, self.sweep_size(name)

    def total_images(self, with_baseline: bool = False) -> int:
        """How many images :meth:`run` generates (for a progress bar); reused images count once."""
        largest: dict[Targets, int] = {}
        for targets, n in self.requests():
            key = _key(targets)
            largest[key] = max(largest.get(key, 0), n)
        best_of = self.best_of_size() * (2 if with_baseline else 1)
        return sum(largest.values()) + best_of

    def best_of_size(self) -> int:
        """Images of one model's best-of-N study (none without a reward to pick by)."""
        if self.s.best_of_max == 0 or not self.rewards:
            return 0
        return min(self.s.best_of_prompts, len(self.bench.prompts())) * self.s.best_of_max

    # -- generation and scoring --------------------------------------------------------------------
    def generate(
        self, pipe: MiroPipeline, prompts: Sequence[str], seeds: Sequence[int], targets: Mapping[str, float]
    ) -> torch.Tensor:
        out = []
        own = pipe is self.pipe  # the negative-branch settings are the evaluated model's, not the baseline's
        for i in range(0, len(prompts), self.s.batch_size):
            chunk = slice(i, i + self.s.batch_size)
            out.append(pipe(
                list(prompts[chunk]), rewards=dict(targets) if pipe.reward_names else None,
                negative_rewards=self.s.negative_rewards if own else None,
                negative_prompt=self.s.negative_prompt if own and self.s.negative_prompt is not None
                else MODEL_DEFAULT,
                push=self.s.push if own else None,
                guidance=self.s.guidance, steps=self.s.steps, seed=list(seeds[chunk]), output="tensor",
            ))
            self.images_generated += len(out[-1])
            self.progress(len(out[-1]))
        return torch.cat(out)

    def images(self, targets: Mapping[str, float], n: int) -> torch.Tensor:
        """Images of the first ``n`` benchmark items at ``targets``, generated only where not cached."""
        key = (id(self.pipe), _key(targets))
        have = self._cache.get(key)
        done = 0 if have is None else len(have)
        if done < n:
            new = self._produce(targets, range(done, n))
            have = new if have is None else torch.cat([have, new])
            self._cache[key] = have
        return have[:n]

    def _produce(self, targets: Mapping[str, float], indices: range) -> torch.Tensor:
        """Generate the images of items ``indices``; for the headline condition of a benchmark whose
        images go to an external judge, read back those an earlier run stored and store the new ones."""
        store = self.image_dir is not None and _key(targets) == _key(self.headline_targets)
        images: dict[int, torch.Tensor] = {}
        if store:
            for i in indices:
                stored = self.bench.stored_image(self.image_dir, i, self.s.samples_per_prompt)
                if stored is not None:
                    images[i] = stored
            if images:
                self.progress(len(images))
        missing = [i for i in indices if i not in images]
        if missing:
            prompts = [self.items[i].prompt for i in missing]
            new = self.generate(self.pipe, prompts, [self.seeds[i] for i in missing], targets)
            if store:
                self.bench.write_images(self.image_dir, missing, new, self.s.samples_per_prompt)
            images |= dict(zip(missing, new, strict=True))
        return torch.stack([images[i] for i in indices])

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {name: model.score(images, list(prompts)) for name, model in self.rewards.items()}

    # -- the studies --------------------------------------------------------------------------------
    def judge(
        self, n: int, images: torch.Tensor, scores: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The judge's metrics of the first ``n`` items' images (none for a benchmark without a judge)."""
        if not self.bench.metrics:
            return {}
        metrics = self.bench.judge(self.items[:n], images, scores)
        return {m.name: metrics[m.name].float() for m in self.bench.metrics}

    def benchmark(self, targets: Mapping[str, float]) -> dict[str, Any]:
        """Every benchmark item at ``targets``: per-category rows of the judge's metrics, mean rewards
        (overall and per category) and the per-image scores and metrics."""
        images = self.images(targets, len(self.items))
        scores = self.score(images, [item.prompt for item in self.items])
        metrics = self.judge(len(self.items), images, scores)
        rows = []
        if metrics:
            rows = category_rows(self.items, self.bench.metrics, metrics, self.bench.categories())
        by_category: dict[str, dict[str, dict[str, float]]] = {}
        for category in self.bench.categories():
            idx = torch.tensor([i for i, item in enumerate(self.items) if item.category == category])
            by_category[category] = {name: mean_se(v[idx]) for name, v in scores.items()}
        return {"rows": rows, "rewards": {name: mean_se(v) for name, v in scores.items()},
                "by_category": by_category, "scores": scores, "metrics": metrics}

    def sweep(self, reward: str) -> tuple[list[dict[str, float]], dict[str, dict[str, float]]]:
        """Sweep one reward's target over the levels, others at the top, and measure that reward.

        Returns the points (mean and standard error per level) and the paired top-minus-bottom
        contrasts: of the reward itself and, when the judge reads this reward, of each of the judge's
        metrics (the shapes world's all-facts-hold accuracy) other than one named as a reward.
        """
        n = self.sweep_size(reward)
        prompts = [item.prompt for item in self.items[:n]]
        judged = reward in self.bench.required_rewards
        read = [*self.bench.required_rewards] if judged else [reward]
        swept = [m for m in self.bench.metrics if m.name not in self.rewards] if judged else []
        points, values, metric_values = [], [], []
        for level in self.s.sweep_levels:
            images = self.images(self.top() | {reward: level}, n)
            scores = {name: self.rewards[name].score(images, prompts) for name in read}
            values.append(scores[reward])
            point = {"target": float(level), **mean_se(scores[reward])}
            metrics = self.judge(n, images, scores) if swept else {}
            for metric in swept:
                point |= metric_stats(metric, metrics[metric.name])
            metric_values.append(metrics)
            points.append(point)
        contrasts = {"reward": paired_difference(values[-1], values[0])}
        for metric in swept:
            top, bottom = metric_values[-1][metric.name], metric_values[0][metric.name]
            contrasts[metric.name] = paired_difference(top, bottom)
        return points, contrasts

    def best_of_n(self, pipe: MiroPipeline) -> dict[str, list[float]]:
        """Expected best reward among N samples per prompt, N = 1..best_of_max (mean over prompts)."""
        chosen = self.bench.prompts()[: self.s.best_of_prompts]
        prompts = [p for p in chosen for _ in range(self.s.best_of_max)]
        seeds = [self.s.seed + 1_000_000 + i for i in range(len(prompts))]  # disjoint from the items' seeds
        images = self.generate(pipe, prompts, seeds, self.top(pipe))
        return {
            name: expected_best_of(values.nan_to_num(0.0).reshape(len(chosen), self.s.best_of_max))
            for name, values in self.score(images, prompts).items()
        }

    def headline(self) -> str:
        """The label of the headline condition: every target at the top, or the targets asked for."""
        if not self.pipe.reward_names:
            return "unconditional"
        if self.headline_targets == self.top():
            return TOP_CONDITION
        spec = ", ".join(f"{k}={v:g}" for k, v in self.headline_targets.items() if v != TARGET_MAX)
        return f"targets {spec}, others {TARGET_MAX:g}"

    def conditions(self) -> dict[str, dict[str, float]]:
        """The benchmark's conditions by label: the headline (all targets high unless asked otherwise);
        the lowest sweep point of each reward the judge reads (its per-category table shows what that
        target alone changes); optionally all low."""
        names = self.pipe.reward_names
        if not names:
            return {"unconditional": {}}
        out = {self.headline(): self.headline_targets}
        for reward in self.bench.required_rewards:
            if reward in self.swept_rewards():
                low = self.s.sweep_levels[0]
                out[f"{reward} {low:g}, others {TARGET_MAX:g}"] = self.top() | {reward: low}
        if self.s.all_low:
            out["all targets 0"] = dict.fromkeys(names, 0.0)
        return out

    def run(self, model_name: str, baseline: MiroPipeline | None = None) -> EvalResults:
        absent = [name for name in self.bench.required_rewards if name not in self.rewards]
        if absent:
            raise ValueError(
                f"the {self.bench.name} benchmark's judge reads the reward(s) {', '.join(absent)}: "
                f"measure them (--rewards {','.join([*self.bench.required_rewards, *self.rewards])})"
            )
        start = time.perf_counter()
        resolved = self.pipe.sampling(self.s.guidance, self.s.steps)
        sampling = {
            "guidance": resolved["guidance"], "steps": resolved["steps"], "precision": self.pipe.precision,
            "threads": torch.get_num_threads(), "cpu_kind": cpu_info().kind,
        }
        res = EvalResults(
            model=model_name, sampling=sampling,
            settings=asdict(self.s) | {"benchmark": self.bench.describe()},
            judge={"benchmark": self.bench.describe(), "metrics": [asdict(m) for m in self.bench.metrics],
                   "required_rewards": list(self.bench.required_rewards)},
            image_dir=None if self.image_dir is None else str(self.image_dir),
        )
        bins = self.pipe.pretrained.bins
        for name in self.rewards:
            if bins is not None and name in bins.names:
                res.data_range[name] = bins.data_range(name)
        for label, targets in self.conditions().items():
            log.info("benchmark: %s", label)
            out = self.benchmark(targets)
            res.benchmark[label], res.rewards_at[label] = out["rows"], out["rewards"]
            res.rewards_by_category[label] = out["by_category"]
            res.per_image[label] = {name: v.float().tolist() for name, v in out["scores"].items()}
            res.per_image_metrics[label] = {name: v.float().tolist() for name, v in out["metrics"].items()}
        for name in self.swept_rewards():
            log.info("control sweep: %s", name)
            res.sweeps[name], res.contrasts[name] = self.sweep(name)
        if self.best_of_size() > 0:
            res.best_of_n[model_name] = self.best_of_n(self.pipe)
            if baseline is not None:
                res.best_of_n["baseline"] = self.best_of_n(baseline)
        res.images_generated = self.images_generated
        res.seconds = time.perf_counter() - start
        res.sampling["thread_changes"] = thread_changes()  # threads=auto followed the load (or [])
        return res


def _key(targets: Mapping[str, float]) -> Targets:
    return tuple(sorted((k, float(v)) for k, v in targets.items()))


def control_check(res: EvalResults, z_threshold: float = 2.0) -> dict[str, Any]:
    """The demo's acceptance numbers, each a paired top-minus-bottom difference with its standard error.

    * each judge metric swept with a reward the judge reads (the shapes world: ``alignment_accuracy``,
      the all-facts-hold accuracy with the alignment target at the top vs the bottom, others at the top);
    * for each swept reward: it "rises" only when its measured value at the top target exceeds the
      bottom one by more than ``z_threshold`` standard errors (a positive difference alone is noise
      half of the time), and "stays within the data" when every point's mean lies inside the range of
      the training data's scores (a reward pushed outside it is likely being won by an artefact).
    The least-squares slope over the sweep's means is reported for reading, not for the verdict.
    """
    out: dict[str, Any] = {"z_threshold": z_threshold}
    for reward, contrasts in res.contrasts.items():
        points = res.sweeps.get(reward)
        for metric, contrast in contrasts.items():
            if metric == "reward" or not points or metric not in points[0]:
                continue
            out[f"{reward}_{metric}"] = {
                "low_target": points[0][metric], "high_target": points[-1][metric], **contrast,
                "significant": bool(contrast["z"] > z_threshold),
            }
    for name, pts in res.sweeps.items():
        means = np.array([p["mean"] for p in pts], dtype=np.float64)
        targets = np.array([p["target"] for p in pts], dtype=np.float64)
        finite = np.isfinite(means)
        slope = float(np.polyfit(targets[finite], means[finite], 1)[0]) if finite.sum() > 1 else float("nan")
        contrast = res.contrasts.get(name, {}).get("reward", {})
        rng = res.data_range.get(name)
        out[name] = {
            "slope_per_target_unit": slope,
            "top_minus_bottom": contrast,
            "rises": bool(contrast.get("z", float("nan")) > z_threshold),
            "within_data_range": bool(
                rng is None or (finite.all() and means.min() >= rng[0] and means.max() <= rng[1])
            ),
        }
    return out
