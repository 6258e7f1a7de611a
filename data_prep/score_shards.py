"""Score shards with rewards: ``python -m data_prep.score_shards input=... output=... rewards=[a,b]``.

Config: ``conf/score.yaml`` (rewards: the group ``conf/rewards``). The work happens in
:mod:`miro.scoring`.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig

from data_prep import require, run_stage, shard_progress
from miro.data.shard_stage import device_for_rank, dist_rank_world
from miro.rewards.base import RewardModel
from miro.scoring import ScoringSummary, build_rewards, reward_specs, score_shards


def _score(cfg: DictConfig, rewards: Mapping[str, RewardModel], rank: int, world: int) -> ScoringSummary:
    kwargs = dict(
        inputs=cfg.input, output_dir=cfg.output, rewards=rewards, batch_size=int(cfg.batch_size),
        report_dir=cfg.report_dir, recompute=bool(cfg.recompute), rank=rank, world_size=world,
    )
    with shard_progress("scoring", bool(cfg.progress) and rank == 0) as callbacks:
        return score_shards(**kwargs, **callbacks)


def stage(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    rank, world = dist_rank_world()
    rewards = build_rewards(reward_specs(cfg.get("rewards") or {}), device_for_rank(cfg.device))
    summary = _score(cfg, rewards, rank, world)
    who = f"rank {rank}/{world}: " if world > 1 else ""
    print(
        f"{who}scored {summary.n_scored} samples, skipped {summary.n_skipped}, with {', '.join(rewards)} "
        f"({len(summary.reports)} shards, {summary.n_resumed} already done) -> {summary.output_dir} "
        f"(reports: {summary.report_dir})"
    )


def main() -> None:
    run_stage("score", stage)


if __name__ == "__main__":
    main()
