"""``miro-generate``: images from a trained MIRO model at requested reward levels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from rich.progress import Progress

from miro.pipeline import TARGET_MAX, MiroPipeline, RewardSpecError, image_grid, parse_reward_spec
from miro.pretrained import CheckpointError, file_hash
from miro.rewards.base import available_rewards


def _epilog() -> str:
    lines = ["reward names and aliases (a model accepts the rewards it was trained with):"]
    lines += [f"  {name:<16} {', '.join(aliases)}" for name, aliases in available_rewards().items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="miro-generate", description=__doc__, epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="model directory written by training (<run>/export)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    p.add_argument("--rewards", default="", help=f"targets 0-{TARGET_MAX:g}, e.g. aesthetic=9,pick=8 (unnamed: 10)")
    p.add_argument("--negative-rewards", default="", help="targets of the negative branch (unnamed: 0)")
    p.add_argument("--negative-prompt", default=None, help='text of the negative branch ("" = empty prompt)')
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale w (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="image i of the run uses seed + i")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prompts = args.prompt or [
            line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()
        ]
    except OSError as err:
        print(f"miro-generate: cannot read prompts file: {err}", file=sys.stderr)
        return 2
    if not prompts:
        print("miro-generate: no prompts given", file=sys.stderr)
        return 2
    if args.n < 1 or (args.steps is not None and args.steps < 1):
        print("miro-generate: --n and --steps must be at least 1", file=sys.stderr)
        return 2
    try:
        pipe = MiroPipeline.from_pretrained(args.checkpoint, device=args.device)
        targets = parse_reward_spec(args.rewards, pipe.reward_names)
        negatives = parse_reward_spec(args.negative_rewards, pipe.reward_names)
    except (CheckpointError, RewardSpecError) as err:
        print(f"miro-generate: {err}", file=sys.stderr)
        return 2

    # Image i of the run (prompts in order, each repeated --n times) uses seed + i.
    jobs = [(prompt, args.seed + i) for i, prompt in enumerate(p for p in prompts for _ in range(args.n))]
    args.out.mkdir(parents=True, exist_ok=True)
    weights_hash = file_hash(Path(pipe.pretrained.path) / "model.safetensors")
    sampling = pipe.pretrained.sampling
    guidance = sampling.get("guidance", 1.5) if args.guidance is None else args.guidance
    steps = sampling.get("steps", 25) if args.steps is None else args.steps
    full_targets = {n: targets.get(n, TARGET_MAX) for n in pipe.reward_names}
    full_negatives = {n: negatives.get(n, 0.0) for n in pipe.reward_names}

    images = []
    with Progress() as progress:
        task = progress.add_task("generating", total=len(jobs))
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            batch = pipe(
                [p for p, _ in chunk], rewards=targets, negative_rewards=negatives, guidance=guidance, steps=steps,
                seed=[s for _, s in chunk], negative_prompt=args.negative_prompt, output="tensor",
            )
            for (prompt, seed), image in zip(chunk, batch, strict=True):
                index = len(images)
                stem = args.out / f"{index:05d}"
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(f"{stem}.png")
                meta = {
                    "prompt": prompt, "seed": seed, "rewards": full_targets, "negative_rewards": full_negatives,
                    "negative_prompt": args.negative_prompt, "guidance": guidance, "steps": steps,
                    "checkpoint": str(args.checkpoint), "checkpoint_sha256": weights_hash,
                }
                Path(f"{stem}.json").write_text(json.dumps(meta, indent=2))
                images.append(image)
            progress.advance(task, len(chunk))

    grid = image_grid(torch.stack(images), ncol=args.n if len(prompts) > 1 else min(8, len(images)), upscale=4)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(args.out / "grid.png")
    print(f"Wrote {len(images)} images, their JSON and grid.png to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
