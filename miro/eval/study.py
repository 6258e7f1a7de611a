"""The evidence study: every command behind docs/results.md, where its output goes, and running them.

A study is a flat list of :class:`Step` s built from ``conf/report.yaml`` (data, then for every seed: the
two trainings, their evaluations along training, the final model's control/best-of-N/guidance
evaluations, GRPO variants and their evaluations). Each step names the one file its command writes
last (an export's ``config.json``, an evaluation's ``results.json``, the data's ``bins.json``); a step
whose file exists is done and skipped, so a killed study is resumed by running it again, and the
report can tell which runs are missing without running anything.

The layout under ``runs_dir`` (one directory per seed) is defined here only; the report reads it
through :class:`Layout`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from miro.pretrained import periodic_export
from miro.utils.machine import machine

log = logging.getLogger(__name__)

STUDIES = ("data", "convergence", "control", "guidance", "grpo")  # selectable; "train" steps come along
ROLES = ("miro", "baseline")
STEP_LOG = "steps.jsonl"
# Shown instead of the interpreter's path in the report's commands (the path is this machine's).
PYTHON_PLACEHOLDER = "python"


class StudyError(RuntimeError):
    """A study step that failed; the message names the step, its exit status and its log file."""


@dataclass(frozen=True)
class Step:
    """One command of the study and the file whose existence means it is done.

    ``produces`` is what the command itself must leave behind (checked after it ran; default: ``output``):
    the data stages share one done-marker but each writes its own directory.
    """

    study: str
    name: str  # unique, path-like: "seed0/train/miro"
    command: tuple[str, ...]
    output: Path
    seed: int | None = None
    produces: Path | None = None

    def done(self) -> bool:
        return self.output.is_file()

    def produced(self) -> bool:
        return self.produces.exists() if self.produces is not None else self.done()

    def shell(self) -> str:
        """The command as a shell line, its interpreter shown as ``python`` (the path is this machine's)."""
        args = list(self.command)
        if args[1:2] == ["-m"]:
            args[0] = PYTHON_PLACEHOLDER
        return shlex.join(args)


@dataclass(frozen=True)
class Layout:
    """Where every run of the study lives under ``root`` (one directory per training seed)."""

    root: Path

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed{seed}"

    def train_run(self, seed: int, role: str) -> Path:
        return self.seed_dir(seed) / "train" / role

    def export(self, seed: int, role: str, step: int | None = None) -> Path:
        """The final export (``step=None``) or the periodic one written at ``step``."""
        run = self.train_run(seed, role)
        return run / "export" if step is None else periodic_export(run / "exports", step)

    def convergence_eval(self, seed: int, role: str, step: int) -> Path:
        return self.seed_dir(seed) / "eval" / "convergence" / role / f"step{step:07d}"

    def final_eval(self, seed: int) -> Path:
        return self.seed_dir(seed) / "eval" / "final"

    def guidance_eval(self, seed: int, scale: float) -> Path:
        return self.seed_dir(seed) / "eval" / "guidance" / f"scale{scale:g}"

    def negative_eval(self, seed: int, variant: str) -> Path:
        return self.seed_dir(seed) / "eval" / "negative" / variant

    def grpo_run(self, seed: int, variant: str) -> Path:
        return self.seed_dir(seed) / "grpo" / variant

    def grpo_eval(self, seed: int, variant: str | None) -> Path:
        """The evaluation after GRPO ``variant``; ``None``: the starting model with the same settings."""
        return self.seed_dir(seed) / "eval" / "grpo" / (variant or "before")

    @property
    def step_log(self) -> Path:
        return self.root / STEP_LOG

    def log_file(self, step: Step) -> Path:
        return self.root / "logs" / (step.name.replace("/", "__") + ".log")


def compose_study_config(
    scale: str | None = None,
    seeds: Sequence[int] | None = None,
    out: str | None = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """conf/report.yaml at ``scale`` (conf/report/<scale>.yaml), then the given seeds, output file and
    Hydra overrides, in that order."""
    from miro.config import compose_config

    chosen = [f"report={scale}"] if scale else []
    if seeds is not None:
        chosen.append("seeds=[" + ",".join(str(int(s)) for s in seeds) + "]")
    if out is not None:
        chosen.append(f"out={out}")
    return compose_config("report", [*chosen, *overrides])


def export_steps(steps: int, every: int) -> list[int]:
    """Training steps at which convergence is evaluated: every ``every`` steps, and the last step."""
    if steps < 1:
        raise ValueError(f"train.steps must be at least 1, got {steps}")
    if every < 0:
        raise ValueError(f"train.export_every must be >= 0 (0: only the final model), got {every}")
    points = list(range(every, steps + 1, every)) if every else []
    return points if points and points[-1] == steps else [*points, steps]


def _resume(run: Path) -> tuple[str, ...]:
    """A run killed before its export continues from its last checkpoint instead of starting again."""
    last = run / "checkpoints" / "last.ckpt"
    return (f"ckpt_path={last}",) if last.is_file() else ()


def eval_flags(settings: Mapping[str, Any]) -> list[str]:
    """{"per_category": 8, "negative_prompt": ""} -> ["--per-category", "8", "--negative-prompt", ""]."""
    flags: list[str] = []
    for key, value in settings.items():
        if value is None:
            continue
        flag = "--" + str(key).replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


@dataclass
class Study:
    """The commands of the study described by a composed ``conf/report.yaml``."""

    cfg: DictConfig
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        self.layout = Layout(Path(self.cfg.runs_dir))
        self.seeds = [int(s) for s in self.cfg.seeds]
        if not self.seeds:
            raise ValueError("seeds is empty: the study needs at least one training seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        self.export_steps = export_steps(int(self.cfg.train.steps), int(self.cfg.train.export_every))

    # -- pieces of commands --------------------------------------------------------------------------
    def _module(self, module: str, *args: Any) -> tuple[str, ...]:
        return (self.python, "-m", module, *(str(a) for a in args))

    def _eval(
        self, checkpoint: Path, out: Path, profile: str, *extra: str, baseline: Path | None = None
    ) -> tuple[str, ...]:
        e = self.cfg.eval
        settings = OmegaConf.to_container(e[profile], resolve=True)
        args = [
            "--checkpoint", checkpoint, "--out", out, "--rewards", ",".join(self.cfg.measured_rewards),
            "--seed", e.seed, "--device", e.device, "--precision", e.precision, *eval_flags(settings),
        ]  # fmt: skip
        if baseline is not None:
            args += ["--baseline", baseline]
        return self._module("miro.cli.eval", *args, *extra)

    def miro_export(self, seed: int) -> Path:
        return self.layout.export(seed, "miro")

    def _checkpoint(self, seed: int, role: str, step: int) -> Path:
        every = int(self.cfg.train.export_every)
        periodic = every > 0 and step % every == 0
        return self.layout.export(seed, role, step if periodic else None)

    # -- the studies ---------------------------------------------------------------------------------
    def data_steps(self) -> list[Step]:
        """The shapes data as ``make data score-shards fit-bins`` makes it. All three count as done once
        bins.json exists: the first two stages leave partial output when killed, and repeating them is
        cheap and deterministic (scoring skips the shards it has already written)."""
        d = self.cfg.data
        root = Path(d.dir)
        done = root / "bins.json"
        shapes = self._module(
            "miro.shapes.cli", "shapes", "--out", root / "shards", "--n", d.n, "--size", d.size,
            "--max-objects", d.max_objects, "--object-size", *d.object_size, "--seed", d.seed,
            "--workers", d.workers,
        )  # fmt: skip
        score = self._module(
            "data_prep.score_shards",
            f"input={root / 'shards'}",
            f"output={root / 'scored'}",
            "rewards=offline",
            "progress=false",
        )
        bins = self._module(
            "data_prep.fit_bins", f"input={root / 'scored'}", f"out={done}", f"n_bins={d.n_bins}"
        )
        return [
            Step("data", name, cmd, done, produces=made)
            for name, cmd, made in (
                ("data/shapes", shapes, root / "shards"),
                ("data/score", score, root / "scored"),
                ("data/bins", bins, done),
            )
        ]

    def train_steps(self, seed: int) -> list[Step]:
        t = self.cfg.train
        steps = []
        for role in ROLES:
            run = self.layout.train_run(seed, role)
            cmd = self._module(
                "miro.train",
                f"+experiment={t[role]}",
                f"paths.data_dir={self.cfg.data.dir}",
                f"paths.output_dir={run}",
                f"seed={seed}",
                f"data.image_size={self.cfg.data.size}",
                f"trainer.max_steps={t.steps}",
                f"++callbacks.export.every_n_steps={t.export_every}",
                *t.overrides,
                *_resume(run),
            )
            steps.append(
                Step(
                    "train",
                    f"seed{seed}/train/{role}",
                    cmd,
                    self.layout.export(seed, role) / "config.json",
                    seed,
                )
            )
        return steps

    def convergence_steps(self, seed: int) -> list[Step]:
        steps = []
        for role in ROLES:
            for n in self.export_steps:
                out = self.layout.convergence_eval(seed, role, n)
                cmd = self._eval(self._checkpoint(seed, role, n), out, "convergence")
                steps.append(
                    Step(
                        "convergence",
                        f"seed{seed}/eval/convergence/{role}/step{n}",
                        cmd,
                        out / "results.json",
                        seed,
                    )
                )
        return steps

    def control_steps(self, seed: int) -> list[Step]:
        """The final model's reward-control sweeps and best-of-N, with the baseline's best-of-N."""
        out = self.layout.final_eval(seed)
        cmd = self._eval(self.miro_export(seed), out, "final", baseline=self.layout.export(seed, "baseline"))
        return [Step("control", f"seed{seed}/eval/final", cmd, out / "results.json", seed)]

    def guidance_steps(self, seed: int) -> list[Step]:
        g = self.cfg.guidance
        steps = []
        for scale in g.scales:
            out = self.layout.guidance_eval(seed, float(scale))
            cmd = self._eval(self.miro_export(seed), out, "guidance", "--guidance", f"{float(scale):g}")
            steps.append(
                Step(
                    "guidance",
                    f"seed{seed}/eval/guidance/scale{float(scale):g}",
                    cmd,
                    out / "results.json",
                    seed,
                )
            )
        for variant, flags in g.negatives.items():
            out = self.layout.negative_eval(seed, variant)
            extra = eval_flags(OmegaConf.to_container(flags, resolve=True))
            cmd = self._eval(self.miro_export(seed), out, "guidance", *extra)
            steps.append(
                Step("guidance", f"seed{seed}/eval/negative/{variant}", cmd, out / "results.json", seed)
            )
        return steps

    def grpo_steps(self, seed: int) -> list[Step]:
        g = self.cfg.grpo
        before = self.layout.grpo_eval(seed, None)
        steps = [
            Step(
                "grpo",
                f"seed{seed}/eval/grpo/before",
                self._eval(self.miro_export(seed), before, "grpo"),
                before / "results.json",
                seed,
            )
        ]
        for variant, spec in g.variants.items():
            run = self.layout.grpo_run(seed, variant)
            cmd = self._module(
                "miro.rl",
                f"+experiment={spec.experiment}",
                f"paths.output_dir={run}",
                f"pretrained={self.miro_export(seed)}",
                f"seed={seed}",
                f"iterations={g.iterations}",
                f"module.rewards={g.reward}",
                *g.overrides,
                *spec.overrides,
                *_resume(run),
            )
            steps.append(
                Step("grpo", f"seed{seed}/grpo/{variant}", cmd, run / "export" / "config.json", seed)
            )
            out = self.layout.grpo_eval(seed, variant)
            steps.append(
                Step(
                    "grpo",
                    f"seed{seed}/eval/grpo/{variant}",
                    self._eval(run / "export", out, "grpo"),
                    out / "results.json",
                    seed,
                )
            )
        return steps

    def steps(self, studies: Iterable[str] = STUDIES) -> list[Step]:
        """Every step in a runnable order (a step's inputs come from earlier steps)."""
        wanted = list(studies)
        unknown = sorted(set(wanted) - set(STUDIES))
        if unknown:
            raise ValueError(f"unknown studies {unknown}; known: {', '.join(STUDIES)}")
        out = self.data_steps() if "data" in wanted else []
        builders = {
            "convergence": self.convergence_steps,
            "control": self.control_steps,
            "guidance": self.guidance_steps,
            "grpo": self.grpo_steps,
        }
        for seed in self.seeds:
            if set(wanted) & set(builders):
                out += self.train_steps(seed)  # every model study starts from the two trained models
            for study, build in builders.items():
                if study in wanted:
                    out += build(seed)
        return out


# -- running ----------------------------------------------------------------------------------------
Executor = Callable[[Sequence[str], Path, Mapping[str, str]], int]


def subprocess_executor(command: Sequence[str], log_file: Path, env: Mapping[str, str]) -> int:
    """Run ``command`` with stdout and stderr into ``log_file``; returns the exit status."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w", encoding="utf-8") as out:
        return subprocess.run(list(command), stdout=out, stderr=subprocess.STDOUT, env=dict(env)).returncode


def run_steps(
    steps: Sequence[Step],
    layout: Layout,
    threads: int,
    executor: Executor = subprocess_executor,
    progress: Callable[[Step, str], None] | None = None,
) -> dict[str, int]:
    """Run the steps that are not done, in order; stop at the first failure (StudyError).

    Every finished step appends its command, seconds, exit status and machine to ``steps.jsonl`` under
    the study's root. Returns how many steps were run and skipped.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    host = machine()
    counts = {"ran": 0, "skipped": 0}
    for step in steps:
        if step.done():
            counts["skipped"] += 1
            if progress:
                progress(step, "done")
            continue
        if progress:
            progress(step, "running")
        log_file = layout.log_file(step)
        start = time.perf_counter()
        code = executor(step.command, log_file, env)
        record = {
            "name": step.name,
            "study": step.study,
            "seed": step.seed,
            "command": list(step.command),
            "returncode": code,
            "seconds": round(time.perf_counter() - start, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": host,
        }
        layout.root.mkdir(parents=True, exist_ok=True)
        with layout.step_log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if code != 0:
            raise StudyError(f"step {step.name} failed with exit status {code}; its output: {log_file}")
        if not step.produced():
            made = step.produces or step.output
            raise StudyError(f"step {step.name} exited 0 but did not write {made}; see {log_file}")
        counts["ran"] += 1
    return counts


def read_step_log(layout: Layout) -> list[dict[str, Any]]:
    """The records of every step run so far (latest last); lines that do not parse are skipped."""
    if not layout.step_log.is_file():
        return []
    records = []
    for line in layout.step_log.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s: skipping a line that is not JSON", layout.step_log)
    return records
