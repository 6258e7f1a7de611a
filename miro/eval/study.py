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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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
    ``needs`` names the earlier steps whose output the command reads: with several jobs at a time a step
    starts only once those are done (one job at a time runs the list in order, which satisfies them).
    """

    study: str
    name: str  # unique, path-like: "seed0/train/miro"
    command: tuple[str, ...]
    output: Path
    seed: int | None = None
    produces: Path | None = None
    shown: str | None = None
    needs: tuple[str, ...] = ()

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


def check_needs(steps: Sequence[Step]) -> None:
    """No step needs a later step of the list (running the list in order must always be a valid order).
    A need that names no step of the list is taken as met: that study was left out of this run."""
    names = {step.name for step in steps}
    seen: set[str] = set()
    for step in steps:
        later = [need for need in step.needs if need in names and need not in seen]
        if later:
            raise ValueError(f"step {step.name} needs {', '.join(later)}, which comes after it")
        seen.add(step.name)


def run_steps(
    steps: Sequence[Step],
    layout: Layout,
    threads: int,
    executor: Executor = subprocess_executor,
    progress: Callable[[Step, str], None] | None = None,
    environ: Mapping[str, str] | None = None,
    jobs: int = 1,
) -> dict[str, int]:
    """Run the steps that are not done; stop at the first failure (StudyError).

    ``jobs`` commands run at a time, each step as soon as the steps it ``needs`` are done (those not in
    ``steps`` count as done), earlier steps of the list first (``jobs=1``: strictly in order). After a
    failure no new step starts; the running ones finish. Every command gets ``environ`` (default: this
    process's environment) with ``OMP_NUM_THREADS`` set to ``threads``; on a machine of C cores
    ``jobs x threads`` should not exceed C. Every finished step appends its command, seconds, end time,
    exit status and machine to ``steps.jsonl`` under the study's root. Returns how many steps were run
    and skipped.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    check_needs(steps)
    env = {**(os.environ if environ is None else environ), "OMP_NUM_THREADS": str(threads)}
    host = machine()
    counts = {"ran": 0, "skipped": 0}
    lock = threading.Lock()  # the step log, the counts and the progress lines are shared by the jobs

    def run_one(step: Step) -> None:
        if progress:
            with lock:
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
        with lock:
            layout.root.mkdir(parents=True, exist_ok=True)
            with layout.step_log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if code != 0:
            raise StudyError(f"step {step.name} failed with exit status {code}; its output: {log_file}")
        if not step.produced():
            made = step.produces or step.output
            raise StudyError(f"step {step.name} exited 0 but did not write {made}; see {log_file}")
        with lock:
            counts["ran"] += 1

    finished = {need for step in steps for need in step.needs} - {step.name for step in steps}
    pending: list[Step] = []
    for step in steps:
        if step.done():
            counts["skipped"] += 1
            finished.add(step.name)
            if progress:
                progress(step, "done")
        else:
            pending.append(step)
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future[None], Step] = {}
        while pending or running:
            if failure is None:
                for step in list(pending):
                    if len(running) >= jobs:
                        break
                    if all(need in finished for need in step.needs):
                        pending.remove(step)
                        running[pool.submit(run_one, step)] = step
            if not running:
                if failure is None and pending:  # check_needs rules this out; never end silently
                    raise StudyError(f"steps {', '.join(s.name for s in pending)} wait for steps never run")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                step = running.pop(future)
                err = future.exception()
                if err is None:
                    finished.add(step.name)
                elif failure is None:
                    failure = err
    if failure is not None:
        raise failure
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
