"""What a benchmark is to the evaluation: a fixed, named list of items and an optional judge.

The evaluation (:mod:`miro.eval.runner`), the evidence study and GRPO's held-out split all ask a
:class:`Benchmark` the same three questions: which prompts (in a fixed order, so two runs with the same
settings see the same images), which category each belongs to (the tables are per category), and how an
image is judged beyond the measured rewards. Nothing here knows a particular domain: the shapes world's
benchmark lives in :mod:`miro.shapes.benchmark`, GenEval's and the prompt-file one next to this module,
and a configuration (``conf/benchmark/*.yaml``) picks one by name.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(frozen=True)
class Metric:
    """One per-image metric of a judge. ``binary`` metrics (1 = correct, 0 = not, as GenEval's) get the
    binomial standard error sqrt(p (1 - p) / n); the others the sample standard error of the mean."""

    name: str
    binary: bool = False
    description: str = ""


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
    # What ``judge`` returns, headline first (the benchmark table, the comparison and the control check
    # read the first); empty for a benchmark judged by its rewards alone or outside this framework.
    metrics: tuple[Metric, ...] = ()
    # Images per prompt when the user does not say (GenEval's protocol: 4); None: the evaluation's default.
    samples_per_prompt: int | None = None
    # Measure the model's own rewards by default (the shapes world's offline rewards cost nothing; a real
    # model's need weights and a GPU, so there the user names them with --rewards).
    measures_model_rewards: bool = False

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

    def describe(self) -> dict[str, Any]:
        """What identifies this benchmark's items in a results file (two evaluations are comparable
        image by image only when these agree): its name and settings."""
        return {"name": self.name}

    def categories(self) -> list[str]:
        """Categories in the order the tables list them (first appearance)."""
        return list(dict.fromkeys(item.category for item in self.items()))

    # True when the headline images are stored for an external judge (:meth:`write_images`).
    writes_images: bool = False

    def write_images(  # noqa: B027 (optional hook: most benchmarks store nothing)
        self, out_dir: Path, indices: Sequence[int], images: torch.Tensor, samples_per_prompt: int
    ) -> None:
        """Store the headline condition's images for an external judge (GenEval's layout); by default
        nothing is written. ``indices`` are the images' positions in the evaluation's list (item
        ``i // samples_per_prompt``, sample ``i % samples_per_prompt``)."""

    def stored_image(self, out_dir: Path, index: int, samples_per_prompt: int) -> torch.Tensor | None:
        """A stored image of evaluation item ``index`` (uint8 [3, H, W]) from an earlier, interrupted
        run, or None; lets an evaluation whose images go to an external judge resume."""
        return None


def category_rows(
    items: Sequence[BenchmarkItem], metrics: Sequence[Metric], values: Mapping[str, torch.Tensor],
    order: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Per-category rows ``{category, n, METRIC, METRIC_se, ...}`` and a last row ``overall``.

    The overall value of a metric is the mean over categories (GenEval's overall score), its standard
    error that of a mean of independent category means, sqrt(sum se^2) / k. NaN values (an image the
    judge could not check) count as 0 for binary metrics (wrong) and are left out of the others.
    """
    present = list(dict.fromkeys(item.category for item in items))
    categories = [c for c in order if c in present] + [c for c in present if c not in order]
    rows: list[dict[str, Any]] = []
    for category in categories:
        idx = torch.tensor([i for i, item in enumerate(items) if item.category == category])
        row: dict[str, Any] = {"category": category, "n": len(idx)}
        for metric in metrics:
            row |= metric_stats(metric, values[metric.name].float()[idx])
        rows.append(row)
    overall: dict[str, Any] = {"category": "overall", "n": len(items)}
    for metric in metrics:
        means = [r[metric.name] for r in rows]
        ses = [r[f"{metric.name}_se"] for r in rows]
        overall[metric.name] = float(sum(means) / len(means)) if means else float("nan")
        overall[f"{metric.name}_se"] = math.sqrt(sum(se**2 for se in ses)) / len(ses) if ses else float("nan")
    return [*rows, overall]


def mean_se(values: torch.Tensor) -> dict[str, float]:
    """Mean and its standard error over the finite values (NaN = reward undefined for that image)."""
    v = values.float()[~values.float().isnan()]
    n = int(v.numel())
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    se = float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se, "n": n}


def metric_stats(metric: Metric, values: torch.Tensor) -> dict[str, float]:
    """``{NAME: mean, NAME_se: its standard error}`` of one metric over some images (means in float32, as
    the scores are): binomial for a pass/fail metric (an undefined image counts as a fail), else
    :func:`mean_se` over the defined images."""
    v = values.float()
    if metric.binary:
        p = float(v.nan_to_num(0.0).mean()) if v.numel() else float("nan")
        return {metric.name: p, f"{metric.name}_se": math.sqrt(p * (1 - p) / v.numel()) if v.numel() else p}
    stats = mean_se(v)
    return {metric.name: stats["mean"], f"{metric.name}_se": stats["se"]}


# -- choosing a benchmark by name ---------------------------------------------------------------------

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class BenchmarkError(ValueError):
    """An unknown benchmark, a setting it does not take, or an input it cannot read; one line."""


def benchmark_names(conf_dir: Path | None = None) -> list[str]:
    """The benchmarks a configuration defines: ``conf/benchmark/NAME.yaml``."""
    return sorted(p.stem for p in _benchmark_dir(conf_dir).glob("*.yaml"))


def _benchmark_dir(conf_dir: Path | None) -> Path:
    if conf_dir is None:
        from miro.config import CONF_DIR

        conf_dir = CONF_DIR
    return Path(conf_dir) / "benchmark"


def benchmark_config(name: str, conf_dir: Path | None = None) -> dict[str, Any]:
    """The settings of benchmark ``name`` as ``conf/benchmark/NAME.yaml`` writes them.

    Only a plain name is accepted (a model directory may record which benchmark it is evaluated on, and
    a name can only select one of the configuration's own files, never a callable of its choosing).
    """
    from omegaconf import OmegaConf

    known = benchmark_names(conf_dir)
    if not isinstance(name, str) or not NAME.match(name) or name not in known:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(known)} (conf/benchmark/)")
    config = OmegaConf.to_container(OmegaConf.load(_benchmark_dir(conf_dir) / f"{name}.yaml"), resolve=False)
    if not isinstance(config, dict) or "_target_" not in config:
        raise BenchmarkError(f"conf/benchmark/{name}.yaml needs a _target_ (the Benchmark class)")
    return config


def build_benchmark(name: str, settings: Mapping[str, Any] | None = None, conf_dir: Path | None = None
                    ) -> Benchmark:
    """Benchmark ``name`` (``conf/benchmark/NAME.yaml``) with ``settings`` overriding the file's.

    A setting the file does not list is refused (a typo would otherwise be dropped silently, or reach
    the class as an unexpected argument). Settings left at ``???`` must be given.
    """
    from omegaconf import OmegaConf

    config = benchmark_config(name, conf_dir)
    for key, value in (settings or {}).items():
        if key.startswith("_") or key not in config:
            takes = ", ".join(k for k in config if not k.startswith("_")) or "no settings"
            raise BenchmarkError(f"the {name} benchmark takes no setting {key!r} (it takes: {takes})")
        config[key] = value
    missing = [k for k, v in config.items() if v == "???"]
    if missing:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in missing)
        raise BenchmarkError(f"the {name} benchmark needs {', '.join(missing)} (miro-eval {flags} FILE)")
    return instantiate_benchmark(OmegaConf.create(config), f"conf/benchmark/{name}.yaml")


def instantiate_benchmark(config: Any, where: str = "benchmark") -> Benchmark:
    """A Benchmark from a composed config node (``_target_`` and settings, from ``conf/``: the user's
    configuration, never a model directory); the class's own :class:`BenchmarkError` comes out as itself
    rather than wrapped in Hydra's exception, so a CLI can show it as one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        benchmark = instantiate(config)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, BenchmarkError):
            raise cause from None
        raise BenchmarkError(f"{where}: {err}") from None
    if not isinstance(benchmark, Benchmark):
        raise BenchmarkError(f"{where} builds {type(benchmark).__name__}, not a Benchmark")
    return benchmark
