"""Shared fixtures: a small scored shapes data set with fitted bins, built once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from miro.cli.rewards import MIRO_SEVEN
from miro.data.bins import fit_from_shards
from miro.data.shards import atomic_shard_writer, iter_shard
from miro.scoring import build_rewards, encode_rewards, reward_specs, score_shards
from miro.shapes.scenes import write_shapes_shards

# The test models are tiny: one thread is as fast as two, and immune to the stalls of OpenMP threads
# that wait for each other on a busy machine (measured 70x slower training steps under load).
torch.set_num_threads(1)
OFFLINE_REWARDS = ["alignment", "sharpness", "colorfulness", "compressibility"]


@pytest.fixture(autouse=True)
def _threads_stay_put() -> object:
    """Each test starts and ends with one torch thread and no running ThreadGovernor: a test that resolves
    ``threads=auto`` (a command run in-process) must not leave a governor behind that changes the thread
    count in the middle of a later test (it did: an evaluation recorded 2 threads and ran on 1)."""
    from miro.utils import hardware

    hardware._governor = None
    yield
    hardware._governor = None
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def scored_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 shapes samples at 24 px in 2 shards, scored with the offline rewards, bins fitted (8 bins).

    Layout as the demo's: ``<dir>/shards``, ``<dir>/scored``, ``<dir>/bins.json``.
    """
    root = tmp_path_factory.mktemp("scored_shapes")
    write_shapes_shards(root / "shards", n=96, size=24, seed=3, per_shard=48, max_objects=2)
    rewards = build_rewards(reward_specs(OFFLINE_REWARDS))
    score_shards(str(root / "shards"), root / "scored", rewards, batch_size=64)
    fit_from_shards(str(root / "scored"), n_bins=8).save(root / "bins.json")
    return root


@pytest.fixture(scope="session")
def seven_reward_shards(tmp_path_factory: pytest.TempPathFactory, scored_shapes: Path) -> Path:
    """The same images annotated with made-up scores for the seven MIRO reward names (a stand-in for
    CC12M scored by the real models, which cannot run here), plus their bins."""
    root = tmp_path_factory.mktemp("seven_rewards")
    rng = np.random.default_rng(0)
    for shard in sorted((scored_shapes / "shards").glob("*.tar")):
        with atomic_shard_writer(root / "scored" / shard.name) as writer:
            for sample in iter_shard(shard):
                scores = {name: float(rng.normal()) for name in MIRO_SEVEN}
                sample["rewards.json"] = encode_rewards(scores, dict.fromkeys(MIRO_SEVEN, "test"))
                writer.write(sample)
    fit_from_shards(str(root / "scored"), n_bins=8).save(root / "bins.json")
    return root
