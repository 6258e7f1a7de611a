"""GRPO fine-tuning of an exported MIRO model: ``python -m miro.rl +experiment=rl_shapes_chunk``.

Only wiring: build the pieces the config names, call ``fit``, export, say where everything went.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from miro.config import (
    CONF_DIR,
    instantiate_group,
    prepare_run_dir,
    quiet_eval_mode_warning,
    resolve_compute,
    write_compute_record,
)
from miro.rl.module import updates_per_iteration
from miro.usage import usage_errors

quiet_eval_mode_warning()
# GRPO checkpoints are meant to hold the weights after the iteration's updates.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Module, prompt data and a trainer that stops after ``cfg.iterations`` GRPO iterations."""
    L.seed_everything(cfg.seed, workers=True)
    write_compute_record(cfg, resolve_compute(cfg))
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    updates = updates_per_iteration(
        cfg.data.prompts_per_iteration,
        cfg.module.group_size,
        cfg.module.train_batch_size,
        cfg.module.inner_epochs,
    )
    if cfg.get("callbacks") and cfg.callbacks.get("checkpoint"):
        # The trainer counts optimiser updates; the config counts iterations.
        with open_dict(cfg):
            cfg.callbacks.checkpoint.every_n_train_steps = updates * int(cfg.checkpoint_every)
    callbacks = instantiate_group(cfg, "callbacks")
    loggers = instantiate_group(cfg, "logger")
    # The trainer's steps (checkpoints, logs, the stopping rule) count optimiser updates; an "epoch" of
    # `iterations` prompt batches makes the progress bar count iterations.
    iterations = int(cfg.iterations)
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        max_steps=updates * iterations,
        max_epochs=-1,
        limit_train_batches=iterations,
    )
    return module, datamodule, trainer


def run(cfg: DictConfig) -> Path | None:
    """Fine-tune as ``cfg`` says and export; returns the export (None on ranks other than 0)."""
    out = prepare_run_dir(cfg)
    module, datamodule, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if not trainer.is_global_zero:
        return None
    return module.export(out / "export", extra={"source": str(cfg.pretrained)})


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="rl")
def main(cfg: DictConfig) -> None:
    with usage_errors():  # a missing export or prompt file: one line, exit code 2
        export = run(cfg)
    if export is None:
        return
    out = Path(cfg.paths.output_dir)
    print(f"Run directory:     {out}   (config.yaml: the composed config)")
    print(f"Checkpoints:       {out / 'checkpoints'}   (resume with ckpt_path=<dir>/last.ckpt)")
    if (out / "rollouts").exists():
        print(f"Rollout grids:     {out / 'rollouts'}   (one row per prompt, its group of samples)")
    print(f"Exported model:    {export}   (miro-eval --checkpoint {export} --out ...)")


if __name__ == "__main__":
    main()
