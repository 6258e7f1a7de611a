"""Where the Hydra configs live, and composing one outside ``@hydra.main``.

The data stages, the benchmarks and the tests all compose ``conf/<name>.yaml`` with command-line style
overrides; this is the one place that knows where ``conf/`` is (next to the package in a source
checkout, which is how MIRO is installed: ``pip install -e .``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` (Hydra's override grammar)."""
    GlobalHydra.instance().clear()  # a previous compose (or @hydra.main) may still hold the singleton
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))
