"""Bad requests end with one line on stderr and exit code 2, in every command.

The line is ``PROG: error: ...`` (what argparse prints for a bad option) when a command passes its
name to :func:`usage_errors`; ``error: ...`` otherwise. docs/reliability.md lists the cases.

A wrong path, an unknown reward or a missing weights file is the user's to fix, so it deserves a
sentence naming the problem, not a traceback. Hydra wraps whatever a ``_target_`` raises in an
``InstantiationException`` whose message repeats the config; :func:`usage_error` looks through that
wrapping for the error that says what is wrong. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import (
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from lightning.fabric.utilities.exceptions import MisconfigurationException

from miro.checks import InputError
from miro.config import CONF_DIR
from miro.data.bins import BinsFileError
from miro.data.prompt_file import PromptFileError
from miro.data.shard_stage import StageConfigError
from miro.data.shards import ShardInputError
from miro.eval.benchmark import BenchmarkError
from miro.models.vae import MissingVAEError
from miro.pipeline import RewardSpecError
from miro.pretrained import CheckpointError
from miro.rewards.base import UnknownRewardError
from miro.rewards.weights import MissingWeightsError

USAGE_ERRORS: tuple[type[BaseException], ...] = (
    ShardInputError, UnknownRewardError, StageConfigError, FileNotFoundError, MissingWeightsError,
    MissingVAEError, CheckpointError, RewardSpecError, PromptFileError, InputError, MisconfigurationException,
)
USAGE_ERRORS += (BinsFileError, BenchmarkError)  # a tampered or damaged bins.json (data stages, training)
USAGE_EXIT_CODE = 2


def usage_error(err: BaseException) -> BaseException | None:
    """The user-facing error behind ``err`` (itself, or the cause Hydra's instantiation wrapped)."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err if isinstance(err, USAGE_ERRORS) else None


def hydra_one_line(err: HydraException) -> str:
    """Hydra's multi-line report of a bad override or config name, as one line with the options."""
    missing = getattr(err, "missing_cfg_file", None)
    if isinstance(err, MissingConfigException) and missing:
        group, _, name = str(missing).rpartition("/")
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if group else []
        if group == "rewards":
            return f"unknown reward {name!r}; reward configs in {CONF_DIR / group}: {', '.join(options)}"
        listed = f"; options: {', '.join(options)}" if options else ""
        return f"no config {missing!r} in {CONF_DIR}{listed}"
    line = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    if isinstance(err, OverrideParseException):
        line += " (quote values with braces, brackets or spaces: input=\"'data/{00000..00009}.tar'\")"
    return line


@contextmanager
def usage_errors(prog: str | None = None) -> Iterator[None]:
    """Turn a bad request into ``PROG: error: ...`` (without ``prog``: ``error: ...``) on stderr and exit
    code 2: the line argparse prints for a bad option, so every command reads the same."""
    prefix = f"{prog}: error: " if prog else "error: "
    try:
        yield
    except Exception as err:
        cause = usage_error(err)
        if cause is not None:
            print(f"{prefix}{cause}", file=sys.stderr)
        elif isinstance(err, HydraException):
            print(f"{prefix}{hydra_one_line(err)}", file=sys.stderr)
        else:
            raise
        sys.exit(USAGE_EXIT_CODE)
