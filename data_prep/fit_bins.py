"""Fit reward bins: ``python -m data_prep.fit_bins input=SCORED_SHARDS out=bins.json``.

Config: ``conf/fit_bins.yaml``. The work happens in :func:`miro.data.bins.fit_from_shards`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from data_prep import int_option, require, run_stage
from miro.data.bins import MAX_N_BINS, fit_from_shards
from miro.data.shard_stage import StageConfigError


def stage(cfg: DictConfig) -> None:
    require(cfg, "input", "out")
    n_bins = int_option(cfg, "n_bins", 1, MAX_N_BINS)  # everything checked before any shard is read
    max_samples = int_option(cfg, "max_samples", 1, nullable=True)
    seed = int_option(cfg, "seed", 0)
    out = Path(str(cfg.out))
    if out.is_dir():
        raise StageConfigError(f"out={out} is a directory; name the bins file, e.g. out={out / 'bins.json'}")
    names = cfg.reward_names
    if names is not None:
        names = [str(n) for n in names] if isinstance(names, ListConfig) else [str(names)]
    bins = fit_from_shards(cfg.input, n_bins, max_samples, seed, names)
    bins.save(cfg.out)
    levels = ", ".join(f"{name} {bins.n_levels(name)}" for name in bins.names)
    print(f"fitted bins on {bins.n_records} records from {len(bins.shards)} shards -> {cfg.out}")
    print(f"levels per reward: {levels}")


def main() -> None:
    run_stage("fit_bins", stage)


if __name__ == "__main__":
    main()
