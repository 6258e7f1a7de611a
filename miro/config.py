"""Where the Hydra configs live, and composing one outside ``@hydra.main``.

The data stages, the benchmarks and the tests all compose ``conf/<name>.yaml`` with command-line style
overrides; this is the one place that knows where ``conf/`` is: the top-level ``conf/`` of a source
checkout (``make setup`` installs it editable, so edits take effect at once), else the copy a wheel
carries as ``miro/conf`` (``pip install .``; pyproject.toml lists its groups as packages).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from miro.utils.hardware import ThreadsChoice, apply_threads


def find_conf_dir(package_dir: Path) -> Path:
    """The checkout's ``conf/`` beside ``package_dir`` when there is one, else the installed copy."""
    checkout, installed = package_dir.parent / "conf", package_dir / "conf"
    return checkout if (checkout / "train.yaml").is_file() or not installed.is_dir() else installed


CONF_DIR = find_conf_dir(Path(__file__).resolve().parent)


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` (Hydra's override grammar)."""
    GlobalHydra.instance().clear()  # a previous compose (or @hydra.main) may still hold the singleton
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _trainer_device(trainer: DictConfig | None) -> str:
    """The torch device type a trainer config computes on (Lightning's accelerator names)."""
    accelerator = str((trainer or {}).get("accelerator", "cpu"))
    if accelerator == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator in ("gpu", "cuda") else accelerator


def resolve_compute(cfg: DictConfig) -> dict:
    """Pin the threads and turn every ``precision: auto`` into what runs on this machine, in place:
    ``trainer.precision`` becomes bf16-mixed where the accelerator computes bf16 natively, else 32-true;
    GRPO's ``module.precision`` (its rollouts' autocast) becomes bf16 or fp32 the same way. Prints the
    choice and returns the record the run stores (compute.json). Training and GRPO call it first."""
    from miro.utils.hardware import compute_record, describe, resolve_precision

    threads = set_threads(cfg.get("threads"))
    device = _trainer_device(cfg.get("trainer"))
    choices = {}
    with open_dict(cfg):
        for group, spelled in (("trainer", "lightning"), ("module", "name")):
            node = cfg.get(group)
            if node is None or node.get("precision") is None:
                continue
            choice = resolve_precision(str(node.precision), device)
            if str(node.precision) == "auto":
                node.precision = getattr(choice, spelled)
            choices[group] = choice
    shown = choices.get("module") or choices.get("trainer")  # GRPO's network runs under the module's
    print(f"{cfg.get('task_name', 'run')}: {describe(shown, threads)}")
    record = compute_record(shown, threads)
    record["precision_by_group"] = {group: c.name for group, c in choices.items()}
    return record


def write_compute_record(cfg: DictConfig, record: dict) -> Path:
    """``<output_dir>/compute.json``: the CPU, precision and threads this run computed with, and why."""
    import json

    from miro.data.shards import write_bytes_atomic

    path = Path(cfg.paths.output_dir) / "compute.json"
    write_bytes_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
    return path


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create ``cfg.paths.output_dir`` and save the fully resolved config there as config.yaml, so every
    run can be reproduced from its own directory."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return out


def instantiate_group(cfg: DictConfig, group: str) -> list:
    """Every entry of a config group (callbacks, loggers), skipping nulls; an entry left without a
    ``_target_`` by an experiment is named in the error."""
    out = []
    for name, node in (cfg.get(group) or {}).items():
        if node is None:
            continue
        if "_target_" not in node:
            raise ValueError(
                f"{group}.{name} has no _target_: an experiment sets options of a {group} entry that the "
                f"selected {group} config does not define (drop it with ~{group}.{name})"
            )
        out.append(instantiate(node))
    return out


def set_threads(threads: int | str | None) -> ThreadsChoice:
    """Pin torch's intra-op threads: a number, or ``auto``/None (one per core that other processes are not
    using at start-up, or OMP_NUM_THREADS). Returns the choice and its reason, to print and record.

    On a small shared machine torch's OpenMP pool spins on every core; when another process also runs,
    each step can stall 3-70x (measured on the 2-core reference box), so auto leaves busy cores out.
    """
    return apply_threads(threads)


def quiet_eval_mode_warning() -> None:
    """Silence Lightning's "modules in eval mode" warning: the EMA copy, the frozen text encoder and
    GRPO's reference are in eval mode on purpose, so the warning would only teach users to ignore it."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
