"""Hostile inputs to the shard stages (issue 17): rewards failing on a sample, images claiming huge sizes,
truncated archives, resuming with other settings, duplicate keys and unsafe member names."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from miro.data.image_limits import ImageLimits, ImageTooLargeError, open_rgb
from miro.data.shard_stage import is_finished
from miro.data.shards import TruncatedShardError, atomic_shard_writer, encode_jpeg, iter_shard
from miro.rewards.base import RewardModel
from miro.rewards.offline import CompressibilityReward
from miro.scoring import (
    RewardFailureError,
    RewardFailurePolicy,
    ScoringConfigError,
    decode_rewards,
    read_scores,
    score_shard,
    score_shards,
)

REPO = Path(__file__).resolve().parents[1]


def picture(i: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def sample(i: int, size: int = 16) -> dict:
    return {"__key__": f"{i:06d}", "jpg": encode_jpeg(picture(i, size)), "txt": f"picture {i}".encode()}


def write_shard(path: Path, samples: list[dict]) -> Path:
    with atomic_shard_writer(path) as writer:
        for s in samples:
            writer.write(s)
    return path


class Redness(RewardModel):
    """Mean red value. Raises on any batch holding an all-black image (the "bad sample") and counts
    its calls, so the per-sample fallback can be checked to run only on the failing batch."""

    name = "redness"
    version = "1"
    needs_captions = False

    def __init__(self, always_fail: bool = False) -> None:
        super().__init__("cpu", batch_size=64)
        self.calls: list[int] = []  # batch size of every call
        self.always_fail = always_fail

    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        self.calls.append(images.shape[0])
        if self.always_fail or (images.reshape(images.shape[0], -1).amax(dim=1) == 0).any():
            raise ValueError("cannot score a black image")
        return images[:, 0].float().mean(dim=(1, 2))


def black(i: int) -> dict:
    return {**sample(i), "jpg": encode_jpeg(Image.new("RGB", (16, 16)))}


# --------------------------------------------------------------------------------------------------
# Item 2: a reward failing on one sample skips that sample


def test_a_reward_failing_on_one_sample_skips_it_and_retries_only_that_batch(tmp_path):
    samples = [sample(i) for i in range(8)]
    samples[5] = black(5)
    shard = write_shard(tmp_path / "in" / "00000.tar", samples)
    reward = Redness()
    report = score_shard(shard, tmp_path / "out" / "00000.tar", tmp_path / "r.json", {"redness": reward},
                         batch_size=4)
    # batch 1 (4 images) scored at once; batch 2 fails as a whole, then its 4 samples one by one
    assert reward.calls == [4, 4, 1, 1, 1, 1]
    assert report.skipped == [
        {"key": "000005", "reason": "reward 'redness' failed: ValueError: cannot score a black image"}
    ]
    assert (report.n_scored, report.failed, report.computed) == (7, {"redness": 1}, {"redness": 7})
    written = list(iter_shard(tmp_path / "out" / "00000.tar"))
    assert [s["__key__"] for s in written] == [f"{i:06d}" for i in range(8) if i != 5]
    for s in written:  # the fallback's scores equal the batch's
        image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB")).copy())
        assert decode_rewards(s["rewards.json"])[0]["redness"] == pytest.approx(image[..., 0].float().mean())


def test_a_reward_failing_on_most_of_a_shard_stops_naming_it(tmp_path):
    shard = write_shard(tmp_path / "in" / "00000.tar", [sample(i) for i in range(8)])
    reward = Redness(always_fail=True)
    with pytest.raises(RewardFailureError, match=r"reward 'redness' failed on 4 of 4 samples .*00000.tar"):
        score_shard(shard, tmp_path / "out" / "00000.tar", tmp_path / "r.json", {"redness": reward},
                    batch_size=4, failures=RewardFailurePolicy(max_fraction=0.5, min_samples=4))
    assert len(reward.calls) == 5  # stopped after the first batch, not after retrying the whole shard
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(ScoringConfigError, match="max_fraction"):
        RewardFailurePolicy(max_fraction=1.5)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def shapes_sample(i: int, size: int) -> dict:
    return {**sample(i, size), "txt": b"a red circle"}  # a caption the alignment reward checks


def test_cli_tiny_images_are_skipped_and_an_all_tiny_shard_stops_with_one_line(tmp_path):
    good = [shapes_sample(i, 24) for i in range(5)] + [shapes_sample(5, 6)]  # 6 px: the detector raises
    write_shard(tmp_path / "in" / "00000.tar", good)
    out = tmp_path / "out"
    result = run_cli("data_prep.score_shards", f"input={tmp_path / 'in'}", f"output={out}",
                     "rewards=[alignment,sharpness]", "progress=false")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "reports" / "00000.json").read_text())
    assert [s["key"] for s in report["skipped"]] == ["000005"]
    assert report["skipped"][0]["reason"].startswith("reward 'alignment' failed: ValueError")
    assert "scored 5 samples, skipped 1, with alignment, sharpness" in result.stdout
    write_shard(tmp_path / "tiny" / "00000.tar", [shapes_sample(i, 6) for i in range(20)])
    result = run_cli("data_prep.score_shards", f"input={tmp_path / 'tiny'}", f"output={tmp_path / 'o2'}",
                     "rewards=[alignment]", "progress=false", "batch_size=4")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: reward 'alignment' failed on 16 of 16"), lines  # after the warnings
    assert sum("error:" in line for line in lines) == 1
    assert "Traceback" not in result.stderr and not list((tmp_path / "o2").glob("*.tar"))


# --------------------------------------------------------------------------------------------------
# Item 3: decoded-size limits, checked from the header


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels but holds a few bytes of data (cheap to make)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to claim ``width x height``."""
    data = bytearray(encode_jpeg(picture(0)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture()
def loaded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image PIL's decoder is asked to load."""
    sizes: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self):
        sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


def test_images_over_the_limit_are_skipped_without_decoding(tmp_path, loaded_sizes):
    samples = [sample(i) for i in range(4)]
    samples[1] = {**samples[1], "jpg": jpeg_claiming(6000, 5000)}  # 30 Mpx > 16.8 Mpx
    del samples[2]["jpg"]
    samples[2]["png"] = png_header_claiming(9000, 100)  # long side 9000 > 8192
    shard = write_shard(tmp_path / "in" / "00000.tar", samples)
    report = score_shard(shard, tmp_path / "out" / "00000.tar", tmp_path / "r.json",
                         {"compress": CompressibilityReward()})
    reasons = {s["key"]: s["reason"] for s in report.skipped}
    assert reasons == {
        "000001": "jpg: image is 6000x5000 (30.0 Mpx), over the decoded-size limit (max_side=8192, "
                  "max_pixels=16777216); not decoded",
        "000002": "png: image is 9000x100 (0.9 Mpx), over the decoded-size limit (max_side=8192, "
                  "max_pixels=16777216); not decoded",
    }
    assert max(w * h for w, h in loaded_sizes) <= 16 * 16  # the decoder never saw the claimed sizes
    assert report.n_scored == 2 and report.settings["image_limits"] == ImageLimits().to_json()


def test_limits_are_configurable_and_jpeg_draft_decodes_at_the_needed_scale(loaded_sizes):
    big = encode_jpeg(picture(1, 512))
    with pytest.raises(ImageTooLargeError, match="512x512"):
        open_rgb(big, ImageLimits(max_side=500))
    for draft_size, decoded in [(None, (512, 512)), (64, (64, 64)), (100, (128, 128))]:
        loaded_sizes.clear()  # 1/8 scale is still >= 64; for 100, 1/4 (1/8 would be < 100)
        assert open_rgb(big, ImageLimits(), draft_size=draft_size).size == decoded
        assert set(loaded_sizes) == {decoded}  # the decoder never produced the full image
    with pytest.raises(ValueError, match="image_limits.max_side must be a positive integer"):
        ImageLimits.from_config({"max_side": 0})
    with pytest.raises(ValueError, match="unknown key"):
        ImageLimits.from_config({"max_sid": 10})


# --------------------------------------------------------------------------------------------------
# Item 4: truncated archives


def member_offsets(path: Path) -> list[tuple[int, int, int]]:
    """(header offset, data offset, size) of every member."""
    with tarfile.open(path) as tar:
        return [(m.offset, m.offset_data, m.size) for m in tar.getmembers()]


@pytest.mark.parametrize("cut", ["at a member header", "mid-member"])
def test_a_truncated_shard_is_reported_never_finished_and_the_run_fails_at_the_end(tmp_path, cut):
    shards = [write_shard(tmp_path / "in" / f"{s:05d}.tar", [sample(10 * s + i) for i in range(6)])
              for s in range(3)]
    full = shards[1].read_bytes()
    header, data, size = member_offsets(shards[1])[7]  # sample 3's second member
    shards[1].write_bytes(full[:header] if cut == "at a member header" else full[: data + size // 2])
    with pytest.raises(TruncatedShardError):
        list(iter_shard(shards[1]))
    summary = score_shards(str(tmp_path / "in"), tmp_path / "out", {"redness": Redness()})
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar*")) == ["00000.tar", "00002.tar"]
    assert [r.shard for r in summary.truncated] == ["00001.tar"]
    assert "00001.tar is truncated" in summary.truncated[0].truncated
    assert summary.n_scored == 12  # the truncated shard's samples are not counted as written
    report = json.loads((tmp_path / "out" / "reports" / "00001.json").read_text())
    assert report["truncated"] and report["n_samples"] == 3  # the complete samples before the cut
    with pytest.raises(TruncatedShardError, match=r"1 input shard\(s\) are truncated .*00001.tar"):
        summary.raise_if_truncated()
    again = Redness()
    rerun = score_shards(str(tmp_path / "in"), tmp_path / "out", {"redness": again}, batch_size=2)
    assert rerun.n_resumed == 2
    assert again.calls == [2]  # the truncated shard is read again (one full batch before the cut)
    shards[1].write_bytes(full)  # re-downloaded
    fixed = score_shards(str(tmp_path / "in"), tmp_path / "out", {"redness": Redness()})
    assert fixed.truncated == [] and fixed.n_resumed == 2 and fixed.reports[1].n_scored == 6


def test_cli_a_truncated_shard_fails_the_stage_after_the_others(tmp_path):
    for s in range(2):
        write_shard(tmp_path / "in" / f"{s:05d}.tar", [sample(10 * s + i) for i in range(4)])
    data = (tmp_path / "in" / "00000.tar").read_bytes()
    (tmp_path / "in" / "00000.tar").write_bytes(data[: member_offsets(tmp_path / "in" / "00000.tar")[4][0]])
    out = tmp_path / "out"
    result = run_cli("data_prep.score_shards", f"input={tmp_path / 'in'}", f"output={out}",
                     "rewards=[compressibility]", "progress=false")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "scored 4 samples" in result.stdout and "1 truncated" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 input shard(s) are truncated")
    assert (out / "00001.tar").is_file() and not (out / "00000.tar").exists()


def test_fit_bins_refuses_a_truncated_scored_shard(tmp_path):
    write_shard(tmp_path / "in" / "00000.tar", [sample(i) for i in range(6)])
    score_shards(str(tmp_path / "in"), tmp_path / "scored", {"redness": Redness()})
    scored = tmp_path / "scored" / "00000.tar"
    scored.write_bytes(scored.read_bytes()[: member_offsets(scored)[9][0]])
    with pytest.raises(TruncatedShardError, match="00000.tar is truncated"):
        read_scores(str(scored))


# --------------------------------------------------------------------------------------------------
# Item 5: resume honours what was asked


def test_resume_redoes_shards_made_with_other_settings_or_on_recompute(tmp_path):
    write_shard(tmp_path / "in" / "00000.tar", [sample(i) for i in range(4)])
    out, inputs = tmp_path / "out", str(tmp_path / "in")
    first = score_shards(inputs, out, {"redness": Redness()})
    assert first.reports[0].settings == {
        "rewards": {"redness": "1"}, "image_limits": ImageLimits().to_json(), "decode_size": None,
    }
    same = Redness()
    assert score_shards(inputs, out, {"redness": same}).n_resumed == 1 and same.calls == []
    more = score_shards(inputs, out, {"redness": Redness(), "compress": CompressibilityReward()})
    assert more.n_resumed == 0 and more.rewards_held == ["compress", "redness"]
    scores = decode_rewards(next(iter_shard(out / "00000.tar"))["rewards.json"])[0]
    assert sorted(scores) == ["compress", "redness"]  # the summary claims what the shard holds
    both = {"redness": Redness(), "compress": CompressibilityReward()}
    assert score_shards(inputs, out, both, limits=ImageLimits(max_side=100)).n_resumed == 0
    assert score_shards(inputs, out, both, limits=ImageLimits(max_side=100)).n_resumed == 1
    forced = Redness()
    assert score_shards(inputs, out, {"redness": forced}, recompute=True).n_resumed == 0 and forced.calls
    report = out / "reports" / "00000.json"
    assert is_finished(tmp_path / "in" / "00000.tar", out / "00000.tar", report)
    assert not is_finished(tmp_path / "in" / "00000.tar", out / "00000.tar", report, {"other": 1})


# --------------------------------------------------------------------------------------------------
# Item 8: duplicate keys and unsafe member names


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_duplicate_keys_and_unsafe_names_are_reported_and_never_written(tmp_path):
    path = tmp_path / "in" / "00000.tar"
    path.parent.mkdir()
    jpg = encode_jpeg(picture(0))
    with tarfile.open(path, "w") as tar:
        for name in ["000000.jpg", "000000.txt", "000001.jpg", "000001.txt",
                     "000000.jpg", "000000.txt",  # the key again, later
                     "../evil.jpg", "../evil.txt", "/abs/x.jpg", "a/../../up.jpg",
                     "000002.jpg", "000002.jpg", "000002.txt",  # two images for one sample
                     "000003.jpg", "000003.txt"]:
            add_member(tar, name, jpg if name.endswith(".jpg") else b"a caption")
    report = score_shard(path, tmp_path / "out" / "00000.tar", tmp_path / "out" / "r.json",
                         {"redness": Redness()})
    reasons = {s["key"]: s["reason"] for s in report.skipped}
    assert reasons == {
        "000000": "duplicate key: a second sample with this key (the first is kept)",
        "../evil.jpg": "unsafe member name '../evil.jpg' (absolute or ../), not read",
        "../evil.txt": "unsafe member name '../evil.txt' (absolute or ../), not read",
        "/abs/x.jpg": "unsafe member name '/abs/x.jpg' (absolute or ../), not read",
        "a/../../up.jpg": "unsafe member name 'a/../../up.jpg' (absolute or ../), not read",
        "000002": "duplicate member '000002.jpg': the sample is ambiguous",
    }
    assert (report.n_samples, report.n_scored, report.n_skipped) == (9, 3, 6)
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        names = tar.getnames()
    exts = ("jpg", "rewards.json", "txt")
    assert names == [f"{k}.{e}" for k in ("000000", "000001", "000003") for e in exts]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["00000.tar", "00000.tar", "r.json"]


# --------------------------------------------------------------------------------------------------
# Item 7: the data stages' bad inputs end with one line and exit code 2, nothing half-written


def run_stage_in_process(stage_name: str, argv: list[str], capsys) -> str:
    """Run a data stage's entry point in this process; returns its one error line (exit code 2)."""
    import importlib

    from data_prep import run_stage

    module = importlib.import_module(f"data_prep.{stage_name}")
    config = {"score_shards": "score", "fit_bins": "fit_bins", "cache_latents": "cache_latents"}[stage_name]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_stage(config, module.stage, argv)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture()
def scored_dir(tmp_path) -> Path:
    write_shard(tmp_path / "in" / "00000.tar", [sample(i) for i in range(6)])
    score_shards(str(tmp_path / "in"), tmp_path / "scored", {"redness": Redness()})
    return tmp_path / "scored"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("n_bins=0", "n_bins must be between 1 and 4096, got 0"),
        ("n_bins=1e9", "n_bins must be between 1 and 4096, got 1000000000"),
        ("n_bins=abc", "n_bins must be an integer, got 'abc'"),
        ("max_samples=0", "max_samples must be >= 1, got 0"),
        ("seed=-1", "seed must be >= 0, got -1"),
        ("input=/nonexistent/*.tar", "no shard matches '/nonexistent/*.tar'"),
        ("reward_names=[nope]", "no scores for reward(s) ['nope'] in the shards; found ['redness']"),
    ],
)
def test_fit_bins_bad_requests(scored_dir, tmp_path, capsys, override, message):
    args = {"input": f"input={scored_dir}", "out": f"out={tmp_path / 'bins.json'}"}
    args[override.split("=")[0]] = override
    assert run_stage_in_process("fit_bins", list(args.values()), capsys) == f"error: {message}"
    assert not (tmp_path / "bins.json").exists() and not list(tmp_path.glob("*.tmp"))


def test_fit_bins_out_a_directory_and_a_malformed_annotation(scored_dir, tmp_path, capsys):
    (tmp_path / "bins").mkdir()
    line = run_stage_in_process("fit_bins", [f"input={scored_dir}", f"out={tmp_path / 'bins'}"], capsys)
    assert line == f"error: out={tmp_path / 'bins'} is a directory; name the bins file, e.g. " \
                   f"out={tmp_path / 'bins' / 'bins.json'}"
    assert not list(tmp_path.rglob("*.tmp")) and not list((tmp_path / "bins").iterdir())
    bad = [{"__key__": "000000", "txt": b"x", "rewards.json": b'{"scores": {"r": [1, 2]}}'}]
    write_shard(tmp_path / "bad" / "00000.tar", bad)
    argv = [f"input={tmp_path / 'bad'}", f"out={tmp_path / 'b.json'}"]
    line = run_stage_in_process("fit_bins", argv, capsys)
    assert line.startswith(f"error: {tmp_path / 'bad' / '00000.tar'}: sample 000000: malformed rewards.json")


def test_write_bytes_atomic_leaves_no_tmp_when_the_rename_fails(tmp_path, monkeypatch):
    import os

    from miro.data.shards import ShardInputError, write_bytes_atomic

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(tmp_path / "bins.json", b"{}")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(ShardInputError, match="is a directory"):
        write_bytes_atomic(tmp_path, b"{}")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=0", "batch_size must be between 1 and 65536, got 0"),
        ("batch_size=1e9", "batch_size must be between 1 and 65536, got 1000000000"),
        ("image_limits.max_side=0", "image_limits.max_side must be a positive integer, got 0"),
        ("decode_size=-1", "decode_size must be between 1 and 65536, got -1"),
        ("reward_failures.max_fraction=2", "reward_failures needs 0 <= max_fraction <= 1"),
        ("input=/nonexistent/*.tar", "no shard matches '/nonexistent/*.tar'"),
    ],
)
def test_score_shards_bad_requests(tmp_path, capsys, override, message):
    write_shard(tmp_path / "in" / "00000.tar", [sample(0)])
    args = {"input": f"input={tmp_path / 'in'}", "output": f"output={tmp_path / 'out'}",
            "rewards": "rewards=[compressibility]", "progress": "progress=false"}
    args[override.split("=")[0]] = override
    assert run_stage_in_process("score_shards", list(args.values()), capsys).startswith(f"error: {message}")
    assert not (tmp_path / "out").exists()


