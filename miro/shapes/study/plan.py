"""The evidence study's steps: which Makefile stage runs with which variables, and where its runs go.

A study is built from a composed ``conf/report.yaml``: the shapes data (``make data score-shards
fit-bins``), then for every training seed the two trainings (``make train``), their evaluations along
training, the final model's control/best-of-N/guidance evaluations (``make eval``), GRPO variants
(``make grpo-train``) and their evaluations. Each step names the one file its command writes last and
the steps whose output it reads; the runner (:func:`miro.eval.study.run_steps`) skips a step whose file
exists, so a killed study resumes, and with ``jobs`` > 1 starts a step once those it needs are done.

The layout under ``runs_dir`` (one directory per seed) is defined here only; the report reads it
through :class:`EvidenceLayout`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from miro.eval.study import Layout, Step, eval_flags
from miro.pretrained import periodic_export
from miro.shapes.study.makefile import stage

STUDIES = ("data", "convergence", "control", "guidance", "grpo")  # selectable; "train" steps come along
ROLES = ("miro", "baseline")


@dataclass(frozen=True)
class EvidenceLayout(Layout):
    """Where every run of the evidence study lives under ``root`` (one directory per training seed)."""

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


def check_world_and_benchmark(cfg: DictConfig) -> None:
    """The benchmark must ask only for what the training data can show: the largest count the shapes
    benchmark asks for (conf/benchmark/shapes.yaml ``max_count``, what miro-eval uses for the study's
    models, which record ``benchmark: shapes``) equals the world's ``data.max_objects``."""
    from miro.eval.benchmark import benchmark_config

    asked = benchmark_config("shapes").get("max_count")
    shown = int(cfg.data.max_objects)
    if asked is None or int(asked) != shown:
        raise ValueError(
            f"conf/benchmark/shapes.yaml: max_count = {asked} but the study's world shows at most "
            f"data.max_objects = {shown} objects; set both to the same value so that the benchmark asks only "
            "for what the training data shows"
        )


