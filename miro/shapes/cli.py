"""``miro-data``: make data sets; ``miro-data shapes`` writes the embedded shapes world as shards."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from miro.shapes.scenes import (
    MAX_OBJECTS,
    SPEC_FILE,
    SceneError,
    ShapesSpec,
    iter_write_shapes_shards,
    shapes_up_to_date,
)

MAX_WORKERS = 256  # processes writing shards; more is a typo on any machine this runs on


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miro-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    shapes = commands.add_parser(
        "shapes",
        help="coloured-shape scenes with checkable captions (img2dataset layout: KEY.jpg, KEY.txt, KEY.json)",
        description="Render shapes scenes into OUT/00000.tar, 00001.tar, ...; every sample is a pure "
        "function of (seed, index), so reruns are byte-identical.",
    )
    d = ShapesSpec(n=1)
    shapes.add_argument("--out", type=Path, required=True, help="output directory for the shards")
    shapes.add_argument("--n", type=int, default=20000, help="number of samples")
    shapes.add_argument("--size", type=int, default=d.size, help="image side in pixels (>= 24 recommended)")
    shapes.add_argument("--seed", type=int, default=d.seed)
    shapes.add_argument("--per-shard", type=int, default=d.per_shard, help="samples per shard")
    shapes.add_argument("--degrade-prob", type=float, default=d.degrade_prob, help="share of degraded images")
    shapes.add_argument(
        "--mismatch-prob", type=float, default=d.mismatch_prob, help="share of captions that are false"
    )
    shapes.add_argument("--max-objects", type=int, default=d.max_objects, help=f"1 to {MAX_OBJECTS}")
    shapes.add_argument(
        "--object-size", type=float, nargs=2, default=d.size_range, metavar=("MIN", "MAX"),
        help="object side as a fraction of the image side",
    )
    shapes.add_argument("--min-object-px", type=float, default=d.min_object_px, help="smallest object side")
    shapes.add_argument(
        "--synthetic-captions", action="store_true",
        help="also write KEY.syn.txt: a true description of the rendered scene in a second caption family "
        "(training mixes it in with data.synthetic_caption_prob)",
    )
    shapes.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = ShapesSpec(
            n=args.n,
            size=args.size,
            seed=args.seed,
            per_shard=args.per_shard,
            degrade_prob=args.degrade_prob,
            mismatch_prob=args.mismatch_prob,
            max_objects=args.max_objects,
            size_range=tuple(args.object_size),
            min_object_px=args.min_object_px,
            synthetic_captions=args.synthetic_captions,
        )
    except ValueError as err:
        print(f"miro-data: {err}", file=sys.stderr)
        return 2
    if not 1 <= args.workers <= MAX_WORKERS:
        print(f"miro-data: --workers must be from 1 to {MAX_WORKERS}, got {args.workers}", file=sys.stderr)
        return 2
    last = spec.n_shards - 1
    pattern = f"{args.out}/{{00000..{last:05d}}}.tar" if last else f"{args.out}/00000.tar"
    if shapes_up_to_date(spec, args.out):
        print(f"{args.out} already holds these {spec.n} samples ({SPEC_FILE} matches), nothing written: "
              f"{pattern}")
        return 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns) as progress:
            task = progress.add_task("shapes samples", total=spec.n)
            for _, count in iter_write_shapes_shards(spec, args.out, workers=args.workers):
                progress.advance(task, count)
    except SceneError as err:  # sizes that pass the spec's check but leave too little room to place them
        print(f"miro-data: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {spec.n} samples in {spec.n_shards} shards: {pattern}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
