"""A run stopped by SIGTERM saves a resumable checkpoint, says how to resume, and exits non-zero.

Lightning turns SIGTERM into a ``SIGTERMException`` at the next step boundary, but that exception is a
``SystemExit`` with code 0 and nothing is saved: a terminated ``make demo`` then went on to sampling
from an export that was never written. :class:`CheckpointOnSigterm` writes ``<checkpoints>/last.ckpt``
from Lightning's ``on_exception`` hook (the step has completed, so the state is consistent: the same
state a periodic checkpoint holds), and :func:`fit_or_exit` turns the exception into exit code 143
(128 + SIGTERM) with the exact command that resumes, also left in ``<run dir>/INTERRUPTED`` so the run
directory says it is incomplete.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

INTERRUPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process the signal ended
MARKER = "INTERRUPTED"
CHECKPOINT = "last.ckpt"


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM, save ``last.ckpt`` in the checkpoint callback's directory (else ``default_dir``)."""

    def __init__(self, default_dir: str | Path) -> None:
        self.default_dir = Path(default_dir)
        self.saved: Path | None = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        directory = Path(getattr(trainer.checkpoint_callback, "dirpath", None) or self.default_dir)
        path, tmp = directory / CHECKPOINT, directory / f".{CHECKPOINT}.tmp"
        if trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, path)  # a second SIGTERM while writing leaves the previous last.ckpt whole
        self.saved = path


def fresh_run_dir(path: Path) -> bool:
    """Whether ``path`` holds nothing of an earlier run: absent, or only what Hydra writes before the
    job starts (``.hydra/`` and the job's log). Such a directory is removed when the run is refused."""
    if not path.exists():
        return True
    return path.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in path.iterdir())


def resume_command(program: str, overrides: Sequence[str], checkpoint: Path) -> str:
    """The command line that resumes: the same overrides with ``ckpt_path`` set to ``checkpoint``."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith("ckpt_path=")]
    return " ".join([program, *map(shlex.quote, kept), shlex.quote(f"ckpt_path={checkpoint}")])


def hydra_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job (none outside ``@hydra.main``)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def fit_or_exit(
    trainer: L.Trainer, module: L.LightningModule, datamodule: Any, ckpt_path: str | None, run_dir: Path,
    program: str,
) -> None:
    """``trainer.fit`` (checkpoints loaded with ``weights_only=True``: a checkpoint never runs code);
    on SIGTERM print how to resume and exit with :data:`INTERRUPTED_EXIT_CODE`."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        saved = next((cb.saved for cb in trainer.callbacks if isinstance(cb, CheckpointOnSigterm)), None)
        if trainer.is_global_zero:
            if saved is None:
                print(f"error: stopped by SIGTERM at step {trainer.global_step}; no checkpoint was saved",
                      file=sys.stderr)
            else:
                command = resume_command(program, hydra_overrides(), saved)
                (run_dir / MARKER).write_text(
                    f"stopped by SIGTERM at step {trainer.global_step}; resume with:\n{command}\n"
                )
                step = trainer.global_step
                print(f"stopped by SIGTERM at step {step}; checkpoint {saved}", file=sys.stderr)
                print(f"resume with: {command}", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    if trainer.is_global_zero:
        (run_dir / MARKER).unlink(missing_ok=True)  # a resumed run that finished is complete again
