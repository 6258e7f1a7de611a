"""The study's saved runs as typed values, each results.json read once.

:func:`read_evaluation` turns one ``miro-eval`` results.json into an :class:`Evaluation` (the headline
condition's accuracy per category and reward means, the control sweeps and contrasts, best-of-N curves,
the sampling actually used); :func:`collect` reads every run a :class:`~miro.shapes.study.plan.Study`
defines into :class:`Runs`, with ``None`` wherever a run is missing. The report reads nothing else.
Extra fields in results.json are ignored, so newer evaluations stay readable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from miro.eval.compare import CompareError, compare
from miro.eval.compare import load_results as load_eval_results
from miro.eval.study import read_step_log
from miro.shapes.study.plan import ROLES, Study

log = logging.getLogger(__name__)
MANIFEST = "pack.json"  # the manifest of a packed archive of the runs (miro.shapes.study.archive)
OVERALL = "overall"
BASELINE_MODEL = "baseline"  # miro-eval's name for the --baseline model's best-of-N curves


@dataclass(frozen=True)
class SweepPoint:
    """One requested target of a control sweep: the measured reward's mean and, for the alignment
    sweep, the benchmark accuracy."""

    target: float
    mean: float | None
    accuracy: float | None = None


@dataclass(frozen=True)
class Contrast:
    """Top minus bottom target of one reward's sweep, paired within the evaluation."""

    difference: float | None
    z: float | None
    rises: bool  # the evaluator's own verdict where it stored one, else z > 2


@dataclass(frozen=True)
class Evaluation:
    """One miro-eval results.json, as the report uses it."""

    path: Path
    condition: str | None  # the headline: all targets 10 for MIRO, "unconditional" for the baseline
    accuracy: dict[str, float]  # category -> accuracy at the headline condition, benchmark order
    rewards: dict[str, float | None]  # reward -> mean at the headline condition
    guidance: float | None  # the guidance scale the images were sampled with (None: not recorded)
    sweeps: dict[str, list[SweepPoint]] = field(default_factory=dict)
    contrasts: dict[str, Contrast] = field(default_factory=dict)
    best_of: dict[str, list[float]] = field(default_factory=dict)  # the evaluated model: reward -> curve
    baseline_best_of: dict[str, list[float]] = field(default_factory=dict)
    data_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the headline condition image by image (prompt order, fixed seeds): reward or judge metric -> values,
    # so that two evaluations of the same items are compared pair by pair
    per_image: dict[str, list[float]] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)  # the benchmark's describe() (max_count, ...)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # for miro.eval.compare

    def reward(self, name: str) -> float | None:
        return self.rewards.get(name)

    def images(self, name: str) -> list[float] | None:
        """Per-image values of a reward or judge metric (``accuracy``) at the headline condition."""
        return self.per_image.get(name)

    def contrast(self, name: str) -> Contrast:
        return self.contrasts.get(name) or Contrast(None, None, False)


def _contrast(data: dict[str, Any], name: str) -> Contrast:
    stored = (data.get("contrasts", {}).get(name, {}).get("reward")) or {}
    check = (data.get("checks") or {}).get(name)
    check = check if isinstance(check, dict) else {}
    rises = bool(check["rises"]) if "rises" in check else (stored.get("z") or 0) > 2
    return Contrast(stored.get("difference"), stored.get("z"), rises)


def parse_evaluation(data: dict[str, Any], path: Path) -> Evaluation:
    """An :class:`Evaluation` from a results.json's content."""
    benchmark = data.get("benchmark") or {}
    condition = next(iter(benchmark), None)
    rows = benchmark[condition] if condition is not None else []
    accuracy: dict[str, float] = {}
    for row in rows:
        accuracy.setdefault(row["category"], row["accuracy"])
    at = (data.get("rewards_at") or {}).get(condition, {}) if condition is not None else {}
    rewards = {name: (stats or {}).get("mean") for name, stats in at.items()}
    sweeps = {
        name: [SweepPoint(p["target"], p.get("mean"), p.get("accuracy")) for p in points]
        for name, points in (data.get("sweeps") or {}).items()
    }
    checks = {k: v for k, v in (data.get("checks") or {}).items() if isinstance(v, dict)}  # not z_threshold
    named = dict.fromkeys([*(data.get("contrasts") or {}), *checks])
    contrasts = {name: _contrast(data, name) for name in named}
    curves = data.get("best_of_n") or {}
    own = next((c for k, c in curves.items() if k != BASELINE_MODEL), {})
    sampling = data.get("sampling") or {}
    per_image: dict[str, list[float]] = {}
    if condition is not None:
        per_image |= (data.get("per_image") or {}).get(condition) or {}
        per_image |= (data.get("per_image_metrics") or {}).get(condition) or {}
    settings = data.get("settings") or {}
    return Evaluation(
        path=path,
        condition=condition,
        accuracy=accuracy,
        rewards=rewards,
        guidance=sampling.get("guidance"),
        sweeps=sweeps,
        contrasts=contrasts,
        best_of=dict(own),
        baseline_best_of=dict(curves.get(BASELINE_MODEL, {})),
        data_range={k: (v[0], v[1]) for k, v in (data.get("data_range") or {}).items()},
        per_image={k: list(v) for k, v in per_image.items()},
        benchmark=dict(settings.get("benchmark") or {}),
        raw=data,
    )


