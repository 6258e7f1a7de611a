"""``miro-generate``: images from a trained MIRO model at requested reward levels."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.progress import Progress

from miro.checks import InputError, check_device, check_guidance, check_out_dir
from miro.cli import PRECISION_HELP, THREADS_HELP, threads_arg
from miro.config import set_threads
from miro.data.prompt_file import PromptFileError, read_prompt_file
from miro.flow.guidance import GuidanceSchedule
from miro.pipeline import (
    MODEL_DEFAULT,
    PRECISIONS,
    TARGET_MAX,
    MiroPipeline,
    RewardSpecError,
    check_exported_request,
    image_grid,
)
from miro.pretrained import WEIGHTS, CheckpointError, file_hash, read_config
from miro.rewards.base import available_rewards
from miro.utils.hardware import compute_record, describe

IMAGE_FILE = re.compile(r"\d{5}\.(png|json)")  # the names this command gives its images and records


class UsageError(ValueError):
    """A bad command-line value that argparse cannot check by itself."""


def _epilog() -> str:
    lines = ["reward names and aliases (a model accepts the rewards it was trained with):"]
    lines += [f"  {name:<16} {', '.join(aliases)}" for name, aliases in available_rewards().items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="miro-generate", description=__doc__, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model directory written by training (<run>/export)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    p.add_argument(
        "--rewards", default="",
        help=f"targets 0-{TARGET_MAX:g}, e.g. aesthetic=9,pick=8 (unnamed: {TARGET_MAX:g}); aliases below",
    )
    p.add_argument(
        "--negative-rewards", default=None,
        help="targets of the negative branch (unnamed: 0; default: the model's, usually all 0)",
    )
    p.add_argument("--negative-prompt", default=None, help='text of the negative branch ("" = empty prompt)')
    add_miro_sampling_args(p)
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale w (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="image i of the run uses seed + i")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_arg, default="auto", help=THREADS_HELP)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    return p


def add_miro_sampling_args(p: argparse.ArgumentParser) -> None:
    """MIRO's sampling options (miro.pipeline): push one reward, the negative caption, guidance interval."""
    p.add_argument("--push", default=None, metavar="NAME",
                   help="push one reward: positive all high, negative all high except NAME at 0 "
                        "(instead of --negative-rewards)")
    p.add_argument("--same-caption", action="store_true",
                   help="negative branch uses the prompt itself (for a model whose default is the empty "
                        "prompt)")
    p.add_argument("--guidance-interval", default=None, metavar="T_LOW,T_HIGH",
                   help="guide only where T_LOW <= t <= T_HIGH (t = 1 noise, 0 data; default: the model's)")
    p.add_argument("--guidance-ramp", choices=("constant", "linear"), default=None,
                   help="constant w, or w rising linearly from 0 at T_HIGH to 2w at T_LOW (mean w; "
                        "default: the model's)")
    p.add_argument("--no-snap", action="store_true",
                   help="condition on the targets as given instead of the nearest trained level")


def miro_sampling_options(args: argparse.Namespace) -> dict:
    """The MiroPipeline keyword arguments of :func:`add_miro_sampling_args`' options (UsageError if bad)."""
    if args.push is not None and args.negative_rewards is not None:
        raise UsageError("give --push or --negative-rewards, not both: --push builds the negative branch")
    if args.same_caption and args.negative_prompt is not None:
        raise UsageError("give --same-caption or --negative-prompt, not both")
    interval = MODEL_DEFAULT
    if args.guidance_interval is not None:
        try:
            interval = [float(x) for x in args.guidance_interval.split(",")]
        except ValueError:
            interval = []
        if len(interval) != 2:
            raise UsageError(
                f"--guidance-interval must be two numbers T_LOW,T_HIGH, got {args.guidance_interval!r}"
            )
        try:
            GuidanceSchedule(1.0, tuple(interval))
        except ValueError as err:
            raise UsageError(f"--guidance-interval: {err}") from None
    negative_prompt = None if args.same_caption else (
        MODEL_DEFAULT if args.negative_prompt is None else args.negative_prompt
    )
    return {"push": args.push, "negative_prompt": negative_prompt, "guidance_interval": interval,
            "guidance_ramp": args.guidance_ramp, "snap": not args.no_snap}


def read_prompts(args: argparse.Namespace) -> list[str]:
    """--prompt values, or the non-empty lines of --prompts-file that are not ``#`` comments."""
    if args.prompt:
        prompts = [p.strip() for p in args.prompt]
    else:
        try:
            prompts = read_prompt_file(args.prompts_file)
        except PromptFileError as err:
            raise UsageError(str(err)) from None
    if not prompts or not all(prompts):
        raise UsageError("no prompts given (or an empty --prompt)")
    return prompts


