"""Train a reward-conditioned flow model: ``python -m miro.train +experiment=shapes``.

Only wiring: build the pieces the config names, call ``fit``, say where everything went.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from miro.checks import InputError, check_accelerator, check_int, check_resume_checkpoint, check_threads
from miro.config import (
    CONF_DIR,
    instantiate_group,
    prepare_run_dir,
    quiet_eval_mode_warning,
    resolve_compute,
    write_compute_record,
)
from miro.lit.interrupt import CheckpointOnSigterm, fit_or_exit, fresh_run_dir
from miro.lit.module import NonFiniteTrainingError
from miro.lit.threads import KeepThreadsFitting
from miro.usage import USAGE_EXIT_CODE, usage_errors

log = logging.getLogger("miro.train")
quiet_eval_mode_warning()


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Instantiate module, data and trainer from a composed config (tests call this directly)."""
    L.seed_everything(cfg.seed, workers=True)
    write_compute_record(cfg, resolve_compute(cfg))
    reward_names = list(cfg.reward_names)
    datamodule = instantiate(cfg.data, reward_names=reward_names)
    text_encoder = instantiate(cfg.text_encoder)
    model = instantiate(cfg.model, text_dim=text_encoder.dim, reward_names=reward_names)
    vae = instantiate(cfg.vae) if cfg.get("vae") else None
    module = instantiate(
        cfg.module, model=model, text_encoder=text_encoder, vae=vae, reward_names=reward_names
    )
    # Always there, whatever the callbacks group says: a SIGTERM'd run must leave a resumable checkpoint.
    sigterm = CheckpointOnSigterm(Path(cfg.paths.output_dir) / "checkpoints")
    compute = Path(cfg.paths.output_dir) / "compute.json"
    callbacks = [*instantiate_group(cfg, "callbacks"), sigterm, KeepThreadsFitting(compute)]
    loggers = instantiate_group(cfg, "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return module, datamodule, trainer


def check_config(cfg: DictConfig) -> None:
    """What can be wrong with the composed config, checked before a directory is made or a model built."""
    check_threads(cfg.get("threads"))
    check_int(cfg.data.get("batch_size"), "data.batch_size")
    check_int(cfg.data.get("num_workers", 0), "data.num_workers", minimum=0)
    max_steps = cfg.trainer.get("max_steps", -1)
    if max_steps != -1:
        try:
            check_int(max_steps, "trainer.max_steps")
        except InputError:
            raise InputError(
                f"trainer.max_steps must be an integer >= 1 (or -1), got {max_steps!r}"
            ) from None
    check_accelerator(cfg.trainer)
    check_resume_checkpoint(cfg.get("ckpt_path"))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir)
    created = fresh_run_dir(out)
    try:
        with usage_errors("miro.train"):  # a missing data directory or bins file: one line, exit code 2
            check_config(cfg)
            out = prepare_run_dir(cfg)
            module, datamodule, trainer = build(cfg)
            try:
                fit_or_exit(trainer, module, datamodule, cfg.get("ckpt_path"), out, "python -m miro.train")
            except NonFiniteTrainingError as err:  # one line, not a traceback
                print(f"miro.train: error: {err}", file=sys.stderr)
                sys.exit(1)
    except SystemExit as stop:
        if stop.code == USAGE_EXIT_CODE and created:
            shutil.rmtree(out, ignore_errors=True)  # a run that never started leaves no directory
        raise
    if not trainer.is_global_zero:
        return
    print(f"Run directory:     {out}   (config.yaml: the composed config)")
    outputs = {
        "Checkpoints:": (out / "checkpoints", "resume with ckpt_path=<dir>/last.ckpt"),
        "TensorBoard logs:": (out / "tensorboard", f"tensorboard --logdir {out / 'tensorboard'}"),
        "Sample grids:": (out / "samples", "PNG per sampling step, high then low reward targets"),
        "Exported model:": (out / "export", f"miro-generate --checkpoint {out / 'export'} --prompt ..."),
    }
    for label, (path, hint) in outputs.items():
        if path.exists():
            print(f"{label:<18} {path}   ({hint})")


if __name__ == "__main__":
    main()
