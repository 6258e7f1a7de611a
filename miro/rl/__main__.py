"""GRPO fine-tuning of an exported MIRO model: ``python -m miro.rl +experiment=rl_shapes_chunk``.

Only wiring: build the pieces the config names, call ``fit``, export, say where everything went.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from miro.checks import (
    InputError,
    check_accelerator,
    check_guidance,
    check_int,
    check_resume_checkpoint,
    check_threads,
)
from miro.config import (
    CONF_DIR,
    instantiate_group,
    prepare_run_dir,
    quiet_eval_mode_warning,
    resolve_compute,
    write_compute_record,
)
from miro.eval.benchmark import instantiate_benchmark
from miro.lit.interrupt import CheckpointOnSigterm, fit_or_exit, fresh_run_dir
from miro.lit.threads import KeepThreadsFitting
from miro.pipeline import RewardSpecError, resolve_request
from miro.pretrained import read_config
from miro.rl.module import parse_reward_weights, updates_per_iteration
from miro.scoring import reward_specs
from miro.usage import USAGE_EXIT_CODE, usage_errors

quiet_eval_mode_warning()
# GRPO checkpoints are meant to hold the weights after the iteration's updates.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Module, prompt data and a trainer that stops after ``cfg.iterations`` GRPO iterations."""
    L.seed_everything(cfg.seed, workers=True)
    write_compute_record(cfg, resolve_compute(cfg))
    datamodule = instantiate(cfg.data, held_out=held_out_prompts(cfg))
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
    # Always there, whatever the callbacks group says: a SIGTERM'd run must leave a resumable checkpoint.
    sigterm = CheckpointOnSigterm(Path(cfg.paths.output_dir) / "checkpoints")
    compute = Path(cfg.paths.output_dir) / "compute.json"
    callbacks = [*instantiate_group(cfg, "callbacks"), sigterm, KeepThreadsFitting(compute)]
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


def held_out_prompts(cfg: DictConfig) -> list[str]:
    """The prompts GRPO must not train on: those of the benchmark the model is evaluated on (the config's
    ``benchmark``, the same conf/benchmark/ file miro-eval reads), when ``data.exclude_eval``."""
    if not cfg.data.get("exclude_eval", False):
        return []
    if cfg.get("benchmark") is None:
        raise InputError(
            "data.exclude_eval needs the benchmark the model is evaluated on, to keep its prompts out of "
            "training: benchmark=shapes (or geneval/rewards with benchmark.prompts=FILE), or "
            "data.exclude_eval=false"
        )
    return instantiate_benchmark(cfg.benchmark).prompts()


def check_config(cfg: DictConfig) -> None:
    """What can be wrong with the composed config, checked before the model is loaded or a rollout runs:
    the reward names (unknown ones used to surface only after the first rollouts), counts, the device,
    the checkpoint to resume from, and the rollouts' request (targets, negative branch, push) against the
    model's config.json, by the function the module and the pipeline resolve it with."""
    check_threads(cfg.get("threads"))
    for field in ("iterations", "checkpoint_every"):
        check_int(cfg.get(field), field)
    check_int(cfg.data.get("prompts_per_iteration"), "data.prompts_per_iteration")
    for field in ("group_size", "rollout_batch_size", "train_batch_size", "inner_epochs", "steps"):
        check_int(cfg.module.get(field), f"module.{field}")
    guidance = cfg.module.get("guidance")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, int | float)):
        raise InputError(f"module.guidance must be a number or null (the model's), got {guidance!r}")
    check_guidance(guidance, "module.guidance")
    try:
        weights = parse_reward_weights(cfg.module.rewards)
    except ValueError as err:
        raise InputError(f"module.rewards: {err}") from None
    names = list(weights) + list(cfg.module.get("monitor_rewards") or [])
    reward_specs(names)  # resolves every name or alias: an unknown one is named with the valid ones
    held_out_prompts(cfg)  # the benchmark (and its prompt file) before any model is loaded
    check_accelerator(cfg.trainer)
    check_resume_checkpoint(cfg.get("ckpt_path"))
    check_request(cfg)


def check_request(cfg: DictConfig) -> None:
    """``module.targets`` / ``negative_targets`` / ``push`` against the model's rewards and sampling
    defaults (config.json only: nothing is built), as :class:`~miro.rl.module.GRPOModule` resolves them."""
    config = read_config(str(cfg.pretrained))
    module = cfg.module
    try:
        resolve_request(
            [str(n) for n in config["reward_names"]], config.get("sampling") or {}, {},
            _plain(module.get("targets")), _plain(module.get("negative_targets")), module.get("push"),
            guidance=module.get("guidance"), steps=module.get("steps"), shift=module.get("shift"),
        )
    except RewardSpecError as err:
        raise InputError(f"module.targets/negative_targets/push: {err}") from None
    except (TypeError, ValueError) as err:
        raise InputError(f"module.shift or the model's sampling defaults ({cfg.pretrained}): {err}") from None


def _plain(value: object) -> object:
    """A config node as plain Python (a mapping of targets stays a mapping)."""
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value


def run(cfg: DictConfig) -> Path | None:
    """Check, fine-tune as ``cfg`` says and export; returns the export (None on ranks other than 0).
    A SIGTERM saves a resumable checkpoint and exits 143 (miro.lit.interrupt)."""
    check_config(cfg)
    out = prepare_run_dir(cfg)
    module, datamodule, trainer = build(cfg)
    fit_or_exit(trainer, module, datamodule, cfg.get("ckpt_path"), out, "python -m miro.rl")
    if not trainer.is_global_zero:
        return None
    return module.export(out / "export", extra={"source": str(cfg.pretrained)})


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="rl")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir)
    created = fresh_run_dir(out)
    try:
        with usage_errors("miro.rl"):  # a missing export or prompt file: one line, exit code 2
            export = run(cfg)
    except SystemExit as stop:
        if stop.code == USAGE_EXIT_CODE and created:
            shutil.rmtree(out, ignore_errors=True)  # a run that never started leaves no directory
        raise
    if export is None:
        return
    print(f"Run directory:     {out}   (config.yaml: the composed config)")
    print(f"Checkpoints:       {out / 'checkpoints'}   (resume with ckpt_path=<dir>/last.ckpt)")
    if (out / "rollouts").exists():
        print(f"Rollout grids:     {out / 'rollouts'}   (one row per prompt, its group of samples)")
    print(f"Exported model:    {export}   (miro-eval --checkpoint {export} --out ...)")


if __name__ == "__main__":
    main()