def read_evaluation(directory: Path) -> Evaluation | None:
    """The evaluation saved in ``directory``, or None when the run is missing or its file is unreadable
    (logged)."""
    path = directory / "results.json"
    if not path.is_file():
        return None
    try:
        return parse_evaluation(load_eval_results(path), path)
    except CompareError as err:
        log.warning("%s; treated as missing", err)
        return None


@dataclass(frozen=True)
class Change:
    """What GRPO changed from the starting model's evaluation (miro.eval.compare, the same settings)."""

    delta: dict[str, float | None]  # reward -> after - before
    after: dict[str, float | None]  # reward -> after
    accuracy_delta: float | None


def grpo_change(before: Evaluation, after: Evaluation, optimised: str) -> Change:
    """Raises CompareError when the two evaluations cannot be compared."""
    c = compare(before.raw, after.raw, [optimised])
    return Change(
        delta={n: r.get("delta") for n, r in c["rewards"].items()},
        after={n: r.get("after") for n, r in c["rewards"].items()},
        accuracy_delta=(c["benchmark"].get(OVERALL) or {}).get("delta"),
    )


@dataclass(frozen=True)
class Rollouts:
    iterations: int
    prompts: int
    group_size: int

    @property
    def total(self) -> int:
        return self.iterations * self.prompts * self.group_size


@dataclass(frozen=True)
class StepRecord:
    """One finished command of ``make report REPORT_RUN=1`` (steps.jsonl)."""

    study: str
    seconds: float
    machine: str  # "CPU (its kind), N cores, GPU or none, torch version"
    finished: float | None = None  # when it ended (Unix time); None in logs that did not record it

    @property
    def span(self) -> tuple[float, float] | None:
        """(start, end) in Unix time, for the wall time of commands that ran at the same time."""
        return None if self.finished is None else (self.finished - self.seconds, self.finished)


@dataclass
class Runs:
    """Every saved run of a study, per seed in the study's seed order (None: missing)."""

    convergence: dict[str, list[list[Evaluation | None]]]  # role -> seed -> export step
    finals: list[Evaluation | None]
    guidance: dict[float, list[Evaluation | None]]  # scale -> seed
    negatives: dict[str, list[Evaluation | None]]  # variant -> seed
    grpo_before: list[Evaluation | None]
    grpo_changes: dict[str, list[Change | None]]  # variant -> seed
    grpo_after: dict[str, list[Evaluation | None]]  # variant -> seed (paired with each other by seed)
    rollouts: Rollouts | None
    chunks: dict[str, str]  # variant -> chunk sizes of the first seed's run, "n/a" when missing
    records: list[StepRecord]
    parameters: int | None  # the MIRO model's parameter count (the first seed's final export)
    sampling: dict[str, Any]  # the MIRO model's own sampling settings (its export's config.json)


def _machine(m: dict[str, Any]) -> str:
    kind = f" ({m['cpu_kind']})" if m.get("cpu_kind") else ""
    return (
        f"{m.get('cpu', 'unknown CPU')}{kind}, {m.get('cores', '?')} cores"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f", torch {m.get('torch', '?')}"
    )


