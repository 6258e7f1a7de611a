"""``miro-eval``: benchmark accuracy, reward control and best-of-N for a trained MIRO model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.progress import Progress

from miro.eval.report import write_report
from miro.eval.runner import EvalSettings, Evaluator
from miro.pipeline import MiroPipeline
from miro.pretrained import CheckpointError
from miro.rewards.base import UnknownRewardError, build_reward


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miro-eval", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="model directory (<run>/export)")
    p.add_argument("--baseline", default=None, help="a baseline model directory for the best-of-N comparison")
    p.add_argument("--rewards", default=None,
                   help="comma-separated rewards to measure (default: the offline rewards the model knows, and alignment)")
    p.add_argument("--out", type=Path, required=True, help="output directory for results.json, report.md, plots")
    d = EvalSettings()
    p.add_argument("--per-category", type=int, default=d.per_category)
    p.add_argument("--samples-per-prompt", type=int, default=d.samples_per_prompt)
    p.add_argument("--sweep-levels", default=",".join(f"{x:g}" for x in d.sweep_levels))
    p.add_argument("--sweep-images", type=int, default=d.sweep_images)
    p.add_argument("--best-of", type=int, default=d.best_of_max, help="largest N of best-of-N (0 = skip)")
    p.add_argument("--best-of-prompts", type=int, default=d.best_of_prompts)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        levels = tuple(float(x) for x in args.sweep_levels.split(","))
        pipe = MiroPipeline.from_pretrained(args.checkpoint, device=args.device)
        baseline = MiroPipeline.from_pretrained(args.baseline, device=args.device) if args.baseline else None
        names = args.rewards.split(",") if args.rewards else ["alignment", *pipe.reward_names]
        rewards = {}
        for name in dict.fromkeys(n.strip() for n in names if n.strip()):
            model = build_reward(name)
            rewards[model.name] = model
    except (CheckpointError, UnknownRewardError, ValueError) as err:
        print(f"miro-eval: {err}", file=sys.stderr)
        return 2
    settings = EvalSettings(
        per_category=args.per_category, samples_per_prompt=args.samples_per_prompt, sweep_levels=levels,
        sweep_images=args.sweep_images, best_of_prompts=args.best_of_prompts, best_of_max=args.best_of,
        guidance=args.guidance, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
    )
    with Progress() as progress:
        evaluator = Evaluator(pipe, rewards, settings)
        task = progress.add_task("evaluating (images generated)", total=evaluator.total_images(baseline is not None))
        evaluator.progress = lambda n: progress.advance(task, n)
        results = evaluator.run(Path(args.checkpoint).name or "model", baseline=baseline)
    paths = write_report(results, args.out)
    print(f"Report: {paths['markdown']}\nResults: {paths['json']}")
    for key in ("sweeps", "best_of_n"):
        if key in paths:
            print(f"Plot: {paths[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
