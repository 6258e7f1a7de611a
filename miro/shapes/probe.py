"""Does a shapes model draw the shape its caption names? The two measurements behind docs/demo.md.

The benchmark's accuracy mixes colour, count, position and shape; on the CPU demo the colours come right
long before the shapes, so the shape needs its own numbers:

* :func:`shape_accuracy`: single-object prompts ("a red square"), every colour x shape, ``per_cell``
  seeds each, every reward target at the top; the alignment reward's detector classifies the one object
  it finds. A model that draws the same round blob for every shape scores about 1/3 (the detector calls
  blobs circles), so the confusion counts are reported beside the accuracy.
* :func:`caption_swap_losses`: the flow-matching loss on freshly rendered single-object scenes with their
  true caption, and how much it rises when the caption's shape word (or its colour word) is swapped for
  another. A model that draws outlines from the shape word loses much when the word is wrong; one that
  ignores the word loses nothing. Per flow time t, because the outline is decided at high t.

    python -m miro.shapes.probe --checkpoint demo/train/shapes/export [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from miro.data.samples import to_model_range
from miro.data.shards import write_bytes_atomic
from miro.flow.path import flow_loss, interpolate
from miro.pipeline import PRECISIONS, MiroPipeline
from miro.pretrained import CheckpointError
from miro.shapes.alignment import detect_objects
from miro.shapes.captions import COLOURS, SHAPES
from miro.shapes.scenes import render_scene, sample_scene

# images uint8 [B, 3, H, W] for (prompts, seeds)
Generate = Callable[[list[str], list[int]], torch.Tensor]
DEFAULT_TIMES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


@dataclass(frozen=True)
class ShapeAccuracy:
    n: int
    one_object: float  # share of images in which the detector finds exactly one object
    shape_correct: float  # exactly one object, of the prompt's shape
    shape_and_colour: float
    confusion: dict[str, dict[str, int]]  # prompt shape -> detected shape ("unknown": no prototype fits)


@dataclass(frozen=True)
class SwapLoss:
    t: float
    true_caption: float  # mean squared velocity error with the true caption
    shape_swapped: float  # increase over true_caption when the shape word is another shape
    colour_swapped: float  # ... when the colour word is another colour


def single_object_prompts(per_cell: int) -> list[tuple[str, str, str]]:
    """(prompt, colour, shape) for every shape x colour, ``per_cell`` times each."""
    if per_cell < 1:
        raise ValueError(f"per_cell must be >= 1, got {per_cell}")
    return [(f"a {c} {s}", c, s) for s in SHAPES for c in COLOURS for _ in range(per_cell)]


def shape_accuracy(generate: Generate, per_cell: int = 8, seed: int = 1000, batch: int = 72) -> ShapeAccuracy:
    """Generate every single-object prompt (image i with seed ``seed + i``) and classify what is drawn."""
    items = single_object_prompts(per_cell)
    prompts = [p for p, _, _ in items]
    images = torch.cat([
        generate(prompts[i : i + batch], [seed + j for j in range(i, min(i + batch, len(items)))])
        for i in range(0, len(items), batch)
    ])
    one = shape_ok = both_ok = 0
    confusion: dict[str, Counter[str]] = {s: Counter() for s in SHAPES}
    for image, (_, colour, shape) in zip(images, items, strict=True):
        found = detect_objects(image.permute(1, 2, 0).numpy())
        if len(found) != 1:
            continue
        one += 1
        confusion[shape][found[0].shape] += 1
        shape_ok += found[0].shape == shape
        both_ok += found[0].shape == shape and found[0].colour == colour
    n = len(items)
    return ShapeAccuracy(n, one / n, shape_ok / n, both_ok / n, {s: dict(c) for s, c in confusion.items()})


def single_object_scenes(
    n: int, size: int, size_range: tuple[float, float], seed: int
) -> tuple[torch.Tensor, list[str], list[str], list[str]]:
    """n rendered one-object scenes in [-1, 1] [n, 3, size, size], their true captions, and the same
    captions with the shape word (then the colour word) replaced by the next one in the vocabulary."""
    rng = np.random.default_rng(seed)
    images, true, shape_swapped, colour_swapped = [], [], [], []
    for _ in range(n):
        scene = sample_scene(rng, size, max_objects=1, size_range=size_range)
        obj = scene.objects[0]
        images.append(torch.from_numpy(np.asarray(render_scene(scene, size)).copy()).permute(2, 0, 1))
        other_shape = SHAPES[(SHAPES.index(obj.shape) + 1) % len(SHAPES)]
        other_colour = COLOURS[(COLOURS.index(obj.colour) + 1) % len(COLOURS)]
        true.append(f"a {obj.colour} {obj.shape}")
        shape_swapped.append(f"a {obj.colour} {other_shape}")
        colour_swapped.append(f"a {other_colour} {obj.shape}")
    return to_model_range(torch.stack(images)), true, shape_swapped, colour_swapped


@torch.no_grad()
def caption_swap_losses(
    model: torch.nn.Module,
    encode_text: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
    num_rewards: int,
    times: Sequence[float] = DEFAULT_TIMES,
    n: int = 256,
    size_range: tuple[float, float] = (0.3, 0.5),
    seed: int = 0,
) -> list[SwapLoss]:
    """Loss of ``model`` (pixel space, every reward at the top) on n single-object scenes at each t, with
    the true and with the swapped captions; the same scenes and noise for all three captions."""
    size = model.image_size
    x0, true, shape_swapped, colour_swapped = single_object_scenes(n, size, size_range, seed)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    rewards = torch.ones(n, num_rewards) if num_rewards else None
    captions = {
        "true": encode_text(true), "shape": encode_text(shape_swapped), "colour": encode_text(colour_swapped)
    }
    out = []
    for t in times:
        if not 0.0 < t < 1.0:
            raise ValueError(f"flow times must be in (0, 1), got {t}")
        t_batch = torch.full((n,), float(t))
        x_t = interpolate(x0, noise, t_batch)
        loss = {
            name: float(flow_loss(model(x_t, t_batch, tokens, mask, rewards), x0, noise))
            for name, (tokens, mask) in captions.items()
        }
        base = loss["true"]
        out.append(SwapLoss(float(t), base, loss["shape"] - base, loss["colour"] - base))
    return out


def format_report(accuracy: ShapeAccuracy, swaps: Sequence[SwapLoss]) -> str:
    lines = [
        f"single-object prompts: {accuracy.n}; exactly one object found in {accuracy.one_object:.2f}; "
        f"its shape right in {accuracy.shape_correct:.3f}, shape and colour in "
        f"{accuracy.shape_and_colour:.3f} (one blob for every shape scores ~0.33)",
        "detected shape per prompt shape: " + "; ".join(
            f"{s}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
            for s, c in accuracy.confusion.items()
        ),
        "loss with the true caption, and its rise when the shape / colour word is swapped:",
    ]
    lines += [
        f"  t = {s.t:.1f}: {s.true_caption:.4f}   shape {s.shape_swapped:+.4f}   "
        f"colour {s.colour_swapped:+.4f}"
        for s in swaps
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a shapes model directory (<run>/export)")
    parser.add_argument("--per-cell", type=int, default=8, help="images per colour x shape prompt")
    parser.add_argument("--scenes", type=int, default=256, help="rendered scenes for the caption-swap loss")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="of the generated images (auto: bf16 where native, else fp32)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    try:
        pipe = MiroPipeline.from_pretrained(args.checkpoint, precision=args.precision)
    except CheckpointError as err:
        print(f"shape_probe: {err}", file=sys.stderr)
        return 2
    if pipe.pretrained.vae is not None:
        print("shape_probe: the probe renders pixel-space scenes; this model works in a VAE's latent space",
              file=sys.stderr)
        return 2

    def generate(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return pipe(prompts, seed=seeds, output="tensor")

    accuracy = shape_accuracy(generate, args.per_cell)
    swaps = caption_swap_losses(
        pipe.pretrained.model.eval(), pipe.encode_text, len(pipe.reward_names), n=args.scenes
    )
    print(format_report(accuracy, swaps))
    if args.out is not None:
        numbers = {"accuracy": asdict(accuracy), "swap_losses": [asdict(s) for s in swaps]}
        write_bytes_atomic(args.out, json.dumps(numbers, indent=2).encode())
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
