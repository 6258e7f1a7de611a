"""``miro-rewards``: list the reward models and fetch their weights ahead of time.

    miro-rewards list                 every reward, its aliases, version and the files it needs
    miro-rewards download [NAME ...]  fetch the weights (default: all seven MIRO rewards)

Run ``download`` on a machine with internet; set MIRO_WEIGHTS_DIR (or --weights-dir) to put everything
in one folder that can be copied to an offline scoring machine.
"""

from __future__ import annotations

import argparse
import os
import sys

from miro.rewards.base import UnknownRewardError, available_rewards, registered_class, resolve_name
from miro.rewards.weights import WEIGHTS_DIR_ENV, MissingWeightsError

MIRO_SEVEN = ("aesthetic", "hps", "imagereward", "pick", "vqa", "clip", "sci")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="miro-rewards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights-dir", default=None, help=f"weights folder (sets {WEIGHTS_DIR_ENV})")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="rewards, aliases, versions and weight files")
    download = sub.add_parser("download", help="fetch weights now")
    download.add_argument("names", nargs="*", help=f"rewards or aliases (default: {' '.join(MIRO_SEVEN)})")
    download.add_argument("--vqa-size", choices=("xxl", "xl"), default="xxl", help="CLIP-FlanT5 size for vqa")
    return p


def _list() -> int:
    for name, aliases in available_rewards().items():
        cls = registered_class(name)
        alias = f" ({', '.join(aliases)})" if aliases else ""
        print(f"{name}{alias}  version {cls.version}")
        files = getattr(cls, "WEIGHTS", {})
        if not files:
            print("    no weights")
        for component, spec in files.items():
            print(f"    {component:<11} {spec.describe()}")
    return 0


def _download(names: list[str], vqa_size: str) -> int:
    try:
        canonical = [resolve_name(n) for n in names] if names else list(MIRO_SEVEN)
    except UnknownRewardError as err:
        print(f"miro-rewards: error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for name in dict.fromkeys(canonical):
        cls = registered_class(name)
        if not getattr(cls, "WEIGHTS", None):
            print(f"{name}: needs no weights")
            continue
        sources = cls.size_sources(vqa_size) if name == "vqa" else None
        try:
            paths = cls.download(sources)
        except MissingWeightsError as err:
            print(f"miro-rewards: error: {err}", file=sys.stderr)
            failed += 1
            continue
        for component, path in paths.items():
            print(f"{name}: {component} -> {path}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.weights_dir:
        os.environ[WEIGHTS_DIR_ENV] = args.weights_dir
    if args.command == "list":
        return _list()
    return _download(args.names, args.vqa_size)


if __name__ == "__main__":
    raise SystemExit(main())
