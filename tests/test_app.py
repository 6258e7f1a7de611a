"""The web app's logic without a browser (no Gradio needed): its images are MiroPipeline's, its records
are miro-generate's, the push choice conditions the negative branch, bad input is a message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import OFFLINE_REWARDS
from tiny_models import export_tiny_model

from miro.app import AppInputError, AppModel, enlarged
from miro.cli import app as app_cli
from miro.cli import generate as generate_cli
from miro.pipeline import MiroPipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> AppModel:
    export = export_tiny_model(tmp_path_factory.mktemp("app_model") / "run" / "export", None)
    app = AppModel(MiroPipeline.from_pretrained(export), str(export), max_images=4)
    yield app
    app.close()


def test_images_and_records_are_the_pipelines_and_miro_generates(model: AppModel, tmp_path: Path) -> None:
    targets = {"alignment": 2.0, "sharpness": 7.5}
    gen = model.generate("a red circle", targets, seed=5, n=2, steps=2, guidance=2.0)
    pipe = model.pipe
    expected = pipe(["a red circle"] * 2, rewards=targets, guidance=2.0, steps=2, seed=[5, 6])
    assert [np.asarray(i).tolist() for i in gen.images] == [np.asarray(i).tolist() for i in expected]
    assert [r["seed"] for r in gen.records] == [5, 6] and model.seconds_per_image_step > 0
    # The record is the one miro-generate writes for the same request, key for key.
    out = tmp_path / "cli"
    assert generate_cli.main(["--checkpoint", model.checkpoint, "--prompt", "a red circle", "--n", "2",
                              "--rewards", "alignment=2,sharpness=7.5", "--steps", "2", "--guidance", "2",
                              "--seed", "5", "--out", str(out)]) == 0
    cli = json.loads((out / "00001.json").read_text())
    # the machine's description (load, threads) is of each process; everything else is identical
    assert cli.pop("compute")["precision"]["name"] == gen.records[1]["compute"]["precision"]["name"]
    assert {k: v for k, v in gen.records[1].items() if k != "compute"} == cli
    paths = model.save_records({"A": gen})
    assert [Path(p).name for p in paths] == ["A_seed5.json", "A_seed6.json"]
    assert json.loads(Path(paths[0]).read_text()) == gen.records[0]


def test_push_is_the_pipelines_push(model: AppModel) -> None:
    # Not every slider at 10: the negative branch copies the targets, with only the pushed reward at 0.
    targets = dict.fromkeys(OFFLINE_REWARDS, 10.0) | {"sharpness": 4.0}
    pushed = model.generate("two blue squares", targets, pushed="colorfulness", seed=1)
    plain = model.generate("two blue squares", targets, pushed="none", seed=1)
    record = pushed.records[0]
    assert record["push"] == "colorfulness"
    assert record["negative_rewards"] == targets | {"colorfulness": 0.0}
    assert plain.records[0]["push"] is None
    assert plain.records[0]["negative_rewards"] == dict.fromkeys(OFFLINE_REWARDS, 0.0)  # the model's default
    by_pipeline = model.pipe("two blue squares", rewards=targets, push="colorfulness", seed=1)
    assert np.array_equal(np.asarray(pushed.images[0]), np.asarray(by_pipeline[0]))
    assert not np.array_equal(np.asarray(pushed.images[0]), np.asarray(plain.images[0]))


def test_blank_negative_prompt_is_the_models_default(
    model: AppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model whose default negative branch is the empty prompt (cc12m's) keeps it when the box is blank,
    # as miro-generate without --negative-prompt does; a typed one replaces it.
    sampling = model.pipe.pretrained.config["sampling"]
    monkeypatch.setitem(model.pipe.pretrained.config, "sampling", sampling | {"negative_prompt": ""})
    blank = model.generate("a red circle", {}, negative_prompt="  ", steps=1).records[0]
    assert blank["negative_prompt"] == ""
    typed = model.generate("a red circle", {}, negative_prompt=" blurry ", steps=1).records[0]
    assert typed["negative_prompt"] == "blurry"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"prompt": "  "}, "Enter a prompt"), ({"n": 5}, "between 1 and 4"), ({"steps": 0}, "at least 1"),
     ({"pushed": "pick"}, "unknown reward 'pick'")],
)
def test_bad_input_is_a_message(model: AppModel, kwargs: dict, message: str) -> None:
    args = {"prompt": "a red circle", "targets": {}} | kwargs
    with pytest.raises(AppInputError, match=message):
        model.generate(**args)


def test_enlarged_is_a_whole_factor_of_nearest_pixels(model: AppModel) -> None:
    image = model.generate("a red circle", {}, steps=1).images[0]
    big = np.asarray(enlarged(image))
    assert big.shape == (24 * 11, 24 * 11, 3)
    assert np.array_equal(big[::11, ::11], np.asarray(image))


def test_miro_app_bad_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    assert app_cli.main(["--checkpoint", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("miro-app: ") and "no such model directory" in err and err.count("\n") == 1
