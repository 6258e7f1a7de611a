"""Quantile reward bins: edges, levels and values against hand computations; ties; missing; JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from miro.data.bins import RewardBins, fit_from_shards, quantile_edges
from miro.data.shards import atomic_shard_writer
from miro.scoring import ScoringConfigError, encode_rewards


def test_edges_levels_and_values_by_hand():
    # N = 10, B = 4: levels start at ranks ceil(10k/4) = 3, 5, 8 -> edges x[3], x[5], x[8].
    x = np.arange(10.0)
    assert quantile_edges(x, 4).tolist() == [3.0, 5.0, 8.0]
    bins = RewardBins.fit({"r": np.random.default_rng(0).permutation(x)}, n_bins=4)
    assert bins.n_levels("r") == 4
    assert bins.rewards["r"].counts == [3, 2, 3, 2]
    assert bins.levels("r", x).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert bins.values("r", x).tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1])
    # A score equal to an edge starts the level above it; scores beyond the data clamp to the ends.
    assert [bins.to_level("r", v) for v in (2.999, 3.0, -100.0, 100.0)] == [0, 1, 0, 3]
    assert bins.to_value("r", 5.0) == pytest.approx(2 / 3)


def test_ties_merge_levels_but_values_still_span_zero_to_one():
    # ranks ceil(10k/5) = 2, 4, 6, 8 -> x = 1, 1, 1, 3 -> edges {1, 3}: three levels.
    x = np.array([0, 1, 1, 1, 1, 1, 1, 2, 3, 4], dtype=float)
    bins = RewardBins.fit({"r": x}, n_bins=5)
    assert bins.rewards["r"].edges.tolist() == [1.0, 3.0]
    assert bins.rewards["r"].counts == [1, 7, 2]
    assert bins.values("r", [0, 1, 2, 3, 4]).tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_near_binary_reward_gets_two_levels_not_an_empty_bottom_one():
    x = np.array([0.0] * 70 + [1.0] * 30)
    bins = RewardBins.fit({"aligned": x}, n_bins=64)
    assert bins.n_levels("aligned") == 2
    assert bins.rewards["aligned"].counts == [70, 30]
    assert bins.values("aligned", [0.0, 1.0]).tolist() == [0.0, 1.0]


def test_constant_reward_has_one_level_mapped_to_the_middle():
    bins = RewardBins.fit({"c": np.full(20, 3.0)}, n_bins=8)
    assert bins.n_levels("c") == 1
    assert bins.to_level("c", 3.0) == 0 and bins.to_value("c", 3.0) == 0.5


def test_continuous_scores_fill_equal_bins():
    x = np.random.default_rng(1).normal(size=6400)
    bins = RewardBins.fit({"r": x}, n_bins=64)
    assert bins.n_levels("r") == 64
    assert set(bins.rewards["r"].counts) == {100}
    # Any increasing rescaling gives the same levels: raw scores are all the shards need.
    rescaled = RewardBins.fit({"r": np.exp(x) * 7 + 2}, n_bins=64)
    assert np.array_equal(rescaled.levels("r", np.exp(x) * 7 + 2), bins.levels("r", x))


def test_missing_scores():
    x = np.array([1.0, np.nan, 2.0, 3.0, np.nan, 4.0])
    bins = RewardBins.fit({"r": x}, n_bins=2)
    assert bins.rewards["r"].n_missing == 2 and sum(bins.rewards["r"].counts) == 4
    assert bins.to_level("r", None) == -1 and bins.to_level("r", math.nan) == -1
    assert math.isnan(bins.to_value("r", None)) and math.isnan(bins.to_value("r", math.nan))
    levels = bins.levels("r", [None, 1.0, math.nan, 4.0])
    assert levels.tolist() == [-1, 0, -1, 1]
    values = bins.values("r", np.array([np.nan, 4.0]))
    assert np.isnan(values[0]) and values[1] == 1.0 and values.dtype == np.float32
    with pytest.raises(ValueError, match="no finite score"):
        RewardBins.fit({"empty": np.array([np.nan, np.nan])})


def test_unknown_reward_names_the_fitted_ones():
    bins = RewardBins.fit({"a": np.arange(4.0), "b": np.arange(4.0)}, n_bins=2)
    with pytest.raises(KeyError, match="fitted rewards: a, b"):
        bins.to_value("c", 1.0)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    scores = {"s": rng.normal(size=500), "t": rng.integers(0, 3, 500).astype(float)}
    bins = RewardBins.fit(scores, n_bins=16, versions={"s": "1", "t": "2+x=1"}, shards=["a.tar", "b.tar"])
    path = tmp_path / "sub" / "bins.json"
    bins.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["bins.json"]  # nothing half-written left
    loaded = RewardBins.load(path)
    assert loaded.names == ["s", "t"] and loaded.n_bins == 16 and loaded.shards == ["a.tar", "b.tar"]
    assert loaded.rewards["t"].version == "2+x=1" and loaded.n_records == 500
    probe = rng.normal(size=200) * 2
    for name in ("s", "t"):
        assert np.array_equal(loaded.rewards[name].edges, bins.rewards[name].edges)
        assert loaded.rewards[name].counts == bins.rewards[name].counts
        assert np.array_equal(loaded.values(name, probe), bins.values(name, probe))
    data = json.loads(path.read_text())
    assert data["rewards"]["t"]["n_levels"] == 3 and data["format"] == "miro.bins/1"


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        RewardBins.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a MIRO bins file"):
        RewardBins.load(bad)
    bins = RewardBins.fit({"r": np.arange(10.0)}, n_bins=4).to_json()
    bins["rewards"]["r"]["edges"] = [5.0, 3.0, 8.0]
    bad.write_text(json.dumps(bins))
    with pytest.raises(ValueError, match="strictly increasing"):
        RewardBins.load(bad)


def _annotated_shard(path, start, n, versions=None):
    """Records i = start..start+n-1 with score a = i and b = i % 3, b missing for every 4th."""
    versions = versions or {"a": "1", "b": "1"}
    with atomic_shard_writer(path) as writer:
        for i in range(start, start + n):
            scores = {"a": float(i), "b": float(i % 3) if i % 4 else None}
            annotation = encode_rewards(scores, versions)
            writer.write({"__key__": f"{i:06d}", "txt": b"x", "rewards.json": annotation})


def test_fit_from_shards_reads_all_or_a_seeded_sample(tmp_path):
    for s in range(4):
        _annotated_shard(tmp_path / f"{s:05d}.tar", 25 * s, 25)
    full = fit_from_shards(str(tmp_path), n_bins=4, max_samples=None)
    assert full.n_records == 100 and len(full.shards) == 4
    assert full.rewards["a"].edges.tolist() == [25.0, 50.0, 75.0]
    assert full.rewards["b"].n_missing == 25 and full.rewards["a"].version == "1"
    sample = fit_from_shards(str(tmp_path), n_bins=4, max_samples=30, seed=3)
    assert sample.n_records == 30 and sum(sample.rewards["a"].counts) == 30
    assert len(sample.shards) == 2  # stopped reading once it had enough records
    again = fit_from_shards(str(tmp_path), n_bins=4, max_samples=30, seed=3)
    assert again.to_json() == sample.to_json()
    only = fit_from_shards(str(tmp_path), n_bins=4, max_samples=None, rewards=["b"])
    assert only.names == ["b"]


def test_fit_from_shards_refuses_mixed_versions_and_unknown_rewards(tmp_path):
    _annotated_shard(tmp_path / "00000.tar", 0, 10)
    _annotated_shard(tmp_path / "00001.tar", 10, 10, versions={"a": "2", "b": "1"})
    with pytest.raises(ScoringConfigError, match="different reward versions"):
        fit_from_shards(str(tmp_path), max_samples=None)
    with pytest.raises(ScoringConfigError, match=r"\['vqa'\]"):
        fit_from_shards(str(tmp_path), max_samples=None, rewards=["vqa"])
    assert fit_from_shards(str(tmp_path), max_samples=None, rewards=["b"]).rewards["b"].version == "1"
