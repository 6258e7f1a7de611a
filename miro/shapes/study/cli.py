"""``python -m miro.shapes.study [--run] [--dry-run] [--scale cpu|gpu|test] [--seeds 0,1,2] [--out FILE]
[OVERRIDES]``: the evidence report (conf/report.yaml) from the saved runs; ``--run`` first runs the ones
that are missing, through the Makefile's stages. ``make report`` calls it (REPORT_SCALE, REPORT_SEEDS,
REPORT_RUN=1; ARGS for the rest).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import HydraException

from miro.eval.study import StudyError, run_steps
from miro.shapes.study.archive import ArchiveError, pack, unpack
from miro.shapes.study.makefile import check_makefile, environment
from miro.shapes.study.plan import STUDIES, Study, compose_study_config
from miro.shapes.study.report import write_results_report

PROG = "miro-study"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="The evidence report (conf/report.yaml) from the saved runs (make report)."
    )
    p.add_argument("--run", action="store_true", help="first run the study's missing steps (hours on a CPU)")
    p.add_argument("--dry-run", action="store_true", help="list the steps and whether each is done; run none")
    p.add_argument("--scale", default=None, help="conf/report/<scale>.yaml: cpu (default), gpu or test")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the scale's)")
    p.add_argument(
        "--studies", default=None,
        help=f"with --run: only these, comma-separated ({', '.join(STUDIES)}; default: all)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="the report (default: the scale's, e.g. docs/results.md)")
    p.add_argument(
        "--pack", action="store_true",
        help="also pack the files the report read into the scale's archive (docs/results/runs-cpu.tar.gz)",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/report.yaml, e.g. train.steps=1000")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.WARNING)
    try:
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s.strip()]
        cfg = compose_study_config(args.scale, seeds, args.out, args.overrides)
        study = Study(cfg)
        studies = STUDIES if args.studies is None else [s.strip() for s in args.studies.split(",")]
        steps = study.steps(studies)
        if args.dry_run:
            for step in steps:
                print(f"{'done' if step.done() else 'todo'}  {step.name}: {step.shell()}")
            return 0
        if args.run:
            check_makefile()
            position = {step.name: f"[{i}/{len(steps)}]" for i, step in enumerate(steps, start=1)}
            run_steps(
                steps, study.layout, int(cfg.threads), environ=environment(), jobs=int(cfg.jobs),
                progress=lambda step, state: print(position[step.name], state, step.name, flush=True),
            )  # fmt: skip
        archive = Path(cfg.archive) if cfg.get("archive") else None
        present = any(step.done() for step in study.steps() if step.study != "data")
        if not present and not args.run and archive is not None and archive.is_file():
            # A fresh clone: the committed archive holds the measured runs the committed report came from.
            count = unpack(archive, study.layout.root)
            print(f"Unpacked {count} files of saved runs from {archive} into {study.layout.root}")
            present = any(step.done() for step in study.steps() if step.study != "data")
        if not present:
            # An empty report would replace a committed one (docs/results.md) in a fresh clone.
            if args.run:  # only the data was asked for: nothing to report yet, and that is no error
                print(f"No model runs under {study.layout.root} yet, so {cfg.out} is left as it is.")
                return 0
            print(
                f"{PROG}: error: no saved runs under {study.layout.root}, so nothing to report and {cfg.out} "
                "is left as it is; --run (make report REPORT_RUN=1) runs the study first",
                file=sys.stderr,
            )
            return 2
        paths = write_results_report(study, cfg.out)
        if args.pack:
            if archive is None:
                raise ArchiveError(f"--pack: the {cfg.scale} scale names no archive (archive: in its conf)")
            paths["archive"] = pack(study, archive)
    except (StudyError, ValueError, HydraException) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"Report: {paths['markdown']}")
    for name, path in paths.items():
        if name not in ("markdown", "archive"):
            print(f"Plot: {path}")
    if "archive" in paths:
        print(f"Saved runs packed (commit it beside the report): {paths['archive']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
