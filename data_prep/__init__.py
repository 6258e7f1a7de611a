"""Pipeline stages that read and write shards, as ``python -m data_prep.STAGE key=value ...``.

Each stage composes its config from ``conf/`` with Hydra's override grammar and config groups, calls
one library function and prints where the results went. It uses Hydra's compose API rather than
``@hydra.main``: a data stage needs no run directory, and composing here lets every mistake in the
request (unknown reward, missing shard, bad override, required option left out) end with one line on
stderr and exit code 2 instead of a traceback or Hydra's multi-line report.
``--cfg`` prints the composed config and exits.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.logging import RichHandler

from miro.config import CONF_DIR, compose_config
from miro.data.shards import ShardInputError
from miro.rewards.base import UnknownRewardError
from miro.rewards.weights import MissingWeightsError
from miro.scoring import ScoringConfigError

USAGE_ERRORS = (
    ShardInputError, UnknownRewardError, ScoringConfigError, FileNotFoundError, MissingWeightsError,
)
USAGE_EXIT_CODE = 2
# Progress bars and log lines share one console on stderr; stdout carries only the final summary.
CONSOLE = Console(stderr=True)


def _one_line(err: HydraException) -> str:
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
def usage_errors() -> Iterator[None]:
    """Turn a bad request into ``error: ...`` on stderr and exit code 2."""
    try:
        yield
    except HydraException as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)
    except USAGE_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)


def require(cfg: DictConfig, *keys: str) -> None:
    """Fail with one line naming every required option left at ``???``."""
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ScoringConfigError(f"missing required option(s): {' '.join(f'{k}=...' for k in missing)}")


def run_stage(
    config_name: str, body: Callable[[DictConfig], None], argv: Sequence[str] | None = None
) -> None:
    """Compose ``conf/CONFIG_NAME.yaml`` with the command line's overrides and run ``body`` on it."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=CONSOLE, show_path=False)]
    )
    with usage_errors():
        cfg = compose_config(config_name, [a for a in args if a != "--cfg"])
        if "--cfg" in args:
            print(OmegaConf.to_yaml(cfg), end="")
            return
        body(cfg)
