"""The evidence report (docs/results.md): the prose and tables around the study's saved runs.

Reads nothing itself: it renders :class:`~miro.shapes.study.results.Runs` (every results.json read once)
with the statistics of :mod:`~miro.shapes.study.stats`, and asks :mod:`~miro.shapes.study.plots` for the
figures. Each point is the mean ± standard deviation over seeds with the range [min, max]; missing runs
are listed by name with the command that makes them, and their cells read "n/a". Verdicts (a speed-up,
a single sample matching a best-of-N, chunk-level against step-level GRPO) are computed from the
numbers and may well be negative. What the prose says about the setting (model size, image size, steps,
rewards, guidance) is read from the configuration and the runs, so it holds at every scale.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from miro.config import CONF_DIR
from miro.data.shards import write_bytes_atomic
from miro.eval.study import Step
from miro.shapes.study import plots
from miro.shapes.study.cells import PAPER, VERDICT_LABEL, Figure, accuracy_of, count_words, table
from miro.shapes.study.claims.control import ControlClaims
from miro.shapes.study.claims.convergence import ConvergenceClaim
from miro.shapes.study.claims.grpo import GrpoClaim
from miro.shapes.study.claims.guidance import GuidanceClaim
from miro.shapes.study.plan import ROLES, Study, compose_study_config
from miro.shapes.study.results import wall_seconds
from miro.shapes.study.stats import (
    across_seeds,
    images_for_gap,
    planned_gap_se,
    resolution,
)


class Report(ConvergenceClaim, ControlClaims, GuidanceClaim, GrpoClaim):
    """Builds the report's Markdown and figures from a :class:`Study`'s saved runs (nothing is run): the
    claims' sections (:mod:`miro.shapes.study.claims`) inside the frame below (summary, resolution,
    differences from the papers, machine, commands, missing runs)."""

    # -- power: the resolution of every comparison, planned from the study's sizes ----------------------
    def resolution(self) -> list[str]:
        """The standard error each evaluation profile can reach on an accuracy gap, against the paper's
        relative gap at our accuracy level, and the images that a third of it would need."""
        a = self.cfg.analysis
        level, seeds = float(a.accuracy_level), len(self.seeds)
        gap = level * self.relative
        need = images_for_gap(level, self.relative, seeds, self.fraction)
        rows = []
        profiles = ["convergence", "convergence_last", "final", "guidance", "grpo"]
        for profile in [p for p in profiles if self.cfg.eval.get(p) is not None]:
            e = self.cfg.eval[profile]
            images = int(a.categories) * int(e.per_category) * int(e.samples_per_prompt)
            se = planned_gap_se(level, self.relative, images, seeds)
            rows.append([
                profile, str(images), f"{se:.4f}", f"{resolution(se, gap):.2f}",
                "yes"
                if resolution(se, gap) <= self.fraction + 1e-9
                else f"no (resolves {3 * se / level:.1%} relative)",
            ])  # fmt: skip
        world = int(self.cfg.data.max_objects)
        recorded = sorted({
            e.benchmark.get("max_count") for es in self.runs.convergence.values() for per in es for e in per
            if e and e.benchmark.get("max_count") is not None
        })  # fmt: skip
        asked = ", ".join(map(str, recorded)) if recorded else "not recorded in the saved runs"
        return [
            "## Resolution: how small a gap each comparison can tell",
            "",
            "The paper's reward-conditioning gain is GenEval 52 -> 57 "
            f"({self.relative:+.1%} relative); at our "
            f"accuracy level (~{level:.2f}) that is a gap of {gap:.4f}. With {seeds} training seed(s) a "
            f"comparison resolves it (SE ≤ {self.fraction:.2f} of it, so an effect that size stands 3 SE "
            "from "
            f"zero) with {need} images per model per seed (stats.images_for_gap: binomial, the two sides "
            "unpaired, an upper bound that pairing lowers). Planned SE of the seed-mean accuracy gap per "
            "evaluation profile:",
            "",
            *table(
                [
                    "profile",
                    "images per evaluation",
                    "planned SE of the gap",
                    "SE / paper's gap",
                    f"≤ {self.fraction:.2f}",
                ],
                rows,
            ),  # fmt: skip
            "Each section below also states the measured SE of its paired gaps and what may be concluded. "
            f"The world and the benchmark agree: the data shows at most {world} objects per image "
            f"(data.max_objects) and the benchmark's counting asks for 2 to max_count (conf/benchmark/"
            f"shapes.yaml; the study checks they are equal; recorded in the runs' results.json: {asked}), so "
            "no category asks for a scene the training data never showed.",
            "",
        ]

    # -- the frame: summary, differences from the papers, machine, commands, missing runs -------------
    def _setting(self) -> str:
        """The model and world this scale trains, as read from the configuration and the runs."""
        p = self.runs.parameters
        model = f"a {count_words(p)}-parameter DiT" if p else "the study's DiT"
        return (
            f"{model} on {self.cfg.data.size} px synthetic shapes, {self.cfg.train.steps} training steps, "
            f"{len(self.rewards)} rewards ({', '.join(self.rewards)})"
        )

    def differences(self, verdicts: dict[str, str]) -> list[str]:
        acc = {  # at the last evaluated step
            role: across_seeds([accuracy_of(per_seed[-1]) for per_seed in self.runs.convergence[role]])
            for role in ROLES
        }
        aesthetic = (
            ""
            if "aesthetic" in self.rewards
            else "; the paper's 19x is on the aesthetic score, which is not measured here"
        )
        r = self.runs.rollouts
        rollouts = f", {r.total} rollouts per run" if r else ""
        rows = [
            [
                "convergence speed-up",
                PAPER["speedup"],
                verdicts.get("speedup", "n/a"),
                self._setting() + aesthetic,
            ],
            [
                "accuracy over the baseline",
                PAPER["geneval"],
                f"MIRO {acc['miro'].format()} vs baseline {acc['baseline'].format()} (last evaluated step); "
                + verdicts.get("geneval", "no paired gap"),
                "our benchmark is GenEval's six categories on the shapes grammar judged by a programmatic "
                "detector, not GenEval's object detector on natural images",
            ],
            [
                "best-of-N",
                PAPER["best_of"],
                verdicts.get("best_of", "n/a"),
                f"N up to {self.cfg.eval.final.get('best_of', 'n/a')}; measured on {', '.join(self.rewards)} "
                "instead of aesthetic and HPSv2",
            ],
            ["guidance", PAPER["guidance"], verdicts.get("guidance", "n/a"), self.guided_settings()],
            [
                "chunk-level GRPO",
                PAPER["grpo"],
                verdicts.get("grpo", "n/a"),
                f"{self.cfg.grpo.iterations} iterations optimising {self.cfg.grpo.reward}{rollouts}, from "
                f"{self._setting()}; the paper reports one run per setting",
            ],
        ]
        return [
            "## Where we differ from the papers",
            "",
            *table(["claim", "papers", "here", "why they differ"], rows),
        ]

    def _make_report(self, scale: str, run: bool = False, seeds: bool = False) -> str:
        parts = ["make report", f"REPORT_SCALE={scale}"]
        if seeds:
            parts.append("REPORT_SEEDS=" + ",".join(map(str, self.seeds)))
        if run:
            parts.append("REPORT_RUN=1")
        return " ".join(parts)

    def other_scales(self) -> list[str]:
        """Whether the study's other sizes (a GPU's, the smoke test's) were run: a CPU report must not
        leave a reader guessing if a larger version exists."""
        lines = []
        for path in sorted((CONF_DIR / "report").glob("*.yaml")):
            if path.stem in (self.cfg.scale, "test"):
                continue
            runs = Path(compose_study_config(path.stem).runs_dir)
            made = runs.is_dir() and any(runs.iterdir())
            command = self._make_report(path.stem, run=True)
            lines.append(
                f"- `{path.stem}` scale (conf/report/{path.name}, `{command}`): "
                + (f"runs under `{runs}`" if made else f"not run (no saved runs under `{runs}`)")
            )
        return [*lines, ""] if lines else []

    def machine(self) -> list[str]:
        records = self.runs.records
        lines = ["## Machine and compute", "", *self.other_scales()]
        if not records:
            return [
                *lines,
                f"Not recorded: these runs were not made by `{self._make_report(self.cfg.scale, run=True)}`.",
                "",
            ]
        minutes: dict[str, dict[str, float]] = {}
        for r in records:
            by_study = minutes.setdefault(r.machine, {})
            by_study[r.study] = by_study.get(r.study, 0.0) + r.seconds
        rows = [
            [m, study, f"{seconds / 60:.1f}"]
            for m, studies in minutes.items()
            for study, seconds in studies.items()
        ]
        total, wall = sum(r.seconds for r in records), wall_seconds(records)
        jobs = int(self.cfg.get("jobs", 1))
        return [
            *lines,
            *table(["machine", "study", "minutes"], rows),
            f"Total: {total / 60:.1f} minutes of command time over {len(records)} steps ({jobs} command(s) "
            f"at a time, threads per command: {self.cfg.threads})"
            + (f"; {wall / 60:.1f} minutes of wall time while at least one ran." if wall is not None
               else "."),
            "",
            f"Precision {self.cfg.eval.precision} for the evaluations and the trainings' `precision: auto`: "
            "bf16 autocast on a CPU that computes bf16 natively (AMX or AVX512-BF16, the machine's kind in "
            "brackets above), fp32 on an AVX2-only CPU, where a training step of the demo model costs 2-3 "
            "times as much (bench/results/demo_avx2.md).",
            "",
        ]

    def commands(self, steps: Sequence[Step]) -> list[str]:
        seeds = ",".join(map(str, self.seeds))
        scale = self.cfg.scale
        run, alone = self._make_report(scale, run=True, seeds=True), self._make_report(scale, seeds=True)
        width = max(len(run), len(alone)) + 3
        return [
            "## How to reproduce",
            "",
            "```bash",
            f"{run:<{width}}# runs what is missing, then writes this file",
            f"{alone:<{width}}# the report alone, from the saved runs",
            "```",
            "",
            *(
                [f"In a fresh clone the saved runs are the committed `{self.cfg.archive}` (the files this "
                 "report read, packed by `make report ARGS=--pack`): `make report` unpacks it and writes "
                 "this file again from them.", ""]
                if self.cfg.get("archive") else []
            ),  # fmt: skip
            f"Training seeds: {seeds}. Evaluation seed: {self.cfg.eval.seed} (the same prompts and initial "
            f"noise for every model). Runs: `{self.layout.root}`. Every command, in order (the Makefile's "
            "stages; a command whose output exists is skipped):",
            "",
            "<details><summary>" + f"{len(steps)} commands" + "</summary>",
            "",
            "```bash",
            *(s.shell() for s in steps),
            "```",
            "",
            "</details>",
            "",
        ]

    def missing(self, steps: Sequence[Step]) -> list[str]:
        absent = [s for s in steps if s.study != "data" and not s.done()]
        if not absent:
            return ["## Missing runs", "", "None: every run of the study is present.", ""]
        return [
            "## Missing runs",
            "",
            f"{len(absent)} of {sum(s.study != 'data' for s in steps)} runs are missing; their cells read "
            f"n/a. `{self._make_report(self.cfg.scale, run=True)}` makes them:",
            "",
            *(f"- `{s.name}` (expects `{s.output}`)" for s in absent),
            "",
        ]

    def build(self, generated: str | None = None) -> tuple[str, dict[str, Figure]]:
        """The Markdown and its figures by file name; ``generated``: the time shown (default: now)."""
        steps = self.study.steps()
        first_run = replace(self.study, resume=False).steps()  # listed as a new user would run them
        sections = [self.convergence(), self.control(), self.best_of_n(), self.guidance(), self.grpo()]
        verdicts = {k: v for s in sections for k, v in s.verdicts.items()}
        present = sum(s.done() for s in steps if s.study != "data")
        when = generated or time.strftime("%Y-%m-%d %H:%M %Z")
        head = [
            f"# Evidence: what this implementation achieves ({self.cfg.scale} scale)",
            "",
            f"Generated {when} by `make report` from {present} saved runs under `{self.layout.root}`; seeds "
            f"{', '.join(map(str, self.seeds))}. Every cell is mean ± standard deviation over training "
            "seeds, with [min, max] where there is room; a single seed shows its value alone. Negative "
            "results are reported as measured.",
            "",
        ]
        runs = sum(s.study != "data" for s in steps)
        if present < runs:
            finished = [s for s, e in zip(self.seeds, self.runs.finals, strict=True) if e is not None]
            head += [
                f"**Incomplete**: {present} of {runs} runs are done (seeds with a final model: "
                f"{', '.join(map(str, finished)) or 'none'}); every table uses the seeds it has, and the "
                "runs still missing are listed at the end.",
                "",
            ]
        summary = (
            ["## Summary", "", *(f"- **{VERDICT_LABEL[k]}**: {v}" for k, v in verdicts.items()), ""]
            if verdicts
            else []
        )
        lines = [
            *head,
            *summary,
            *self.resolution(),
            *(line for s in sections for line in s.lines),
            *self.differences(verdicts),
            *self.machine(),
            *self.commands(first_run),
            *self.missing(steps),
        ]
        figures = {name: draw for s in sections for name, draw in s.plots.items()}
        return "\n".join(lines).rstrip() + "\n", figures


def write_results_report(study: Study, out: str | Path, generated: str | None = None) -> dict[str, Path]:
    """Write ``out`` (Markdown) and its PNG plots into ``<out without .md>/``, each file atomically.

    Returns the written paths by name ("markdown" and each plot's file name).
    """
    out = Path(out)
    plot_dir = out.with_suffix("")
    markdown, figures = Report(study, plot_dir.name).build(generated)
    paths: dict[str, Path] = {}
    if figures:
        plot_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in figures.items():
        write_bytes_atomic(plot_dir / name, plots.png(draw()))
        paths[name] = plot_dir / name
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, markdown.encode("utf-8"))
    paths["markdown"] = out
    return paths
