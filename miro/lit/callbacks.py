"""Training callbacks: throughput in the progress bar, sample grids, and the safetensors exports."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from miro.pipeline import generate_request, image_grid, resolve_request, trained_levels
from miro.pretrained import periodic_export, save_pretrained

log = logging.getLogger(__name__)


class ImagesPerSecond(L.Callback):
    """Shows images/s in the progress bar and logs progress in images seen (kimg, as edm2 counts it)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self.images_seen = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = len(batch["caption"]) * trainer.world_size
        self.images_seen = trainer.global_step * n
        if self._last is not None:
            dt = max(time.perf_counter() - self._last, 1e-9)
            pl_module.log("train/img_s", n / dt, prog_bar=True, on_step=True, batch_size=n)
        pl_module.log("train/kimg", self.images_seen / 1000.0, on_step=True, batch_size=n)


class SampleGrid(L.Callback):
    """Every ``every_n_steps``, sample fixed prompts with fixed seeds at high and at low reward targets
    (EMA weights) and log the grid to TensorBoard and as a PNG: the quickest way to see whether a run
    learns, and whether the reward conditioning does anything.

    The grid samples as the exported model will: ``sampling`` is the export's sampling defaults (the
    config's ``sampling``: negative branch and caption, guidance interval and ramp, shift), the targets
    snap to the levels of the run's bins, and the images come from the pipeline's own code
    (:func:`miro.pipeline.resolve_request`, :func:`miro.pipeline.generate_request`). ``steps`` and
    ``guidance`` override the defaults (None: the sampling's)."""

    def __init__(
        self,
        prompts: list[str],
        every_n_steps: int = 500,
        sampling: Mapping[str, Any] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        high: float = 10.0,
        low: float = 0.0,
        seed: int = 0,
        out_dir: str | None = None,
        upscale: int = 4,
    ) -> None:
        self.upscale = upscale  # nearest-neighbour, so tiny images are visible in TensorBoard
        self._last_step: int | None = None
        self.prompts = list(prompts)
        self.sampling = _plain(sampling)
        self.every_n_steps = every_n_steps
        self.steps, self.guidance, self.high, self.low, self.seed = steps, guidance, high, low, seed
        self.out_dir = Path(out_dir) if out_dir else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A bad sampling setting fails before training, not at the first grid hundreds of steps in.
        self.requests(pl_module.reward_names, {})

    def requests(self, names: list[str], levels: Mapping[str, int]) -> list[dict[str, Any]]:
        """The resolved request of each row: every reward at the high target, then at the low one."""
        if not names:
            return [resolve_request(names, self.sampling, levels, guidance=self.guidance, steps=self.steps)]
        return [
            resolve_request(names, self.sampling, levels, dict.fromkeys(names, target),
                            guidance=self.guidance, steps=self.steps)
            for target in (self.high, self.low)
        ]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end at one optimiser step: one grid per step.
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:  # the final step's grid may already exist
            self.log_grid(trainer, pl_module)

    @rank_zero_only
    @torch.no_grad()
    def log_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        grid = image_grid(torch.cat(self.sample_rows(trainer, pl_module)), ncol=len(self.prompts),
                          upscale=self.upscale)
        step = trainer.global_step
        self._last_step = step
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("samples/high_then_low_targets", grid, step)
        if self.out_dir is not None:
            from PIL import Image

            self.out_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(self.out_dir / f"step_{step:07d}.png")

    def sample_rows(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[torch.Tensor]:
        """One row of images (uint8 [P, 3, H, W]) per target level, high first: every reward at that
        target, resolved and sampled as MiroPipeline does for the export of this step."""
        names = list(pl_module.reward_names)
        levels = trained_levels(getattr(trainer.datamodule, "bins", None), names)
        rows = []
        for used in self.requests(names, levels):
            rows.append(generate_request(
                pl_module.ema_model, lambda c: pl_module.encode_text(c, ema=True), self.prompts,
                trainer.datamodule.image_size, names, used, seed=self.seed, vae=pl_module.vae,
                device=pl_module.device,
            ))
        return rows


class ExportPretrained(L.Callback):
    """At the end of training, write the EMA weights as safetensors plus config.json (miro.pretrained).

    With ``every_n_steps > 0`` the same export is also written every that many optimiser steps, to
    ``<periodic_dir>/step{N:07d}`` (default: ``exports/`` next to ``out_dir``): convergence can then be
    measured at several training lengths from one run, on exactly the weights a user would sample.
    """

    def __init__(
        self,
        out_dir: str,
        text_encoder: DictConfig | dict,
        vae: DictConfig | dict | None = None,
        sampling: DictConfig | dict | None = None,
        every_n_steps: int = 0,
        periodic_dir: str | None = None,
        benchmark: str | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0 = only the final export), got {every_n_steps}")
        self.out_dir = out_dir
        self.text_encoder_config = _plain(text_encoder)
        self.vae_config = _plain(vae) if vae else None
        self.sampling = _plain(sampling) if sampling else {}
        self.every_n_steps = every_n_steps
        self.periodic_dir = Path(periodic_dir) if periodic_dir else Path(out_dir).parent / "exports"
        # The name of the benchmark miro-eval uses for this model by default (conf/benchmark/NAME.yaml).
        self.benchmark = benchmark
        self._last_periodic: int | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        due = self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
        # With gradient accumulation several batches end at the same optimiser step: export once.
        if due and step != self._last_periodic:
            self._last_periodic = step
            self.export(trainer, pl_module, periodic_export(self.periodic_dir, step))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module, Path(self.out_dir))

    @rank_zero_only
    def export(self, trainer: L.Trainer, pl_module: L.LightningModule, out_dir: Path) -> Path:
        dm = trainer.datamodule
        text_encoder = (
            pl_module.ema_text_encoder if pl_module.ema_text_encoder is not None else pl_module.text_encoder
        )
        text_config = text_encoder.export_config(self.text_encoder_config)
        path = save_pretrained(
            out_dir,
            pl_module.ema_model,
            text_encoder,
            text_config,
            pl_module.reward_names,
            getattr(dm, "bins", None),
            dm.image_size,
            self.sampling,
            vae_config=self.vae_config,
            extra={"training": {"global_step": trainer.global_step},
                   **({"benchmark": self.benchmark} if self.benchmark else {})},
        )
        log.info("exported EMA weights to %s", path)
        return path


def _plain(cfg: DictConfig | Mapping | None) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
