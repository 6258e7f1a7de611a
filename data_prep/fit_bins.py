"""Fit reward bins: ``python -m data_prep.fit_bins input=SCORED_SHARDS out=bins.json``.

Config: ``conf/fit_bins.yaml``. The work happens in :func:`miro.data.bins.fit_from_shards`.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from data_prep import require, run_stage
from miro.data.bins import fit_from_shards


def stage(cfg: DictConfig) -> None:
    require(cfg, "input", "out")
    names = cfg.reward_names
    if names is not None:
        names = [str(n) for n in names] if isinstance(names, ListConfig) else [str(names)]
    max_samples = int(cfg.max_samples) if cfg.max_samples is not None else None
    bins = fit_from_shards(cfg.input, int(cfg.n_bins), max_samples, int(cfg.seed), names)
    bins.save(cfg.out)
    levels = ", ".join(f"{name} {bins.n_levels(name)}" for name in bins.names)
    print(f"fitted bins on {bins.n_records} records from {len(bins.shards)} shards -> {cfg.out}")
    print(f"levels per reward: {levels}")


def main() -> None:
    run_stage("fit_bins", stage)


if __name__ == "__main__":
    main()