def image_record(pipe: MiroPipeline, checkpoint: str | Path, used: dict, compute: dict | None = None) -> dict:
    """The metadata written next to every image (the image's prompt and seed are added to it): enough to
    generate it again. ``used`` is :meth:`MiroPipeline.resolve`'s record of the call. ``miro-app`` writes
    the same record for each image it shows."""
    record = {
        "rewards": {n: r["target"] for n, r in used["rewards"].items()},
        "negative_rewards": {n: r["target"] for n, r in used["negative_rewards"].items()},
        # the trained level each target was snapped to, and the conditioning value actually used
        "reward_levels": used["rewards"],
        "negative_reward_levels": used["negative_rewards"],
        "push": used["push"],
        "negative_prompt": used["negative_prompt"],  # null: the same caption as the prompt
        "guidance": used["guidance"],
        "guidance_interval": used["guidance_interval"],
        "guidance_ramp": used["guidance_ramp"],
        "steps": used["steps"],
        "precision": pipe.precision,
    }
    if compute is not None:
        record["compute"] = compute
    return record | {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_hash(Path(pipe.pretrained.path) / WEIGHTS),
    }


def check_request(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Everything about the request that can be checked before the model is loaded (a bad reward, push
    or sampling option is one line at once, not after the weights are read): the prompts and the
    pipeline's keyword arguments. The reward request is checked by the function
    :meth:`MiroPipeline.resolve` calls, :func:`resolve_request`, on config.json's reward names and
    sampling defaults, so the two checks cannot disagree."""
    prompts = read_prompts(args)
    for name in ("n", "steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    check_guidance(args.guidance)
    check_device(args.device)
    check_out_dir(args.out)
    options = miro_sampling_options(args)
    config = read_config(args.checkpoint)  # the reward names and sampling defaults, without the model
    check_exported_request(
        args.checkpoint, config, args.rewards, args.negative_rewards, guidance=args.guidance,
        steps=args.steps, **options,
    )  # fmt: skip
    return prompts, options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        threads = set_threads(args.threads)
        prompts, options = check_request(args)
        pipe = MiroPipeline.from_pretrained(args.checkpoint, args.device, args.precision)
        print(f"miro-generate: {describe(pipe.precision_choice, threads)}")
        used = pipe.resolve(args.rewards, args.negative_rewards, guidance=args.guidance, steps=args.steps,
                            **options)
    except (UsageError, InputError, CheckpointError, RewardSpecError) as err:
        print(f"miro-generate: error: {err}", file=sys.stderr)
        return 2

    # Image i of the run (prompts in order, each repeated --n times) uses seed + i.
    jobs = [(prompt, args.seed + i) for i, prompt in enumerate(p for p in prompts for _ in range(args.n))]
    common = image_record(pipe, args.checkpoint, used, compute_record(pipe.precision_choice, threads))
    # Everything is written to a hidden staging directory next to --out and moved in at the end, so an
    # interrupted run never leaves a half-written output directory behind.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        images = []
        with Progress() as progress:
            task = progress.add_task("generating", total=len(jobs))
            for start in range(0, len(jobs), args.batch_size):
                chunk = jobs[start : start + args.batch_size]
                batch = pipe(
                    [p for p, _ in chunk], rewards=args.rewards, negative_rewards=args.negative_rewards,
                    guidance=common["guidance"], steps=common["steps"], seed=[s for _, s in chunk],
                    output="tensor", **options,
                )
                for (prompt, seed), image in zip(chunk, batch, strict=True):
                    stem = staging / f"{len(images):05d}"
                    Image.fromarray(image.permute(1, 2, 0).numpy()).save(f"{stem}.png")
                    meta = {"prompt": prompt, "seed": seed, **common}
                    Path(f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
                    images.append(image)
                progress.advance(task, len(chunk))
        ncol = args.n if args.n > 1 and len(prompts) > 1 else min(8, len(images))
        grid = image_grid(torch.stack(images), ncol=ncol, upscale=4)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(staging / "grid.png")
        args.out.mkdir(parents=True, exist_ok=True)
        written = sorted(staging.iterdir())
        for path in written:
            path.replace(args.out / path.name)
        # An earlier run into the same --out with more images left files this run did not replace:
        # without them the directory holds exactly this run's images, as grid.png shows them.
        new = {path.name for path in written}
        stale = [p for p in args.out.iterdir() if IMAGE_FILE.fullmatch(p.name) and p.name not in new]
        for path in stale:
            path.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    removed = f" (removed {len(stale)} files of an earlier run's images there)" if stale else ""
    print(f"Wrote {len(images)} images (PNG + JSON each) and grid.png to {args.out}{removed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
