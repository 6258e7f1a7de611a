"""Keep ``threads=auto`` fitting the machine while a training or GRPO run goes on.

The thread count chosen at start-up (:func:`miro.utils.hardware.apply_threads`) is right only as long as
the load stays what it was: a job that starts on an idle 2-core box with two threads and is then joined
by another stalls in OpenMP barriers (measured: 2.7 s a step instead of about 0.15 s). This callback polls
:func:`miro.utils.hardware.keep_threads_fitting` before every optimiser step, on the thread that runs the
step; it does nothing when threads were asked for (a number, or OMP_NUM_THREADS). At the end of the run
it adds the changes to the run's compute record (compute.json), which holds the start-up choice, so a
step time read from the run can be matched with the threads it ran on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L

from miro.data.shards import write_bytes_atomic
from miro.utils.hardware import keep_threads_fitting, thread_changes


class KeepThreadsFitting(L.Callback):
    def __init__(self, compute_record: str | Path | None = None) -> None:
        self.compute_record = Path(compute_record) if compute_record is not None else None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        keep_threads_fitting()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.record(trainer)  # a stopped run's step times were measured on these threads too

    def record(self, trainer: L.Trainer) -> None:
        """``thread_changes`` in compute.json (written atomically), when threads changed during the run."""
        changes = thread_changes()
        path = self.compute_record
        if not changes or path is None or not path.is_file() or not trainer.is_global_zero:
            return
        record = json.loads(path.read_text(encoding="utf-8"))
        record["thread_changes"] = changes
        write_bytes_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
