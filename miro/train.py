"""Train a reward-conditioned flow model: ``python -m miro.train +experiment=shapes``.

Only wiring: build the pieces the config names, call ``fit``, say where everything went.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("miro.train")


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Instantiate module, data and trainer from a composed config (tests call this directly)."""
    L.seed_everything(cfg.seed, workers=True)
    reward_names = list(cfg.reward_names)
    datamodule = instantiate(cfg.data, reward_names=reward_names)
    text_encoder = instantiate(cfg.text_encoder)
    model = instantiate(cfg.model, text_dim=text_encoder.dim, reward_names=reward_names)
    vae = instantiate(cfg.vae) if cfg.get("vae") else None
    module = instantiate(cfg.module, model=model, text_encoder=text_encoder, vae=vae, reward_names=reward_names)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return module, datamodule, trainer


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    module, datamodule, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    print(f"Run directory:     {out}")
    print(f"Checkpoints:       {out / 'checkpoints'}")
    print(f"TensorBoard logs:  {out / 'tensorboard'}   (tensorboard --logdir {out / 'tensorboard'})")
    print(f"Exported model:    {out / 'export'}   (miro-generate --checkpoint {out / 'export'} ...)")


if __name__ == "__main__":
    main()
