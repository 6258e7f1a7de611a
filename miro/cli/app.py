"""``miro-app --checkpoint PATH_OR_HUB_ID``: the web app, a slider per reward (``pip install ".[app]"``).

It serves on http://127.0.0.1:7860 (``--port``; 0 = the first free port from 7860) and only on the
loopback address unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys

from miro.cli import threads_arg
from miro.config import set_threads
from miro.pipeline import PRECISIONS, MiroPipeline
from miro.pretrained import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miro-app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="model directory (<run>/export) or Hugging Face Hub repo id (owner/name[@revision])")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a repo id")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: the first free one from 7860)")
    p.add_argument("--max-images", type=int, default=8, help="most images one request may ask for")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16",
                   help="network precision while sampling (bf16: autocast, 2.5x faster on CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="torch CPU threads (default: one per core; 1 when other jobs share the machine)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from miro.app import AppModel, launch
    except ImportError as err:
        print(f"miro-app: the web app needs Gradio: pip install '.[app]' ({err})", file=sys.stderr)
        return 2
    if args.max_images < 1:
        print(f"miro-app: --max-images must be at least 1, got {args.max_images}", file=sys.stderr)
        return 2
    try:
        set_threads(args.threads)
        pipe = MiroPipeline.from_pretrained(
            args.checkpoint, args.device, args.precision, revision=args.revision
        )
    except CheckpointError as err:
        print(f"miro-app: {err}", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint if args.revision is None else f"{args.checkpoint}@{args.revision}"
    model = AppModel(pipe, checkpoint, max_images=args.max_images)
    print(f"miro-app: {model.name} ({len(pipe.reward_names)} rewards: {', '.join(pipe.reward_names)})")
    try:
        launch(model, args.host, args.port or None, block=True)
    except KeyboardInterrupt:
        pass
    finally:
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
