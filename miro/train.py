"""Train a reward-conditioned flow model: ``python -m miro.train +experiment=shapes``.

Only wiring: build the pieces the config names, call ``fit``, say where everything went.
"""

from __future__ import annotations

import logging
import sys

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from miro.config import (
    CONF_DIR,
    instantiate_group,
    prepare_run_dir,
    quiet_eval_mode_warning,
    resolve_compute,
    write_compute_record,
)
from miro.lit.module import NonFiniteTrainingError
from miro.usage import usage_errors

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
    callbacks = instantiate_group(cfg, "callbacks")
    loggers = instantiate_group(cfg, "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return module, datamodule, trainer


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    out = prepare_run_dir(cfg)
    with usage_errors():  # a missing data directory or bins file: one line, exit code 2
        module, datamodule, trainer = build(cfg)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except NonFiniteTrainingError as err:  # one line, not a traceback
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
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
