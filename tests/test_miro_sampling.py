"""MIRO's sampling options through MiroPipeline and miro-generate: push, snapping to trained levels,
the negative caption's named options, the guidance interval, and the cc12m sampling defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_REWARDS
from tiny_models import export_tiny_model

from miro.cli.generate import main as generate_main
from miro.config import compose_config
from miro.pipeline import (
    MODEL_DEFAULT,
    MiroPipeline,
    RewardSpecError,
    branch_targets,
    snap_targets,
)

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, scored_shapes: Path) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("model"), scored_shapes / "bins.json")


@pytest.fixture(scope="module")
def pipe(export: Path) -> MiroPipeline:
    return MiroPipeline.from_pretrained(export)


def test_push_is_all_high_against_all_high_but_one() -> None:
    names = list(OFFLINE_REWARDS)
    pos, neg = branch_targets(names, None, None, None, push="sharp")  # an alias
    assert pos == dict.fromkeys(names, 10.0)
    assert neg == dict.fromkeys(names, 10.0) | {"sharpness": 0.0}
    # explicit positive targets are kept in both branches; only the pushed reward drops to 0
    pos, neg = branch_targets(names, "alignment=6.25", None, None, push="sharpness")
    assert neg["alignment"] == 6.25 and neg["sharpness"] == 0.0
    with pytest.raises(RewardSpecError, match="either push or negative rewards"):
        branch_targets(names, None, "color=3", None, push="sharpness")
    with pytest.raises(RewardSpecError, match="unknown reward 'aesthetic'"):
        branch_targets(names, None, None, None, push="aesthetic")


def test_pipeline_push_equals_the_spelled_out_negative_branch(pipe: MiroPipeline) -> None:
    others = ",".join(f"{n}=10" for n in pipe.reward_names if n != "colorfulness")
    a = pipe(PROMPTS, push="colorfulness", guidance=2.0, output="tensor")
    b = pipe(PROMPTS, negative_rewards=others, guidance=2.0, output="tensor")
    assert torch.equal(a, b)
    c = pipe(PROMPTS, guidance=2.0, output="tensor")  # all-low negative: different images
    assert (a.int() - c.int()).abs().float().mean() > 0.5


def test_targets_snap_to_the_models_trained_levels(pipe: MiroPipeline) -> None:
    levels = pipe.levels
    assert set(levels) == set(pipe.reward_names) and all(n >= 2 for n in levels.values())
    b = levels["alignment"]
    want_level = int(0.9 * (b - 1) + 0.5)
    used = pipe.resolve({"alignment": 9})
    assert used["rewards"]["alignment"] == {
        "target": 9.0, "level": want_level, "levels": b, "value": pytest.approx(want_level / (b - 1))
    }
    assert snap_targets({"alignment": 9.0}, {"alignment": 64}) == {"alignment": pytest.approx(570 / 63)}
    # The images are those of the snapped target given exactly, and (unless 9 is a level) not of 0.9.
    snapped = pipe(PROMPTS, rewards={"alignment": 10 * want_level / (b - 1)}, snap=False, output="tensor")
    assert torch.equal(pipe(PROMPTS, rewards={"alignment": 9}, output="tensor"), snapped)
    raw = pipe.resolve({"alignment": 9}, snap=False)["rewards"]["alignment"]
    assert raw["value"] == pytest.approx(0.9) and raw["level"] is None


def test_negative_prompt_named_options(pipe: MiroPipeline, export: Path, tmp_path: Path) -> None:
    assert pipe.resolve()["negative_prompt"] is None  # this export: the same caption
    same = pipe(PROMPTS, guidance=3.0, output="tensor")
    empty = pipe(PROMPTS, guidance=3.0, negative_prompt="", output="tensor")
    assert (same.int() - empty.int()).abs().float().mean() > 0.5
    # A model whose sampling default is the empty prompt (cc12m's) uses it unless told "same caption".
    config_path = export / "config.json"
    config = json.loads(config_path.read_text())
    config["sampling"]["negative_prompt"] = ""
    other = tmp_path / "empty_default"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    empty_default = MiroPipeline.from_pretrained(other)
    assert empty_default.resolve()["negative_prompt"] == ""
    assert torch.equal(empty_default(PROMPTS, guidance=3.0, output="tensor"), empty)
    assert torch.equal(empty_default(PROMPTS, guidance=3.0, negative_prompt=None, output="tensor"), same)
    assert MODEL_DEFAULT is not None


def test_guidance_interval_through_the_pipeline(pipe: MiroPipeline) -> None:
    plain = pipe(PROMPTS, guidance=3.0, output="tensor")
    assert torch.equal(pipe(PROMPTS, guidance=3.0, guidance_interval=(0.0, 1.0), output="tensor"), plain)
    # An interval that no step's t falls into (3 steps: t = 1, 2/3, 1/3) is the conditional prediction.
    outside = pipe(PROMPTS, guidance=3.0, guidance_interval=(0.4, 0.6), output="tensor")
    assert torch.equal(outside, pipe(PROMPTS, guidance=0.0, output="tensor"))
    with pytest.raises(ValueError, match="guidance interval"):
        pipe.resolve(guidance_interval=(0.8, 0.2))


def test_generate_records_levels_push_and_interval(export: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = generate_main(["--checkpoint", str(export), "--prompt", "a red circle", "--rewards", "align=9",
                          "--push", "sharp", "--guidance-interval", "0.2,1", "--guidance-ramp", "linear",
                          "--out", str(out)])
    assert code == 0
    meta = json.loads((out / "00000.json").read_text())
    b = meta["reward_levels"]["alignment"]["levels"]
    assert meta["reward_levels"]["alignment"]["level"] == int(0.9 * (b - 1) + 0.5)
    assert meta["rewards"]["alignment"] == 9.0
    assert meta["push"] == "sharpness"
    assert meta["negative_rewards"] == {"alignment": 9.0, "sharpness": 0.0, "colorfulness": 10.0,
                                        "compressibility": 10.0}
    assert meta["guidance_interval"] == [0.2, 1.0] and meta["guidance_ramp"] == "linear"
    assert meta["negative_prompt"] is None
    for bad, message in ((["--push", "sharp", "--negative-rewards", "color=1"],
                          "--push or --negative-rewards"),
                         (["--guidance-interval", "0.5"], "--guidance-interval must be two numbers"),
                         (["--guidance-interval", "0.9,0.1"], "guidance interval must satisfy"),
                         (["--push", "nope"], "unknown reward 'nope'")):
        capsys.readouterr()
        code = generate_main(["--checkpoint", str(export), "--prompt", "x", "--out", str(tmp_path / "bad"),
                              *bad])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (bad, err)
        assert not (tmp_path / "bad").exists()


def test_cc12m_exports_miros_sampling_defaults() -> None:
    cfg = compose_config("train", ["+experiment=cc12m"])
    assert cfg.sampling.guidance == 7.0 and cfg.sampling.steps == 50
    assert cfg.sampling.negative_prompt == "" and cfg.sampling.guided_rewards is None
    assert cfg.sampling.guidance_interval is None and cfg.sampling.guidance_ramp == "constant"
    demo = compose_config("train", ["+experiment=shapes"])
    assert demo.sampling.guidance == 2.0 and demo.sampling.negative_prompt is None