@dataclass
class Study:
    """The steps of the study described by a composed ``conf/report.yaml``."""

    cfg: DictConfig
    python: str = field(default="")
    resume: bool = True  # a killed run continues from its last checkpoint (False: the commands as first run)

    def __post_init__(self) -> None:
        self.python = self.python or self.cfg.get("python") or sys.executable
        self.layout = EvidenceLayout(Path(self.cfg.runs_dir))
        self.seeds = [int(s) for s in self.cfg.seeds]
        if not self.seeds:
            raise ValueError("seeds is empty: the study needs at least one training seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        self.export_steps = export_steps(int(self.cfg.train.steps), int(self.cfg.train.export_every))
        check_world_and_benchmark(self.cfg)

    # -- pieces of commands --------------------------------------------------------------------------
    def _resume(self, run: Path) -> tuple[str, ...]:
        """A run killed before its export continues from its last checkpoint instead of starting again."""
        last = run / "checkpoints" / "last.ckpt"
        return (f"ckpt_path={last}",) if self.resume and last.is_file() else ()

    def _stage(
        self, study: str, name: str, target: str, variables: dict[str, Any], args: Sequence[Any],
        output: Path, seed: int | None = None, produces: Path | None = None, needs: Sequence[str] = (),
    ) -> Step:  # fmt: skip
        command, shown = stage(target, variables, args, python=self.python)
        return Step(study, name, command, output, seed, produces, shown, tuple(needs))

    def _eval(
        self, study: str, name: str, seed: int, checkpoint: Path, out: Path, profile: str, *extra: str,
        baseline: Path | None = None, needs: Sequence[str] = (),
    ) -> Step:  # fmt: skip
        """``make eval`` of ``checkpoint`` into ``out`` with the settings of ``eval.<profile>``, once the
        steps ``needs`` (those that write ``checkpoint``) are done."""
        e = self.cfg.eval
        settings = OmegaConf.to_container(e[profile], resolve=True)
        args = [
            "--rewards", ",".join(self.cfg.measured_rewards), "--seed", e.seed, "--device", e.device,
            "--precision", e.precision, *eval_flags(settings),  # type: ignore[arg-type]
        ]  # fmt: skip
        if baseline is not None:
            args += ["--baseline", baseline]
        variables = {"CHECKPOINT": checkpoint, "EVAL_DIR": out}
        output = out / "results.json"
        return self._stage(study, name, "eval", variables, [*args, *extra], output, seed, needs=needs)

    def miro_export(self, seed: int) -> Path:
        return self.layout.export(seed, "miro")

    @staticmethod
    def train_name(seed: int, role: str) -> str:
        return f"seed{seed}/train/{role}"

    def convergence_profile(self, step: int) -> str:
        """``eval.convergence`` along training; ``eval.convergence_last`` (when the scale gives one) at the
        last step, where MIRO and the baseline are compared at full power."""
        last = step == self.export_steps[-1] and self.cfg.eval.get("convergence_last") is not None
        return "convergence_last" if last else "convergence"

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
        shards, scored, done = root / "shards", root / "scored", root / "bins.json"
        sizes = " ".join(str(s) for s in d.object_size)
        data = {
            "SHARDS": shards, "N": d.n, "SIZE": d.size, "MAX_OBJECTS": d.max_objects, "OBJECT_SIZE": sizes,
            "SEED": d.seed, "WORKERS": d.workers,
        }  # fmt: skip
        return [
            self._stage("data", "data/shapes", "data", data, [], done, produces=shards),
            self._stage(
                "data",
                "data/score",
                "score-shards",
                {"SHARDS": shards, "SCORED": scored, "REWARDS": "offline"},
                ["progress=false"],
                done,
                produces=scored,
            ),  # fmt: skip
            self._stage(
                "data",
                "data/bins",
                "fit-bins",
                {"SCORED": scored, "BINS": done, "N_BINS": d.n_bins},
                [],
                done,
                produces=done,
            ),  # fmt: skip
        ]

    def train_steps(self, seed: int) -> list[Step]:
        t = self.cfg.train
        steps = []
        for role in ROLES:
            run = self.layout.train_run(seed, role)
            variables = {
                "EXPERIMENT": t[role], "DEMO_DIR": self.cfg.data.dir, "RUN_DIR": run,
                "SIZE": self.cfg.data.size, "DEMO_STEPS": t.steps,
            }  # fmt: skip
            args = [
                f"seed={seed}",
                f"++callbacks.export.every_n_steps={t.export_every}",
                *t.overrides,
                *self._resume(run),
            ]
            output = self.layout.export(seed, role) / "config.json"
            steps.append(
                self._stage(
                    "train", self.train_name(seed, role), "train", variables, args, output, seed,
                    needs=[step.name for step in self.data_steps()],
                )  # fmt: skip
            )
        return steps

    def convergence_steps(self, seed: int) -> list[Step]:
        return [
            self._eval(
                "convergence",
                f"seed{seed}/eval/convergence/{role}/step{n}",
                seed,
                self._checkpoint(seed, role, n),
                self.layout.convergence_eval(seed, role, n),
                self.convergence_profile(n),
                needs=[self.train_name(seed, role)],
            )  # fmt: skip
            for role in ROLES
            for n in self.export_steps
        ]

    def control_steps(self, seed: int) -> list[Step]:
        """The final model's reward-control sweeps and best-of-N, with the baseline's best-of-N."""
        return [
            self._eval(
                "control",
                f"seed{seed}/eval/final",
                seed,
                self.miro_export(seed),
                self.layout.final_eval(seed),
                "final",
                baseline=self.layout.export(seed, "baseline"),
                needs=[self.train_name(seed, role) for role in ROLES],
            )  # fmt: skip
        ]

    def guidance_steps(self, seed: int) -> list[Step]:
        g = self.cfg.guidance
        steps = []
        for scale in g.scales:
            w = float(scale)
            steps.append(
                self._eval(
                    "guidance",
                    f"seed{seed}/eval/guidance/scale{w:g}",
                    seed,
                    self.miro_export(seed),
                    self.layout.guidance_eval(seed, w),
                    "guidance",
                    "--guidance",
                    f"{w:g}",
                    needs=[self.train_name(seed, "miro")],
                )  # fmt: skip
            )
        for variant, flags in g.negatives.items():
            extra = eval_flags(OmegaConf.to_container(flags, resolve=True))  # type: ignore[arg-type]
            steps.append(
                self._eval(
                    "guidance",
                    f"seed{seed}/eval/negative/{variant}",
                    seed,
                    self.miro_export(seed),
                    self.layout.negative_eval(seed, variant),
                    "guidance",
                    *extra,
                    needs=[self.train_name(seed, "miro")],
                )  # fmt: skip
            )
        return steps

    def grpo_steps(self, seed: int) -> list[Step]:
        g = self.cfg.grpo
        before = self.layout.grpo_eval(seed, None)
        trained = [self.train_name(seed, "miro")]
        steps = [
            self._eval(
                "grpo", f"seed{seed}/eval/grpo/before", seed, self.miro_export(seed), before, "grpo",
                needs=trained,
            )  # fmt: skip
        ]
        for variant, spec in g.variants.items():
            run = self.layout.grpo_run(seed, variant)
            variables = {
                "RL_EXPERIMENT": spec.experiment, "DEMO_DIR": self.cfg.data.dir, "RL_DIR": run,
                "CHECKPOINT": self.miro_export(seed), "RL_REWARD": g.reward,
            }  # fmt: skip
            args = [
                f"seed={seed}",
                f"iterations={g.iterations}",
                *g.overrides,
                *spec.overrides,
                *self._resume(run),
            ]
            steps.append(
                self._stage(
                    "grpo",
                    f"seed{seed}/grpo/{variant}",
                    "grpo-train",
                    variables,
                    args,
                    run / "export" / "config.json",
                    seed,
                    needs=trained,
                )  # fmt: skip
            )
            steps.append(
                self._eval(
                    "grpo",
                    f"seed{seed}/eval/grpo/{variant}",
                    seed,
                    run / "export",
                    self.layout.grpo_eval(seed, variant),
                    "grpo",
                    needs=[f"seed{seed}/grpo/{variant}"],
                )  # fmt: skip
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
