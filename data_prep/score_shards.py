"""Score shards with rewards: ``python -m data_prep.score_shards input=... output=... rewards=[a,b]``.

Config: ``conf/score.yaml`` (rewards: the group ``conf/rewards``). The work happens in
:mod:`miro.scoring`.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig

from data_prep import image_limits_option, int_option, require, run_stage, shard_progress
from miro.data.shard_stage import device_for_rank, dist_rank_world
from miro.rewards.base import RewardModel
from miro.scoring import (
    RewardFailurePolicy,
    ScoringConfigError,
    ScoringSummary,
    build_rewards,
    reward_specs,
    score_shards,
)

MAX_BATCH_SIZE = 1 << 16  # samples held decoded at once: a larger request is a typo, not a plan


def failure_policy(cfg: DictConfig) -> RewardFailurePolicy:
    """``reward_failures`` of conf/score.yaml, or one line naming the bad value."""
    raw = cfg.get("reward_failures") or {}
    try:
        fraction = float(raw.get("max_fraction", RewardFailurePolicy.max_fraction))
    except (TypeError, ValueError):
        got = raw.get("max_fraction")
        raise ScoringConfigError(f"reward_failures.max_fraction must be a number, got {got!r}") from None
    min_samples = int_option(cfg, "reward_failures.min_samples") if "min_samples" in raw else 16
    return RewardFailurePolicy(max_fraction=fraction, min_samples=min_samples)


def _options(cfg: DictConfig) -> dict:
    """The validated options of the request, before any reward model is loaded."""
    return dict(
        batch_size=int_option(cfg, "batch_size", 1, MAX_BATCH_SIZE),
        limits=image_limits_option(cfg),
        decode_size=int_option(cfg, "decode_size", 1, 1 << 16, nullable=True),
        failures=failure_policy(cfg),
    )


def _score(cfg: DictConfig, rewards: Mapping[str, RewardModel], rank: int, world: int, options: dict
           ) -> ScoringSummary:
    kwargs = dict(
        inputs=cfg.input, output_dir=cfg.output, rewards=rewards, report_dir=cfg.report_dir,
        recompute=bool(cfg.recompute), rank=rank, world_size=world, **options,
    )
    with shard_progress("scoring", bool(cfg.progress) and rank == 0) as callbacks:
        return score_shards(**kwargs, **callbacks)


def stage(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    options = _options(cfg)
    rank, world = dist_rank_world()
    rewards = build_rewards(reward_specs(cfg.get("rewards") or {}), device_for_rank(cfg.device))
    summary = _score(cfg, rewards, rank, world, options)
    who = f"rank {rank}/{world}: " if world > 1 else ""
    truncated = f", {len(summary.truncated)} truncated" if summary.truncated else ""
    print(
        f"{who}scored {summary.n_scored} samples, skipped {summary.n_skipped}, with "
        f"{', '.join(summary.rewards_held) or 'no reward'} ({len(summary.reports)} shards, "
        f"{summary.n_resumed} already done{truncated}) -> {summary.output_dir} "
        f"(reports: {summary.report_dir})"
    )
    summary.raise_if_truncated()


def main() -> None:
    run_stage("score", stage)


if __name__ == "__main__":
    main()
