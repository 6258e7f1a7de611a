"""Reward models: one interface (:class:`RewardModel`), a registry, offline scorers and the MIRO seven."""

from miro.rewards.base import RewardModel, available_rewards, build_reward, register_reward, resolve_name

__all__ = ["RewardModel", "available_rewards", "build_reward", "register_reward", "resolve_name"]
