"""Resumable studies: a list of commands, each done once the one file it writes last exists.

A study (the GRPO study of :mod:`miro.rl.study`, the evidence study behind docs/results.md) is a flat list
of :class:`Step` s. Each names the file its command writes last (an export's ``config.json``, an
evaluation's ``results.json``); a step whose file exists is done and skipped, so a killed study is
resumed by running it again, and a report can tell which runs are missing without running anything.
Nothing here knows what the commands do: the studies build them.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miro.utils.machine import machine

log = logging.getLogger(__name__)

STEP_LOG = "steps.jsonl"
# Shown instead of the interpreter's path in a step's shell line (the path is this machine's).
PYTHON_PLACEHOLDER = "python"


class StudyError(RuntimeError):
    """A study step that failed; the message names the step, its exit status and its log file."""


@dataclass(frozen=True)
class Step:
    """One command of a study and the file whose existence means it is done.

    ``produces`` is what the command itself must leave behind (checked after it ran; default: ``output``):
    stages that share one done-marker each write their own directory. ``shown`` is the command as a
    reader should type it into a shell (default: ``command`` with its interpreter shown as ``python``).
    """

    study: str
    name: str  # unique, path-like: "seed0/train/miro"
    command: tuple[str, ...]
    output: Path
    seed: int | None = None
    produces: Path | None = None
    shown: str | None = None

    def done(self) -> bool:
        return self.output.is_file()

    def produced(self) -> bool:
        return self.produces.exists() if self.produces is not None else self.done()

    def shell(self) -> str:
        """The command as a shell line without this machine's paths."""
        if self.shown is not None:
            return self.shown
        args = list(self.command)
        if args[1:2] == ["-m"]:
            args[0] = PYTHON_PLACEHOLDER
        return shlex.join(args)


@dataclass(frozen=True)
class Layout:
    """Where a seeded study's runs live under ``root``: one directory per seed, the step log, the logs."""

    root: Path

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed{seed}"

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
    environ: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Run the steps that are not done, in order; stop at the first failure (StudyError).

    Every command gets ``environ`` (default: this process's environment) with ``OMP_NUM_THREADS`` set
    to ``threads``. Every finished step appends its command, seconds, exit status and machine to
    ``steps.jsonl`` under the study's root. Returns how many steps were run and skipped.
    """
    env = {**(os.environ if environ is None else environ), "OMP_NUM_THREADS": str(threads)}
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
