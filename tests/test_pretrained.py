"""The exported model format: round trips, and a one-line CheckpointError for every broken directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_REWARDS
from safetensors.torch import load_file
from tiny_models import SAMPLING, TEXT_CONFIG, export_tiny_model, tiny_model, tiny_text_encoder

from miro.data.bins import RewardBins
from miro.pretrained import (
    CONFIG,
    WEIGHTS,
    CheckpointError,
    file_hash,
    load_pretrained,
    save_pretrained,
    state_mismatch,
)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, scored_shapes: Path) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("export"), scored_shapes / "bins.json")


@pytest.fixture
def broken(tmp_path: Path, export: Path) -> Path:
    """A private copy of the export for a test to damage."""
    return Path(shutil.copytree(export, tmp_path / "model"))


def _one_line_error(path: Path, *expected: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message
    return message


def test_round_trip_restores_weights_config_bins_and_rewards(export: Path, scored_shapes: Path) -> None:
    model, text = tiny_model(), tiny_text_encoder()
    loaded = load_pretrained(export)
    for original, restored in ((model, loaded.model), (text, loaded.text_encoder)):
        want, got = original.state_dict(), restored.state_dict()
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    assert loaded.model.to_config() == model.to_config()
    assert loaded.reward_names == OFFLINE_REWARDS
    assert loaded.bins.to_json() == RewardBins.load(scored_shapes / "bins.json").to_json()
    assert loaded.image_size == 24 and loaded.sampling == SAMPLING and loaded.path == export
    assert not loaded.model.training and not loaded.text_encoder.training
    # The same prediction, not just the same tensors: text encoder and DiT are wired back together.
    x, t = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.8])
    rewards = torch.tensor([[1.0, 0.5, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    with torch.no_grad():
        want = model(x, t, *text(["a red circle", "two blue squares"]), rewards)
        got = loaded.model(x, t, *loaded.text_encoder(["a red circle", "two blue squares"]), rewards)
    torch.testing.assert_close(got, want)


def test_weights_file_holds_model_and_trained_text_encoder(export: Path) -> None:
    keys = load_file(str(export / WEIGHTS)).keys()
    assert any(k.startswith("model.blocks.") for k in keys)
    assert any(k.startswith("text_encoder.embed.") for k in keys)
    assert all(k.startswith(("model.", "text_encoder.")) for k in keys)


def test_a_weights_file_path_loads_its_directory(export: Path) -> None:
    assert load_pretrained(export / WEIGHTS).path == export


def test_model_without_rewards_or_bins_round_trips(tmp_path: Path) -> None:
    loaded = load_pretrained(export_tiny_model(tmp_path, None, reward_names=[]))
    assert loaded.reward_names == [] and loaded.bins is None


def test_save_refuses_reward_names_the_model_was_not_built_with(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ from the model's"):
        save_pretrained(
            tmp_path, tiny_model(), tiny_text_encoder(), TEXT_CONFIG, ["alignment"], None, 24, SAMPLING
        )


def test_missing_directory(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "nowhere", str(tmp_path / "nowhere"), "no such model directory")


@pytest.mark.parametrize("missing", [CONFIG, WEIGHTS])
def test_missing_file_is_named(broken: Path, missing: str) -> None:
    (broken / missing).unlink()
    _one_line_error(broken, str(broken), missing, "missing")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"format": "something/else"}), "format 'something/else'"),
    ],
)
def test_corrupt_config(broken: Path, content: str, expected: str) -> None:
    (broken / CONFIG).write_text(content)
    _one_line_error(broken, str(broken / CONFIG), expected)


def _edit_config(root: Path, **changes: object) -> None:
    config = json.loads((root / CONFIG).read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    (root / CONFIG).write_text(json.dumps(config))


def test_config_missing_a_field_names_it(broken: Path) -> None:
    _edit_config(broken, text_encoder=None)
    _one_line_error(broken, "missing field(s) text_encoder")


def test_config_with_an_unbuildable_model_names_the_field(broken: Path) -> None:
    config = json.loads((broken / CONFIG).read_text())
    _edit_config(broken, model=config["model"] | {"no_such_option": 1})
    _one_line_error(broken, "cannot build 'model'", "no_such_option")


def test_config_reward_names_must_match_the_model(broken: Path) -> None:
    _edit_config(broken, reward_names=["alignment"])
    _one_line_error(broken, "reward_names ['alignment'] differ")


def test_config_with_corrupt_bins(broken: Path) -> None:
    _edit_config(broken, bins={"format": "miro.bins/1", "n_bins": 8,
                               "rewards": {"alignment": {"edges": [2, 1], "counts": [1, 1, 1]}}})
    _one_line_error(broken, "cannot build 'bins'", "strictly increasing")


def test_weights_of_another_architecture(broken: Path, tmp_path: Path) -> None:
    other = save_pretrained(tmp_path / "other", tiny_model(hidden=48), tiny_text_encoder(), TEXT_CONFIG,
                            OFFLINE_REWARDS, None, 24, SAMPLING)
    shutil.copy(other / WEIGHTS, broken / WEIGHTS)
    message = _one_line_error(broken, str(broken / WEIGHTS), "model weights do not match", "of another shape")
    assert "[48" in message  # names a tensor and both shapes


def test_damaged_weights_file(broken: Path) -> None:
    (broken / WEIGHTS).write_bytes(b"\x00" * 64)
    _one_line_error(broken, str(broken / WEIGHTS), "not a readable safetensors file")


def test_state_mismatch_names_missing_unexpected_and_reshaped_keys() -> None:
    model = torch.nn.Linear(3, 2)
    assert state_mismatch(model, model.state_dict()) is None
    state = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    problem = state_mismatch(model, state)
    assert problem == "1 missing (bias); 1 unexpected (extra); 1 of another shape (weight [2, 4] vs [2, 3])"


def test_file_hash_is_a_stable_content_hash(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert file_hash(a) == file_hash(b) and len(file_hash(a)) == 24
    b.write_bytes(b"weightz")
    assert file_hash(a) != file_hash(b)
