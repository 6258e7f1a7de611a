"""``miro-eval``: benchmark accuracy, reward control and best-of-N for a trained MIRO model.

``miro-eval compare BEFORE AFTER --optimised NAME --out DIR`` puts two evaluations side by side (for
example a model before and after GRPO): every reward's change, optimised or not, and the benchmark's.

The evidence report (docs/results.md) is a study of the shapes world, not part of this command: ``make
report`` (``python -m miro.shapes.study``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.progress import Progress

from miro.checks import InputError, check_device, check_guidance, check_out_dir
from miro.cli import PRECISION_HELP, THREADS_HELP, threads_arg
from miro.config import set_threads
from miro.eval.compare import CompareError, compare, load_results, write_comparison
from miro.eval.report import write_report
from miro.eval.runner import EvalSettings, Evaluator
from miro.model_card import record_evaluation
from miro.pipeline import PRECISIONS, MiroPipeline, RewardSpecError, negative_targets
from miro.pretrained import CheckpointError, read_config
from miro.rewards.base import RewardModel, UnknownRewardError
from miro.scoring import build_rewards, reward_specs
from miro.utils.hardware import describe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miro-eval", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="model directory (<run>/export)")
    p.add_argument("--baseline", default=None, help="a baseline model directory for the best-of-N comparison")
    p.add_argument("--rewards", default=None,
                   help="comma-separated rewards to measure (default: alignment and the model's rewards)")
    p.add_argument("--out", type=Path, required=True, help="directory for results.json, report.md and plots")
    d = EvalSettings()
    p.add_argument("--per-category", type=int, default=d.per_category, help="benchmark prompts per category")
    p.add_argument("--samples-per-prompt", type=int, default=d.samples_per_prompt)
    p.add_argument("--sweep-levels", default=",".join(f"{x:g}" for x in d.sweep_levels),
                   help="reward targets of the control sweeps, comma-separated")
    p.add_argument("--sweep-images", type=int, default=d.sweep_images,
                   help="images per sweep point, rewards other than alignment (alignment: the benchmark's)")
    p.add_argument("--best-of", type=int, default=d.best_of_max, help="largest N of best-of-N (0 = skip)")
    p.add_argument("--best-of-prompts", type=int, default=d.best_of_prompts)
    p.add_argument("--all-low", action="store_true", help="also run the benchmark with every target at 0")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the model's)")
    p.add_argument("--negative-rewards", default=None,
                   help="targets of the negative branch, NAME=VALUE,... (unnamed: 0; default: the model's)")
    p.add_argument("--negative-prompt", default=None,
                   help='caption of the negative branch ("" = empty text; default: the model\'s)')
    p.add_argument("--push", default=None, metavar="NAME",
                   help="push one reward: negative branch = the targets with only NAME at 0 "
                        "(instead of --negative-rewards)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_arg, default="auto", help=THREADS_HELP)
    return p


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    try:
        levels = tuple(float(x) for x in args.sweep_levels.split(","))
    except ValueError:
        raise ValueError(
            f"--sweep-levels must be numbers separated by commas, got {args.sweep_levels!r}"
        ) from None
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    return EvalSettings(
        per_category=args.per_category, samples_per_prompt=args.samples_per_prompt, sweep_levels=levels,
        sweep_images=args.sweep_images, best_of_prompts=args.best_of_prompts, best_of_max=args.best_of,
        all_low=args.all_low, guidance=args.guidance, steps=args.steps, seed=args.seed,
        batch_size=args.batch_size, negative_rewards=args.negative_rewards,
        negative_prompt=args.negative_prompt, push=args.push,
    )


def check_request(args: argparse.Namespace) -> None:
    """What can be checked before a model is loaded or a reward model built (they take minutes at
    scale): guidance, device, the output directory, both model directories and the reward names."""
    check_guidance(args.guidance)
    check_device(args.device)
    check_out_dir(args.out)
    config = read_config(args.checkpoint)
    if args.baseline:
        read_config(args.baseline)
    names = [str(n) for n in config["reward_names"]]
    negative_targets(names, {}, args.negative_rewards, config.get("sampling", {}).get("guided_rewards"))
    if args.rewards:
        reward_specs([n.strip() for n in args.rewards.split(",") if n.strip()])


def measured_rewards(spec: str | None, pipe: MiroPipeline, device: str = "cpu") -> dict[str, RewardModel]:
    """The rewards to measure images with, built exactly as the scoring stage builds them, on the
    device the images are generated on (a reward model left on the CPU would be the bottleneck)."""
    names = spec.split(",") if spec else ["alignment", *pipe.reward_names]
    return build_rewards(reward_specs([n.strip() for n in names if n.strip()]), device=device)


def model_name(checkpoint: str) -> str:
    """The run's name for tables and legends: training exports to <run>/export, so skip "export"."""
    path = Path(checkpoint).resolve()
    return path.parent.name if path.name == "export" else path.name


def build_compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miro-eval compare", description="Compare two miro-eval results.")
    p.add_argument("before", help="results.json (or its directory) of the starting model")
    p.add_argument("after", help="results.json (or its directory) of the fine-tuned model")
    p.add_argument("--optimised", required=True,
                   help="comma-separated rewards the fine-tuning optimised (the others are listed as not)")
    p.add_argument("--out", type=Path, required=True, help="directory for comparison.md and .json")
    return p


def compare_main(argv: list[str]) -> int:
    args = build_compare_parser().parse_args(argv)
    try:
        before, after = load_results(args.before), load_results(args.after)
        optimised = [n.strip() for n in args.optimised.split(",") if n.strip()]
        result = compare(before, after, optimised)
    except CompareError as err:
        print(f"miro-eval compare: {err}", file=sys.stderr)
        return 2
    paths = write_comparison(result, args.out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"Comparison: {paths['markdown']}\nData: {paths['json']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    if argv[:1] == ["report"]:  # moved out of the core: the study belongs to the shapes world
        print("miro-eval report: error: the evidence report is now `make report` "
              "(python -m miro.shapes.study, same flags)", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        threads = set_threads(args.threads)
        settings = settings_from_args(args)
        check_request(args)
        pipe = MiroPipeline.from_pretrained(args.checkpoint, args.device, args.precision)
        print(f"miro-eval: {describe(pipe.precision_choice, threads)}")
        baseline = None
        if args.baseline:
            baseline = MiroPipeline.from_pretrained(args.baseline, args.device, args.precision)
        rewards = measured_rewards(args.rewards, pipe, args.device)
        evaluator = Evaluator(pipe, rewards, settings)
    except (CheckpointError, UnknownRewardError, InputError, RewardSpecError, ValueError, OSError) as err:
        print(f"miro-eval: error: {err}", file=sys.stderr)
        return 2
    with Progress() as progress:
        total = evaluator.total_images(with_baseline=baseline is not None)
        task = progress.add_task("evaluating (images generated)", total=total)
        evaluator.progress = lambda n: progress.advance(task, n)
        results = evaluator.run(model_name(args.checkpoint), baseline=baseline)
    paths = write_report(results, args.out)
    print(f"Evaluated {results.images_generated} images in {results.seconds:.0f} s.")
    print(f"Report: {paths['markdown']}\nResults: {paths['json']}")
    for card in record_evaluation(pipe.pretrained.path, results, args.out):  # miro.model_card
        print(f"Model card: {card}")
    for key in ("sweeps", "best_of_n"):
        if key in paths:
            print(f"Plot: {paths[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
