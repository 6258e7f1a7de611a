"""``miro-generate`` end to end, in-process: outputs, metadata, prompts files, help and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OFFLINE_REWARDS
from PIL import Image
from tiny_models import export_tiny_model

from miro.cli.generate import main
from miro.pipeline import MiroPipeline
from miro.pretrained import WEIGHTS, file_hash


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, scored_shapes: Path) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("model"), scored_shapes / "bins.json")


def _png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


def test_writes_images_grid_and_one_json_per_image(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run" / "out"
    code = main(["--checkpoint", str(checkpoint), "--prompt", "a red circle", "--prompt", "two blue squares",
                 "--n", "2", "--rewards", "align=7, sharp=3", "--negative-rewards", "color=2", "--seed", "10",
                 "--out", str(out)])
    assert code == 0
    assert str(out) in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        *(f"{i:05d}.{ext}" for i in range(4) for ext in ("json", "png")), "grid.png"
    ]
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # the staging directory is gone
    metas = [json.loads((out / f"{i:05d}.json").read_text()) for i in range(4)]
    assert [m["prompt"] for m in metas] == ["a red circle"] * 2 + ["two blue squares"] * 2
    assert [m["seed"] for m in metas] == [10, 11, 12, 13]
    assert metas[0]["rewards"] == {"alignment": 7.0, "sharpness": 3.0, "colorfulness": 10.0,
                                   "compressibility": 10.0}
    assert metas[0]["negative_rewards"] == dict.fromkeys(OFFLINE_REWARDS, 0.0) | {"colorfulness": 2.0}
    assert (metas[0]["guidance"], metas[0]["steps"]) == (1.5, 3)  # the export's sampling defaults
    assert metas[0]["checkpoint_sha256"] == file_hash(checkpoint / WEIGHTS)
    # Each PNG is exactly what the Python API gives for its prompt and seed.
    pipe = MiroPipeline.from_pretrained(checkpoint)
    again = pipe(["two blue squares"], rewards="align=7,sharp=3", negative_rewards="color=2", seed=13,
                 output="tensor")
    assert (_png(out / "00003.png").int() - again[0].int()).abs().max() <= 1
    # 2 prompts x 2 images, upscaled 4x with 2 px padding
    assert Image.open(out / "grid.png").size == (2 * (24 * 4 + 2) + 2, 2 * (24 * 4 + 2) + 2)


def test_prompts_file_skips_blank_and_comment_lines(checkpoint: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# demo prompts\na red circle\n\n  a blue square  \n")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--prompts-file", str(prompts), "--steps", "1",
                 "--guidance", "0", "--out", str(out)]) == 0
    metas = [json.loads((out / f"{i:05d}.json").read_text()) for i in range(2)]
    assert [m["prompt"] for m in metas] == ["a red circle", "a blue square"]
    assert (metas[0]["steps"], metas[0]["guidance"]) == (1, 0.0)
    assert not (out / "00002.png").exists()


def test_help_lists_reward_aliases(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    table = text.split("reward names and aliases")[1].splitlines()[1:]
    aliases = {line.split()[0]: line.split(None, 1)[1].split(", ") for line in table if len(line.split()) > 1}
    assert {"align"} <= set(aliases["alignment"]) and {"sharp"} <= set(aliases["sharpness"])
    assert {"color", "colourfulness"} <= set(aliases["colorfulness"])
    assert "compress" in aliases["compressibility"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--rewards", "aesthetic=9"], "unknown reward 'aesthetic'"),
        (["--rewards", "alignment=12"], "must be between 0 and 10"),
        (["--negative-rewards", "alignment=-2"], "must be between 0 and 10"),
        (["--rewards", "alignment=1=2"], "malformed reward target"),
        (["--rewards", "alignment"], "malformed reward target"),
        (["--n", "0"], "--n must be at least 1"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    checkpoint: Path, tmp_path: Path, capsys, args: list[str], expected: str
) -> None:
    out = tmp_path / "out"
    code = main(["--checkpoint", str(checkpoint), "--prompt", "a red circle", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("miro-generate: ") and expected in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_and_prompts_file(tmp_path: Path, capsys, checkpoint: Path) -> None:
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "nope"), "--prompt", "a red circle", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such model directory" in err and str(tmp_path / "nope") in err
    missing_file = str(tmp_path / "p.txt")
    assert main(["--checkpoint", str(checkpoint), "--prompts-file", missing_file, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"prompt file {missing_file} does not exist" in err
    assert not out.exists()


def test_a_run_that_fails_midway_leaves_no_output(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    calls = []
    original = MiroPipeline.__call__

    def fail_on_second_batch(self: MiroPipeline, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MiroPipeline, "__call__", fail_on_second_batch)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["--checkpoint", str(checkpoint), "--prompt", "a red circle", "--n", "2", "--batch-size", "1",
              "--out", str(out)])
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []  # neither --out nor the staging directory


def test_a_bad_sampling_default_in_config_json_is_one_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    model = Path(shutil.copytree(checkpoint, tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    config["sampling"]["guidance_interval"] = [0.9, 0.1]
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert main(["--checkpoint", str(model), "--prompt", "a red circle", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json 'sampling': guidance interval must satisfy" in err
    assert not out.exists()
    # The command line's own interval is checked first, and named as the option.
    assert main(["--checkpoint", str(model), "--prompt", "a red circle", "--out", str(out),
                 "--guidance-interval", "0.9,0.1"]) == 2
    assert "--guidance-interval: guidance interval must satisfy" in capsys.readouterr().err


def test_a_second_run_into_the_same_out_leaves_only_its_own_images(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    (tmp_path / "out").mkdir()
    (out / "notes.txt").write_text("mine")  # not a file miro-generate writes: kept
    base = ["--checkpoint", str(checkpoint), "--prompt", "a red circle", "--steps", "1", "--out", str(out)]
    assert main([*base, "--n", "3"]) == 0
    assert main([*base, "--n", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.json", "00000.png", "grid.png", "notes.txt"]
    assert "removed 4 files of an earlier run's images" in capsys.readouterr().out
