"""``miro-export``: share an exported model.

``miro-export push PATH REPO_ID [--revision BRANCH] [--private]`` uploads the export (model.safetensors,
config.json and its model card README.md) to the Hugging Face Hub; log in first (``hf auth login``) or
set ``HF_TOKEN``. ``miro-export card PATH`` (re)writes the model card of an export, e.g. one written
before exports carried cards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from miro.hub import split_hub_id
from miro.model_card import CARD, write_model_card
from miro.pretrained import CONFIG, FORMAT, WEIGHTS, CheckpointError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miro-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="upload an export to the Hugging Face Hub")
    push.add_argument("path", type=Path, help="the model directory (<run dir>/export)")
    push.add_argument("repo_id", help="the Hub repository, owner/name (created when missing)")
    push.add_argument("--revision", default=None,
                      help="branch to upload to (created when missing; default main)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--message", default=None, help="the commit message")
    card = sub.add_parser("card", help="(re)write the model card README.md of an export")
    card.add_argument("path", type=Path, help="the model directory (<run dir>/export)")
    return p


def check_export(path: Path) -> dict:
    """The config of the MIRO export at ``path`` (a CheckpointError naming what is wrong otherwise);
    reads only config.json, so checking a large model costs nothing."""
    missing = [name for name in (CONFIG, WEIGHTS) if not (path / name).is_file()]
    if not path.is_dir() or missing:
        what = f"{' and '.join(missing)} missing" if path.is_dir() else "no such directory"
        raise CheckpointError(f"{path}: not a MIRO model directory ({what}; training exports one to "
                              "<run dir>/export)")
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG}: not a MIRO export config (expected format {FORMAT!r})")
    return config


def push_main(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    from miro.hub import push_export

    if split_hub_id(args.repo_id) is None or "@" in args.repo_id:
        raise CheckpointError(
            f"{args.repo_id}: not a Hub repo id (owner/name; the branch goes in --revision)"
        )
    config = check_export(args.path)
    if not (args.path / CARD).is_file():
        write_model_card(args.path, config)
    try:
        url = push_export(args.path, args.repo_id, revision=args.revision, private=args.private or None,
                          message=args.message)
    except (HfHubHTTPError, HFValidationError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{args.repo_id}: upload failed ({first})") from None
    print(f"Uploaded {args.path} to {args.repo_id}: {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "push":
            return push_main(args)
        config = check_export(args.path)
        print(f"Wrote {write_model_card(args.path, config)}")
        return 0
    except CheckpointError as err:
        print(f"miro-export: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