def _unix_time(stamp: Any) -> float | None:
    """steps.jsonl's ``finished`` ("2026-12-06T09:40:28+0000") as Unix time; None when absent or bad."""
    try:
        return datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def wall_seconds(records: Sequence[StepRecord]) -> float | None:
    """Seconds during which at least one command ran (the union of their spans: several jobs at a time
    overlap, and a study resumed days later has gaps that are not its cost); None without spans."""
    spans = sorted(r.span for r in records if r.span is not None)
    if not spans:
        return None
    total, (start, end) = 0.0, spans[0]
    for s0, s1 in spans[1:]:
        if s0 > end:
            total, start = total + end - start, s0
        end = max(end, s1)
    return total + end - start


def _rollouts(study: Study) -> Rollouts | None:
    for seed in study.seeds:
        for variant in study.cfg.grpo.variants:
            path = study.layout.grpo_run(seed, variant) / "config.yaml"
            if path.is_file():
                c = OmegaConf.load(path)
                return Rollouts(
                    int(c.iterations), int(c.data.prompts_per_iteration), int(c.module.group_size)
                )
    return None


def _chunks(study: Study, variant: str) -> str:
    path = study.layout.grpo_run(study.seeds[0], variant) / "export" / "config.json"
    if not path.is_file():
        return "n/a"
    grpo = json.loads(path.read_text(encoding="utf-8")).get("grpo", {})
    return str(grpo.get("chunk_sizes", "n/a"))


def count_parameters(export: Path) -> int | None:
    """The DiT's parameters (``model.*`` tensors) in an export, read from the safetensors header only."""
    path = export / "model.safetensors"
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        total = 0
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if key.startswith("model."):
                    n = 1
                    for dim in f.get_slice(key).get_shape():
                        n *= int(dim)
                    total += n
        return total or None
    except Exception as err:  # safetensors raises its own (untyped) error for a damaged file
        log.warning("%s: cannot count parameters (%s)", path, err)
        return None


def packed_parameters(root: Path) -> int | None:
    """The DiT's parameter count that ``make report ARGS=--pack`` recorded in the archive's manifest
    (runs unpacked from an archive have no weights to count); None when the runs were not unpacked."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("parameters")
    except (ValueError, AttributeError) as err:  # not JSON, or not an object: the count is just unknown
        log.warning("%s: cannot read the parameter count (%s)", path, err)
        return None
    return value if isinstance(value, int) else None


def _sampling(export: Path) -> dict[str, Any]:
    path = export / "config.json"
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("sampling") or {})
    except (ValueError, AttributeError):
        return {}


def collect(study: Study) -> Runs:
    """Read every saved run of ``study`` once."""
    lay, seeds, cfg = study.layout, study.seeds, study.cfg
    convergence = {
        role: [[read_evaluation(lay.convergence_eval(s, role, n)) for n in study.export_steps] for s in seeds]
        for role in ROLES
    }
    guidance = {
        float(w): [read_evaluation(lay.guidance_eval(s, float(w))) for s in seeds]
        for w in cfg.guidance.scales
    }
    negatives = {v: [read_evaluation(lay.negative_eval(s, v)) for s in seeds] for v in cfg.guidance.negatives}
    before = [read_evaluation(lay.grpo_eval(s, None)) for s in seeds]
    optimised = str(cfg.grpo.reward)
    changes: dict[str, list[Change | None]] = {}
    after: dict[str, list[Evaluation | None]] = {}
    for variant in cfg.grpo.variants:
        changes[variant], after[variant] = [], []
        for seed, b in zip(seeds, before, strict=True):
            a = read_evaluation(lay.grpo_eval(seed, variant))
            after[variant].append(a)
            try:
                changes[variant].append(grpo_change(b, a, optimised) if a and b else None)
            except CompareError as err:
                log.warning("GRPO %s seed %d: %s", variant, seed, err)
                changes[variant].append(None)
    records = [
        StepRecord(
            str(r.get("study", "?")), float(r.get("seconds", 0.0)), _machine(r.get("machine", {})),
            _unix_time(r.get("finished")),
        )  # fmt: skip
        for r in read_step_log(lay)
        if r.get("returncode") == 0
    ]
    export = lay.export(seeds[0], "miro")
    return Runs(
        convergence=convergence,
        finals=[read_evaluation(lay.final_eval(s)) for s in seeds],
        guidance=guidance,
        negatives=negatives,
        grpo_before=before,
        grpo_changes=changes,
        grpo_after=after,
        rollouts=_rollouts(study),
        chunks={v: _chunks(study, v) for v in cfg.grpo.variants},
        records=records,
        parameters=count_parameters(export) or packed_parameters(lay.root),
        sampling=_sampling(export),
    )
