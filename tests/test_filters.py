"""Data filters by stored score and image size: exactly the right samples are kept, in both modes, and
the counts are reported; shards are never rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from miro.data.datamodule import ShardDataModule
from miro.data.filters import FilterConfigError, SampleFilter, SampleSizeError, census
from miro.data.shards import atomic_shard_writer, encode_jpeg, file_fingerprint
from miro.scoring import encode_rewards

# key -> (aesthetic score or None, (width, height), size stored in KEY.json?)
LAION = {"l0": (6.5, (32, 32), True), "l1": (5.9, (32, 32), True), "l2": (None, (32, 32), True),
         "l3": (7.0, (16, 32), False), "l4": (6.0, (40, 24), False)}
CC12M = {"c0": (2.0, (32, 32), True), "c1": (None, (24, 24), False), "c2": (9.0, (18, 30), True)}
RULES = [{"shards": "laion-*", "min_scores": {"aesthetic": 6}}, {"min_width": 20}]
# By hand: laion needs aesthetic >= 6 (l1 too low, l2 unscored), everything needs width >= 20 (l3, c2).
KEPT = {"l0", "l4", "c0", "c1"}


def _write(path: Path, samples: dict) -> None:
    with atomic_shard_writer(path) as writer:
        for key, (score, (w, h), with_json) in samples.items():
            sample = {"__key__": key, "jpg": encode_jpeg(Image.new("RGB", (w, h), (200, 30, 30))),
                      "txt": key.encode()}
            if with_json:
                # the source size counts, not the stored one
                sample["json"] = json.dumps({"original_width": w, "original_height": h, "width": 8,
                                             "height": 8}).encode()
            scores = {"aesthetic": score} if score is not None else {}
            sample["rewards.json"] = encode_rewards(scores, {})
            writer.write(sample)


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    _write(tmp_path / "shards" / "laion-000.tar", LAION)
    _write(tmp_path / "shards" / "cc12m-000.tar", CC12M)
    return tmp_path / "shards"


def _dm(shards: Path, tmp_path: Path, **kwargs) -> ShardDataModule:  # noqa: ANN003
    return ShardDataModule(str(shards), None, [], image_size=16, batch_size=2, num_workers=0,
                           filters=RULES, filter_report=str(tmp_path / "run" / "data_filter.json"), **kwargs)


def test_in_memory_keeps_exactly_the_right_samples_and_reports(shards: Path, tmp_path: Path) -> None:
    before = {p.name: file_fingerprint(p) for p in shards.iterdir()}
    dm = _dm(shards, tmp_path, in_memory=True)
    dm.setup()
    assert set(dm._memory.keys) == KEPT and set(dm._memory.captions) == KEPT
    report = json.loads((tmp_path / "run" / "data_filter.json").read_text())
    assert report["kept"] == 4 and report["dropped"] == 4 and report["counted"] == "in_memory"
    assert report["dropped_by"] == {"aesthetic < 6": 1, "no aesthetic score": 1, "width < 20": 2}
    assert {p.name: file_fingerprint(p) for p in shards.iterdir()} == before  # nothing rewritten


def test_streaming_yields_only_kept_samples_and_counts_by_census(shards: Path, tmp_path: Path) -> None:
    dm = _dm(shards, tmp_path, in_memory=False, shuffle_buffer=4)
    dm.setup()
    assert dm.filter_counts.kept == 4 and dm.filter_counts.n_dropped == 4
    seen = set()
    for i, batch in enumerate(dm.train_dataloader()):
        seen |= set(batch["caption"])
        if i == 40:
            break
    assert seen == KEPT  # the resampled stream draws every kept sample and nothing else
    assert json.loads((tmp_path / "run" / "data_filter.json").read_text())["counted"] == "census"


def test_max_scores_and_rules_limited_to_other_shards(shards: Path) -> None:
    only_cc = SampleFilter.from_config({"shards": "cc12m-*", "max_scores": {"aesthetic": 5}})
    counts = census(sorted(str(p) for p in shards.iterdir()), only_cc)
    # laion untouched (5 kept); c0 kept; c1 unscored and c2 above 5 dropped
    assert counts.kept == 6 and counts.dropped == {"no aesthetic score": 1, "aesthetic > 5": 1}


def test_a_filter_that_drops_everything_fails_with_its_counts(shards: Path, tmp_path: Path) -> None:
    dm = ShardDataModule(str(shards), None, [], 16, 2, num_workers=0, in_memory=False,
                         filters={"min_scores": {"aesthetic": 100}})
    with pytest.raises(ValueError, match="drop every sample.*aesthetic < 100: 6"):
        dm.setup()


def test_size_filter_without_a_recorded_size_names_the_sample(tmp_path: Path) -> None:
    with atomic_shard_writer(tmp_path / "cached.tar") as writer:
        writer.write({"__key__": "k7", "txt": b"x", "rewards.json": encode_rewards({}, {})})
    with pytest.raises(SampleSizeError, match="sample k7: a size filter is set but its size is unknown"):
        census([str(tmp_path / "cached.tar")], SampleFilter.from_config([{"min_height": 8}]))


@pytest.mark.parametrize(("rule", "message"), [
    ({"min_score": {"aesthetic": 6}}, "unknown field"),
    ({"min_scores": {"aesthetic": "high"}}, "bounds must be numbers"),
    ({"min_width": 0}, "min_width must be >= 1"),
])
def test_bad_rules_are_one_line_errors(rule: dict, message: str) -> None:
    with pytest.raises(FilterConfigError, match=message):
        SampleFilter.from_config([rule])
    assert SampleFilter.from_config(None) is None and SampleFilter.from_config([]) is None