def test_cache_latents_checks_its_options_before_loading_encoders(tmp_path, capsys):
    args = [f"input={tmp_path}", f"output={tmp_path / 'out'}", "progress=false"]
    # the default encoders (FLAN-T5-XL, SDXL-VAE) are not here: reaching them would be another error
    assert run_stage_in_process("cache_latents", [*args, "image_size=0"], capsys) == \
        "error: image_size must be between 1 and 8192, got 0"
    assert run_stage_in_process("cache_latents", [*args, "image_limits.max_pixels=x"], capsys) == \
        "error: image_limits.max_pixels must be a positive integer, got 'x'"


def tampered_bins(tmp_path: Path, edit) -> Path:
    from miro.data.bins import RewardBins

    data = RewardBins.fit({"r": np.arange(10.0)}, n_bins=4).to_json()
    edit(data)
    path = tmp_path / "bins.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["rewards"]["r"].update(edges=[3.0, float("nan"), 8.0]), "edges must be finite"),
        (lambda d: d["rewards"]["r"].update(edges=[3.0, 3.0, 8.0]), "strictly increasing"),
        (lambda d: d["rewards"]["r"].update(edges="3,5,8"), "edges must be a list of numbers"),
        (lambda d: d["rewards"]["r"].update(counts=[3, 2, -1, 5]), "counts must be a list of non-negative"),
        (lambda d: d["rewards"]["r"].update(counts=[3, 2]), "2 counts for 4 levels"),
        (lambda d: d["rewards"]["r"].update(n_levels=9), "n_levels 9 but 4 levels"),
        (lambda d: d["rewards"]["r"].update(min=5.0, max=1.0), "min 5.0 is above max 1.0"),
        (lambda d: d["rewards"]["r"].update(min="low"), "min must be a finite number or null"),
        (lambda d: d["rewards"].update(r=[1, 2]), "reward 'r': expected an object, got list"),
        (lambda d: d.update(rewards=[1]), "rewards must be an object"),
        (lambda d: d.update(n_bins=0), "n_bins must be an integer from 1 to 4096, got 0"),
        (lambda d: d.update(n_bins=2), "reward 'r' has 4 levels, more than n_bins 2"),
        (lambda d: d.update(n_records=-3), "n_records must be a non-negative integer"),
        (lambda d: d.update(format="miro.bins/0"), "not a MIRO bins file"),
    ],
)
def test_a_tampered_bins_file_does_not_load(tmp_path, edit, message):
    from miro.data.bins import BinsFileError, RewardBins
    from miro.usage import usage_error

    with pytest.raises(BinsFileError, match=message) as err:
        RewardBins.load(tampered_bins(tmp_path, edit))
    assert str(tmp_path / "bins.json") in str(err.value) and usage_error(err.value) is err.value


def test_bins_file_that_is_not_json_or_too_deep(tmp_path):
    from miro.data.bins import BinsFileError, RewardBins

    (tmp_path / "b.json").write_text("[" * 100000)
    with pytest.raises(BinsFileError, match="not valid JSON"):
        RewardBins.load(tmp_path / "b.json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "100000"], "image size must be from 16 to 1024 px, got 100000"),
        (["--n", "1000000000"], "n must be at most 100000000"),
        (["--per-shard", "10000000"], "per_shard at most 1000000"),
        (["--min-object-px", "nan"], "min_object_px must be from 0 to the image size, got nan"),
        (["--workers", "0"], "--workers must be from 1 to 256, got 0"),
    ],
)
def test_miro_data_shapes_refuses_absurd_sizes_and_counts(tmp_path, capsys, args, message):
    from miro.shapes.cli import main

    assert main(["shapes", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"miro-data: {message}"] or (len(err) == 1 and message in err[0]), err
    assert not (tmp_path / "out").exists()
