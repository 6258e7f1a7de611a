"""The scoring stage: byte-exact outputs, restarts, bad samples, merging, ranks and the CLI."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from miro.data.shard_stage import StageConfigError, device_for_rank, dist_rank_world, plan_outputs
from miro.data.shards import ShardInputError, atomic_shard_writer, encode_jpeg, iter_shard
from miro.rewards.base import RewardModel, UnknownRewardError
from miro.rewards.offline import CompressibilityReward, SharpnessReward
from miro.scoring import (
    ScoringConfigError,
    build_rewards,
    decode_rewards,
    encode_rewards,
    read_scores,
    reward_specs,
    score_shard,
    score_shards,
)

REPO = Path(__file__).resolve().parents[1]
PER_SHARD = 6


def picture(i: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(i)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
    ImageDraw.Draw(img).rectangle((x0, y0, x0 + size // 3, y0 + size // 3), fill=(230, 40, 40))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_inputs(directory: Path, n_shards: int = 3) -> list[Path]:
    """Shards of PER_SHARD samples; shard 1 holds one of each kind of bad sample and a PNG."""
    paths = []
    for s in range(n_shards):
        path = directory / f"{s:05d}.tar"
        with atomic_shard_writer(path) as writer:
            for j in range(PER_SHARD):
                i = s * PER_SHARD + j
                sample = {
                    "__key__": f"{i:06d}",
                    "jpg": encode_jpeg(picture(i)),
                    "txt": f"picture {i}".encode(),
                    "json": json.dumps({"i": i}).encode(),
                }
                if s == 1 and j == 1:
                    sample["jpg"] = sample["jpg"][: len(sample["jpg"]) // 3]  # truncated JPEG
                if s == 1 and j == 2:
                    del sample["txt"]
                if s == 1 and j == 3:
                    sample["txt"] = b"   "
                if s == 1 and j == 4:
                    del sample["jpg"]
                    sample["png"] = png_bytes(picture(i, size=24))  # another size in the same shard
                writer.write(sample)
        paths.append(path)
    return paths


class Killed(BaseException):
    """What a kill looks like from inside the stage: not an Exception, so no per-sample fallback."""


class Counting(RewardModel):
    """Mean red value; counts the images it scores. Optionally killed on its Nth batch."""

    name = "redness"
    version = "1"
    needs_captions = False

    def __init__(self, fail_on_call: int | None = None, version: str = "1") -> None:
        super().__init__("cpu", batch_size=4)
        self.calls = 0
        self.images = 0
        self.fail_on_call = fail_on_call
        self.version = version

    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise Killed("killed mid-shard")
        self.images += images.shape[0]
        return images[:, 0].float().mean(dim=(1, 2))


class NanReward(Counting):
    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        return torch.full((images.shape[0],), math.nan)


@pytest.fixture()
def inputs(tmp_path) -> Path:
    write_inputs(tmp_path / "in")
    return tmp_path / "in"


def shard_bytes(directory: Path) -> dict[str, bytes]:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in files}


# --------------------------------------------------------------------------------------------------
# One run


def test_outputs_keep_every_byte_and_add_scores(inputs, tmp_path):
    rewards = {"sharpness": SharpnessReward(), "redness": Counting()}
    summary = score_shards(str(inputs), tmp_path / "out", rewards, batch_size=4)
    assert summary.n_scored == 3 * PER_SHARD - 3 and summary.n_skipped == 3 and summary.n_resumed == 0
    for path in sorted(inputs.glob("*.tar")):
        originals = {s["__key__"]: s for s in iter_shard(path)}
        scored = list(iter_shard(tmp_path / "out" / path.name))
        for sample in scored:
            original = originals[sample["__key__"]]
            assert {k: v for k, v in sample.items() if k != "rewards.json"} == original
            scores, versions = decode_rewards(sample["rewards.json"])
            image = Image.open(io.BytesIO(original.get("jpg") or original["png"])).convert("RGB")
            batch = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
            assert scores["sharpness"] == pytest.approx(SharpnessReward().score(batch, [""]).item(), rel=1e-6)
            assert scores["redness"] == pytest.approx(batch[0, 0].float().mean().item(), rel=1e-6)
            assert versions == {"sharpness": "1", "redness": "1"}
        kept = [s["__key__"] for s in scored]
        assert kept == [k for k in originals if k in kept]  # input order


def test_bad_samples_are_reported_and_skipped(inputs, tmp_path):
    score_shards(str(inputs), tmp_path / "out", {"redness": Counting()}, batch_size=4)
    report = json.loads((tmp_path / "out" / "reports" / "00001.json").read_text())
    assert (report["n_samples"], report["n_scored"], report["n_skipped"]) == (PER_SHARD, PER_SHARD - 3, 3)
    reasons = {s["key"]: s["reason"] for s in report["skipped"]}
    assert list(reasons) == ["000007", "000008", "000009"]
    assert reasons["000007"].startswith("cannot decode jpg")
    assert reasons["000008"] == "no caption (txt)" and reasons["000009"] == "empty caption (txt)"
    assert "000010" in [s["__key__"] for s in iter_shard(tmp_path / "out" / "00001.tar")]  # the PNG


def test_non_finite_scores_are_stored_as_missing(inputs, tmp_path):
    score_shards(str(inputs / "00000.tar"), tmp_path / "out", {"nan": NanReward()})
    sample = next(iter(iter_shard(tmp_path / "out" / "00000.tar")))
    assert json.loads(sample["rewards.json"])["scores"] == {"nan": None}


# --------------------------------------------------------------------------------------------------
# Restarts


def test_rerun_skips_finished_shards_and_changes_nothing(inputs, tmp_path):
    first = Counting()
    score_shards(str(inputs), tmp_path / "out", {"redness": first})
    before = shard_bytes(tmp_path / "out")
    second = Counting()
    summary = score_shards(str(inputs), tmp_path / "out", {"redness": second})
    assert second.calls == 0 and summary.n_resumed == 3
    assert summary.n_scored == 3 * PER_SHARD - 3  # counts come from the saved reports
    assert shard_bytes(tmp_path / "out") == before


def test_killed_run_restarted_gives_the_bytes_of_a_clean_run(inputs, tmp_path):
    score_shards(str(inputs), tmp_path / "clean", {"redness": Counting()}, batch_size=2)
    # Batches of 2: shard 0 takes calls 1-3, shard 1 dies on its second batch.
    with pytest.raises(Killed, match="killed mid-shard"):
        score_shards(str(inputs), tmp_path / "out", {"redness": Counting(fail_on_call=5)}, batch_size=2)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar*")) == ["00000.tar"]
    assert sorted(p.name for p in (tmp_path / "out" / "reports").iterdir()) == ["00000.json"]
    (tmp_path / "out" / "00002.tar.tmp").write_bytes(b"left over by kill -9")  # a hard kill skips cleanup
    restarted = Counting()
    summary = score_shards(str(inputs), tmp_path / "out", {"redness": restarted}, batch_size=2)
    assert summary.n_resumed == 1 and restarted.images == 2 * PER_SHARD - 3
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "clean")


def test_a_report_without_its_shard_means_unfinished(inputs, tmp_path):
    score_shards(str(inputs), tmp_path / "out", {"redness": Counting()})
    (tmp_path / "out" / "00002.tar").unlink()  # killed between writing the report and the rename
    again = Counting()
    assert score_shards(str(inputs), tmp_path / "out", {"redness": again}).n_resumed == 2
    assert again.images == PER_SHARD


def test_a_rewritten_input_is_scored_again_and_leftover_outputs_are_named(inputs, tmp_path, caplog):
    score_shards(str(inputs), tmp_path / "out", {"redness": Counting()})
    shard = inputs / "00001.tar"
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data)  # regenerated since it was scored: a new time stamp
    os.utime(shard, ns=(1, 1))
    again = Counting()
    summary = score_shards(str(inputs), tmp_path / "out", {"redness": again})
    assert summary.n_resumed == 2 and again.images > 0
    # fewer inputs than last time: the output left over from the dropped one is named, not deleted
    with caplog.at_level(logging.WARNING, logger="miro.data.shard_stage"):
        kept = [str(inputs / "00000.tar"), str(inputs / "00001.tar")]
        score_shards(kept, tmp_path / "out", {"redness": again})
    assert "holds 1 shard(s) made from inputs not given this time (00002.tar)" in caplog.text
    assert (tmp_path / "out" / "00002.tar").is_file()


# --------------------------------------------------------------------------------------------------
# Merging into annotated shards


def test_merge_adds_new_rewards_without_recomputing_old_ones(inputs, tmp_path):
    score_shards(str(inputs), tmp_path / "pass1", {"redness": Counting()})
    redness, compress = Counting(), CompressibilityReward()
    summary = score_shards(str(tmp_path / "pass1"), tmp_path / "pass2", 
                           {"redness": redness, "compress": compress})
    assert redness.images == 0
    assert summary.reports[0].reused == {"redness": PER_SHARD, "compress": 0}
    assert summary.reports[0].computed == {"redness": 0, "compress": PER_SHARD}
    score_shards(str(inputs), tmp_path / "both", {"redness": Counting(), "compress": CompressibilityReward()})
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        assert (tmp_path / "pass2" / name).read_bytes() == (tmp_path / "both" / name).read_bytes()


def test_merge_recomputes_stale_versions_and_on_request(inputs, tmp_path):
    shard = inputs / "00000.tar"
    score_shards(str(shard), tmp_path / "v1", {"redness": Counting()})
    newer = Counting(version="2")
    score_shards(str(tmp_path / "v1"), tmp_path / "v2", {"redness": newer})
    assert newer.images == PER_SHARD
    sample = next(iter(iter_shard(tmp_path / "v2" / "00000.tar")))
    assert decode_rewards(sample["rewards.json"])[1] == {"redness": "2"}
    forced = Counting()
    score_shards(str(tmp_path / "v1"), tmp_path / "again", {"redness": forced}, recompute=True)
    assert forced.images == PER_SHARD


# --------------------------------------------------------------------------------------------------
# Ranks, plans and reward specs


def test_ranks_take_interleaved_shards(inputs, tmp_path):
    summary = score_shards(str(inputs), tmp_path / "out", {"redness": Counting()}, rank=1, world_size=2)
    assert [r.shard for r in summary.reports] == ["00001.tar"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["00001.tar"]
    assert dist_rank_world({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert dist_rank_world({}) == (0, 1)
    with pytest.raises(StageConfigError):
        dist_rank_world({"RANK": "4", "WORLD_SIZE": "4"})
    assert device_for_rank("cuda", {"LOCAL_RANK": "2"}) == "cuda:2"
    assert device_for_rank("cpu", {"LOCAL_RANK": "2"}) == "cpu"


def test_plan_refuses_clashing_names_and_overwriting_inputs(tmp_path):
    with pytest.raises(StageConfigError, match="two input shards named 00000.tar"):
        plan_outputs(["a/00000.tar", "b/00000.tar"], tmp_path)
    (tmp_path / "00000.tar").write_bytes(b"")
    with pytest.raises(StageConfigError, match="would overwrite input"):
        plan_outputs([str(tmp_path / "00000.tar")], tmp_path)


def test_reward_specs():
    composed = {"sharpness": {"_target_": "miro.rewards.offline.SharpnessReward", "median_size": 3}}
    assert reward_specs(composed) == composed
    assert reward_specs(["sharp", "compress"]) == {
        "sharpness": {"name": "sharpness"}, "compressibility": {"name": "compressibility"}
    }
    assert reward_specs({"color": None}) == {"colorfulness": {"name": "colorfulness"}}
    with pytest.raises(UnknownRewardError, match="unknown reward 'sharpnes'"):
        reward_specs(["sharpnes"])
    with pytest.raises(ScoringConfigError, match="not nested under its name"):
        reward_specs({"_target_": "miro.rewards.offline.SharpnessReward"})
    with pytest.raises(ScoringConfigError, match="no rewards selected"):
        reward_specs({})


def test_build_rewards_names_the_bad_config():
    compress = {"_target_": "miro.rewards.offline.CompressibilityReward", "quality": 80}
    built = build_rewards({"sharpness": {"name": "sharpness"}, "c": compress})
    assert isinstance(built["c"], CompressibilityReward) and built["c"].version == "1+quality=80"
    with pytest.raises(ScoringConfigError, match="reward 'sharpness': bad config"):
        build_rewards({"sharpness": {"name": "sharpness", "edge_fraction": 0.9, "flat_fraction": 0.9}})
    with pytest.raises(ScoringConfigError, match="reward 'c': bad config"):
        build_rewards({"c": {"_target_": "miro.rewards.offline.CompressibilityReward", "qualty": 80}})
    with pytest.raises(UnknownRewardError, match="cannot import"):
        build_rewards({"x": {"_target_": "miro.rewards.nope.Reward"}})


def test_read_scores_puts_nan_where_a_reward_is_missing(inputs, tmp_path):
    score_shards(str(inputs / "00000.tar"), tmp_path / "out", {"redness": Counting()})
    score_shards(str(inputs / "00002.tar"), tmp_path / "out", {"nan": NanReward(), "redness": Counting()})
    table = read_scores(str(tmp_path / "out"))
    assert table.n_records == 2 * PER_SHARD and sorted(table.scores) == ["nan", "redness"]
    assert np.isnan(table.scores["nan"]).all() and np.isfinite(table.scores["redness"]).all()
    assert table.versions == {"nan": {"1"}, "redness": {"1"}}


def test_encode_rewards_is_canonical():
    a = encode_rewards({"b": 1.5, "a": float("inf")}, {"b": "1", "a": "2"})
    assert a == b'{"scores":{"a":null,"b":1.5},"versions":{"a":"2","b":"1"}}'
    with pytest.raises(ValueError, match="sample k1: malformed rewards.json"):
        decode_rewards(b"{}", "k1")


def test_a_truncated_archive_is_reported_and_leaves_no_output(inputs, tmp_path):
    data = (inputs / "00000.tar").read_bytes()
    (tmp_path / "broken.tar").write_bytes(data[: len(data) // 2])
    report = score_shard(tmp_path / "broken.tar", tmp_path / "out" / "broken.tar", tmp_path / "r.json",
                         {"r": Counting()})
    assert "broken.tar is truncated" in report.truncated
    assert list((tmp_path / "out").iterdir()) == []
    assert json.loads((tmp_path / "r.json").read_text())["truncated"] == report.truncated
    (tmp_path / "garbage.tar").write_bytes(b"not a tar at all" * 64)  # not an archive: stops at once
    with pytest.raises(ShardInputError, match="cannot read shard .*garbage.tar"):
        score_shard(tmp_path / "garbage.tar", tmp_path / "out" / "garbage.tar", tmp_path / "g.json",
                    {"r": Counting()})


def test_score_shard_rejects_a_zero_batch(inputs, tmp_path):
    with pytest.raises(ScoringConfigError, match="batch_size"):
        score_shard(inputs / "00000.tar", tmp_path / "o.tar", tmp_path / "r.json", {"r": Counting()}, 0)


# --------------------------------------------------------------------------------------------------
# Command line (subprocess: the real entry points, as `make score-shards` runs them)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("override", "message"),
    [("input='/nonexistent/shards/{00000..00001}.tar'", "shard not found: /nonexistent/shards/00000.tar"),
     ("rewards=[sharpness,sharpnes]", "unknown reward 'sharpnes'")],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(inputs, tmp_path, override, message):
    args = {"input": f"input={inputs}", "output": f"output={tmp_path / 'out'}", "progress": "progress=false",
            "rewards": "rewards=[sharpness]"}
    args[override.split("=")[0]] = override
    result = run_cli("data_prep.score_shards", *args.values())
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert "Traceback" not in result.stderr


def test_cli_needs_the_rewards_named(inputs, tmp_path):
    """No default reward set: the shapes world's four are the demo's choice (rewards=offline), not the
    core's, so scoring without rewards= names the option and the sets to pick from."""
    result = run_cli("data_prep.score_shards", f"input={inputs}", f"output={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "You must specify 'rewards'" in lines[0] and "miro7" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_missing_reward_weights_is_one_line_naming_the_download(inputs, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MIRO_WEIGHTS_DIR": str(tmp_path / "weights")}
    cmd = [sys.executable, "-m", "data_prep.score_shards", f"input={inputs}", f"output={tmp_path / 'out'}",
           "rewards=[aesthetic]", "progress=false"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: aesthetic:"), result.stderr
    assert "miro-rewards download aesthetic" in lines[0]
    assert not list((tmp_path / "out").glob("*.tar"))


def test_cli_scores_then_fits_bins(inputs, tmp_path):
    out = tmp_path / "out"
    result = run_cli("data_prep.score_shards", f"input={inputs}", f"output={out}",
                     "rewards=[sharpness,compressibility]", "batch_size=4", "progress=false")
    assert result.returncode == 0, result.stderr
    assert f"-> {out} (reports: {out / 'reports'})" in result.stdout
    assert "scored 15 samples, skipped 3" in result.stdout
    result = run_cli("data_prep.fit_bins", f"input={out}", f"out={tmp_path / 'bins.json'}", "n_bins=4")
    assert result.returncode == 0, result.stderr
    bins = json.loads((tmp_path / "bins.json").read_text())
    assert sorted(bins["rewards"]) == ["compressibility", "sharpness"]
    assert sum(bins["rewards"]["sharpness"]["counts"]) == 15
