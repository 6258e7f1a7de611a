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
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from miro.config import compose_config
from miro.data.image_limits import ImageLimits
from miro.data.shard_stage import StageConfigError
from miro.usage import usage_errors

# Progress bars and log lines share one console on stderr; stdout carries only the final summary.
CONSOLE = Console(stderr=True)


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} samples/s" if task.speed else "- samples/s")


@contextmanager
def shard_progress(label: str, enabled: bool) -> Iterator[dict[str, Callable[..., Any]]]:
    """The ``on_samples`` / ``on_shard`` callbacks of a shard stage, driving one progress bar (samples
    done, rate, current shard); no callbacks when ``enabled`` is false (other ranks, progress=false)."""
    if not enabled:
        yield {}
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f} samples"),
               _Rate(), TimeElapsedColumn())
    with Progress(*columns, console=CONSOLE) as bar:
        task = bar.add_task(label, total=None)
        yield {
            "on_samples": lambda n: bar.advance(task, n),
            "on_shard": lambda i, total, name: bar.update(task, description=f"shard {i + 1}/{total} {name}"),
        }


def require(cfg: DictConfig, *keys: str) -> None:
    """Fail with one line naming every required option left at ``???``."""
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise StageConfigError(f"missing required option(s): {' '.join(f'{k}=...' for k in missing)}")


def int_option(cfg: DictConfig, key: str, low: int = 1, high: int | None = None, nullable: bool = False
               ) -> int | None:
    """An integer option in [low, high], or one line naming it (``n_bins=abc``, ``n_bins=1e9``)."""
    value = OmegaConf.select(cfg, key)
    if value is None and nullable:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StageConfigError(f"{key} must be an integer{' or null' if nullable else ''}, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise StageConfigError(f"{key} must be {bound}, got {value}")
    return value


def image_limits_option(cfg: DictConfig) -> ImageLimits:
    """``image_limits`` of a stage config, or one line naming the bad key."""
    raw = cfg.get("image_limits")
    try:
        return ImageLimits.from_config(OmegaConf.to_container(raw) if raw is not None else None)
    except ValueError as err:
        raise StageConfigError(str(err)) from None


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
