"""``miro-eval``: a benchmark, reward control and best-of-N for a trained MIRO model.

The benchmark is named (``--benchmark``, ``conf/benchmark/NAME.yaml``); without the flag it is the one
the model's export records (training writes its config's ``benchmark``: ``shapes`` for the demo):

    miro-eval --checkpoint demo/train/shapes/export --out demo/eval                     (shapes)
    miro-eval --benchmark geneval --prompts evaluation_metadata.jsonl --checkpoint EXPORT --out DIR
    miro-eval --benchmark rewards --prompts drawbench.csv --rewards hps,pick --checkpoint EXPORT --out DIR

``miro-eval geneval-summary RESULTS.jsonl`` turns GenEval's detector output into a per-category table.

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
from miro.eval.benchmark import Benchmark, BenchmarkError, benchmark_config, build_benchmark
from miro.eval.compare import CompareError, compare, load_results, write_comparison
from miro.eval.geneval import check_run_record, summarise, write_summary
from miro.eval.report import write_report
from miro.eval.runner import EvalSettings, Evaluator
from miro.model_card import record_evaluation
from miro.pipeline import MODEL_DEFAULT, PRECISIONS, MiroPipeline, RewardSpecError, check_exported_request
from miro.pretrained import CheckpointError, read_config
from miro.rewards.base import RewardModel, UnknownRewardError
from miro.scoring import ScoringConfigError, build_rewards, expand_reward_sets, reward_specs
from miro.utils.hardware import describe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miro-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model directory (<run>/export)")
    p.add_argument("--benchmark", default=None,
                   help="conf/benchmark/NAME.yaml: shapes, geneval, rewards "
                        "(default: the one the export records)")
    p.add_argument("--prompts", default=None,
                   help="geneval: GenEval's evaluation_metadata.jsonl; rewards: a prompt file (one per line, "
                        "or a CSV/TSV with a header row)")
    p.add_argument("--prompt-column", default=None,
                   help="rewards, CSV/TSV: the prompt column (default Prompt)")
    p.add_argument("--category-column", default=None,
                   help="rewards, CSV/TSV: the category column (default Category; '' = one category)")
    p.add_argument("--baseline", default=None, help="a baseline model directory for the best-of-N comparison")
    p.add_argument("--rewards", default=None,
                   help="comma-separated rewards or reward sets (conf/rewards/: offline, miro7) to measure "
                        "(default: those the benchmark's judge reads, plus the model's rewards on shapes)")
    p.add_argument("--out", type=Path, required=True, help="directory for results.json, report.md and plots")
    d = EvalSettings()
    p.add_argument("--per-category", type=int, default=None,
                   help="shapes: benchmark prompts per category (default: conf/benchmark/shapes.yaml's, 16)")
    p.add_argument("--samples-per-prompt", "--n-per-prompt", dest="samples_per_prompt", type=int,
                   default=None,
                   help=f"images per prompt (default: the benchmark's, GenEval's 4; "
                        f"else {d.samples_per_prompt})")
    p.add_argument("--targets", default=None, metavar="NAME=VALUE,...",
                   help="reward targets of the benchmark's images (unnamed rewards 10; default: all 10)")
    p.add_argument("--sweep-levels", default=",".join(f"{x:g}" for x in d.sweep_levels),
                   help="reward targets of the control sweeps, comma-separated")
    p.add_argument("--sweep-images", type=int, default=d.sweep_images,
                   help="images per sweep point, rewards the judge does not read "
                        "(those: every benchmark image)")
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


def settings_from_args(args: argparse.Namespace, benchmark: Benchmark | None = None) -> EvalSettings:
    try:
        levels = tuple(float(x) for x in args.sweep_levels.split(","))
    except ValueError:
        raise ValueError(
            f"--sweep-levels must be numbers separated by commas, got {args.sweep_levels!r}"
        ) from None
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    samples = args.samples_per_prompt
    if samples is None:
        samples = (benchmark.samples_per_prompt if benchmark else None) or EvalSettings.samples_per_prompt
    return EvalSettings(
        samples_per_prompt=samples, sweep_levels=levels,
        sweep_images=args.sweep_images, best_of_prompts=args.best_of_prompts, best_of_max=args.best_of,
        all_low=args.all_low, guidance=args.guidance, steps=args.steps, seed=args.seed,
        batch_size=args.batch_size, negative_rewards=args.negative_rewards,
        negative_prompt=args.negative_prompt, push=args.push, targets=args.targets,
    )


# miro-eval flags that fill the benchmark setting of the same name (for a benchmark whose file lists it)
BENCHMARK_FLAGS = ("prompts", "prompt_column", "category_column", "per_category", "samples_per_prompt")


def benchmark_name(args: argparse.Namespace, config: dict) -> str:
    """--benchmark, else the benchmark the export records (a name; only conf/benchmark/ files qualify)."""
    name = args.benchmark or config.get("benchmark")
    if not name:
        raise BenchmarkError(
            f"{args.checkpoint} records no benchmark (older exports, or a training config without "
            "`benchmark`): name one with --benchmark shapes|geneval|rewards"
        )
    return str(name)


def build_benchmark_from_args(args: argparse.Namespace, name: str) -> Benchmark:
    """The named benchmark with the flags that apply to it; a flag it does not take is an error (a
    --prompts file silently ignored would evaluate something else than asked)."""
    takes = benchmark_config(name)
    settings: dict = {}
    for flag in BENCHMARK_FLAGS:
        key, value = flag, getattr(args, flag)
        if value is None:
            continue
        if key in takes:
            settings[key] = None if key == "category_column" and value == "" else value
        elif flag != "samples_per_prompt":  # images per prompt is the evaluation's setting for any benchmark
            raise BenchmarkError(f"--{flag.replace('_', '-')} does not apply to the {name} benchmark")
    if "seed" in takes:  # the prompt draw follows --seed, as the images do
        settings["seed"] = args.seed
    if args.per_category is not None and args.per_category < 1:
        raise BenchmarkError(f"per_category must be at least 1, got {args.per_category}")
    return build_benchmark(name, settings)


def check_request(args: argparse.Namespace) -> tuple[Benchmark, list[str]]:
    """What can be checked before a model is loaded or a reward model built (they take minutes at
    scale): guidance, device, the output directory, both model directories, the benchmark and its
    input file, and the reward names. Returns the benchmark and the rewards to measure."""
    check_guidance(args.guidance)
    check_device(args.device)
    check_out_dir(args.out)
    config = read_config(args.checkpoint)
    if args.baseline:
        read_config(args.baseline)
    names = [str(n) for n in config["reward_names"]]
    negative_prompt = MODEL_DEFAULT if args.negative_prompt is None else args.negative_prompt
    check_exported_request(
        args.checkpoint, config, args.targets, args.negative_rewards, push=args.push,
        negative_prompt=negative_prompt, guidance=args.guidance, steps=args.steps,
    )  # fmt: skip
    benchmark = build_benchmark_from_args(args, benchmark_name(args, config))
    rewards = reward_names(args.rewards, benchmark, names)
    if rewards:
        reward_specs(rewards)  # an unknown name fails here, with the valid ones
    return benchmark, rewards


def reward_names(spec: str | None, benchmark: Benchmark, model_rewards: list[str]) -> list[str]:
    """The rewards to measure: --rewards (names, aliases or sets such as offline and miro7), else those
    the benchmark's judge reads plus, where the benchmark asks for it (the shapes world's offline
    rewards), the model's own; the judge's always come first."""
    if spec:
        asked = expand_reward_sets([n.strip() for n in spec.split(",") if n.strip()])
    else:
        asked = list(model_rewards) if benchmark.measures_model_rewards else []
    names = list(dict.fromkeys([*benchmark.required_rewards, *asked]))
    if not names and not benchmark.writes_images:
        raise BenchmarkError(f"the {benchmark.name} benchmark is judged by rewards: name them with --rewards "
                             "(e.g. --rewards hps,pick or a set: --rewards miro7)")
    return names


def measured_rewards(names: list[str], device: str = "cpu") -> dict[str, RewardModel]:
    """The rewards to measure images with, built exactly as the scoring stage builds them, on the
    device the images are generated on (a reward model left on the CPU would be the bottleneck)."""
    return build_rewards(reward_specs(names), device=device) if names else {}


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


def build_geneval_summary_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="miro-eval geneval-summary",
        description="GenEval's results.jsonl (evaluate_images.py) as a per-category table with standard "
                    "errors.")
    p.add_argument("results", type=Path, help="the results.jsonl GenEval's evaluate_images.py wrote")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for geneval_summary.md and .json (default: the results file's)")
    return p


def geneval_summary_main(argv: list[str]) -> int:
    args = build_geneval_summary_parser().parse_args(argv)
    try:
        out = check_out_dir(args.out or args.results.parent)
        summary = summarise(args.results)
    except (BenchmarkError, InputError) as err:
        print(f"miro-eval geneval-summary: error: {err}", file=sys.stderr)
        return 2
    paths = write_summary(summary, out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"Summary: {paths['markdown']}\nData: {paths['json']}")
    return 0


def run_record(args: argparse.Namespace, settings: EvalSettings, benchmark: Benchmark) -> dict:
    """What the images of an output folder depend on: a rerun may finish the folder only if these agree."""
    return {"model": str(Path(args.checkpoint).resolve()), "benchmark": benchmark.describe(),
            "samples_per_prompt": settings.samples_per_prompt, "targets": settings.targets,
            "seed": settings.seed,
            "guidance": settings.guidance, "steps": settings.steps, "precision": args.precision,
            "negative_rewards": settings.negative_rewards, "negative_prompt": settings.negative_prompt,
            "push": settings.push}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    if argv[:1] == ["report"]:  # moved out of the core: the study belongs to the shapes world
        print("miro-eval report: error: the evidence report is now `make report` "
              "(python -m miro.shapes.study, same flags)", file=sys.stderr)
        return 2
    if argv[:1] == ["geneval-summary"]:
        return geneval_summary_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        threads = set_threads(args.threads)
        settings_from_args(args)  # bad numbers fail before anything is read
        benchmark, names = check_request(args)
        settings = settings_from_args(args, benchmark)
        pipe = MiroPipeline.from_pretrained(args.checkpoint, args.device, args.precision)
        print(f"miro-eval: {describe(pipe.precision_choice, threads)}")
        print(f"miro-eval: benchmark {benchmark.name}: {len(benchmark.prompts())} prompts x "
              f"{settings.samples_per_prompt} images; rewards measured: {', '.join(names) or 'none'}")
        baseline = None
        if args.baseline:
            baseline = MiroPipeline.from_pretrained(args.baseline, args.device, args.precision)
        rewards = measured_rewards(names, args.device)
        evaluator = Evaluator(pipe, rewards, settings, benchmark, image_dir=args.out)
        if benchmark.writes_images:
            check_run_record(args.out, run_record(args, settings, benchmark))
    except (CheckpointError, UnknownRewardError, InputError, RewardSpecError, ScoringConfigError,
            BenchmarkError, ValueError, OSError) as err:
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
    if results.image_dir:
        print(f"Images for {benchmark.name}'s own judge: {results.image_dir}/<prompt>/samples/ "
              "(docs/cc12m.md, Evaluate: run GenEval's evaluate_images.py on it, then "
              "miro-eval geneval-summary)")
    for card in record_evaluation(pipe.pretrained.path, results, args.out):  # miro.model_card
        print(f"Model card: {card}")
    for key in ("sweeps", "best_of_n"):
        if key in paths:
            print(f"Plot: {paths[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
