"""Keep ``threads=auto`` fitting the machine while a training or GRPO run goes on.

The thread count chosen at start-up (:func:`miro.utils.hardware.apply_threads`) is right only as long as
the load stays what it was: a job that starts on an idle 2-core box with two threads and is then joined
by another stalls in OpenMP barriers (measured: 2.7 s a step instead of about 0.15 s). This callback polls
:func:`miro.utils.hardware.keep_threads_fitting` before every optimiser step, on the thread that runs the
step; it does nothing when threads were asked for (a number, or OMP_NUM_THREADS).
"""

from __future__ import annotations

from typing import Any

import lightning as L

from miro.utils.hardware import keep_threads_fitting


class KeepThreadsFitting(L.Callback):
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        keep_threads_fitting()
