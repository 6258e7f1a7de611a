"""The shape probe (miro.shapes.probe): what docs/demo.md's diagnosis of the demo's blobs rests on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import export_tiny_model
from torch import nn

from miro.pipeline import MiroPipeline
from miro.shapes.captions import COLOURS, SHAPES
from miro.shapes.probe import caption_swap_losses, main, shape_accuracy, single_object_scenes
from miro.shapes.scenes import Scene, ShapeObject, render_scene


def _renderer(shape_of: dict[str, str]):
    """A stand-in generator that draws the prompt's colour as the shape ``shape_of[prompt shape]``."""

    def generate(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        assert len(prompts) == len(seeds)
        images = []
        for prompt in prompts:
            _, colour, shape = prompt.split()
            obj = ShapeObject(shape_of[shape], colour, (0.5, 0.5), 0.45)
            image = np.asarray(render_scene(Scene("charcoal", (obj,)), 24))
            images.append(torch.from_numpy(image.copy()).permute(2, 0, 1))
        return torch.stack(images)

    return generate


def test_shape_accuracy_scores_right_and_wrong_shapes_as_the_detector_sees_them() -> None:
    right = shape_accuracy(_renderer({s: s for s in SHAPES}), per_cell=2, batch=5)
    assert right.n == 2 * len(SHAPES) * len(COLOURS)
    assert (right.one_object, right.shape_correct, right.shape_and_colour) == (1.0, 1.0, 1.0)
    assert right.confusion["square"] == {"square": 2 * len(COLOURS)}

    rotated = {"circle": "square", "square": "triangle", "triangle": "circle"}
    wrong = shape_accuracy(_renderer(rotated), per_cell=1)
    assert wrong.shape_correct == 0.0 and wrong.one_object == 1.0
    assert wrong.confusion == {s: {rotated[s]: len(COLOURS)} for s in SHAPES}


class _TextBlind(nn.Module):
    """Predicts velocity 0 whatever the caption: its loss is E|noise - x0|^2 and swapping words costs 0."""

    image_size = 24

    def forward(self, x, t, tokens, mask, rewards=None):  # noqa: ANN001, ANN201
        return torch.zeros_like(x)


def test_caption_swap_losses_by_hand_for_a_model_that_ignores_text() -> None:
    def encode(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(captions), 2, 4), torch.ones(len(captions), 2, dtype=torch.bool)

    losses = caption_swap_losses(_TextBlind(), encode, num_rewards=4, times=(0.8, 0.3), n=16, seed=5)
    x0, true, shape_swapped, colour_swapped = single_object_scenes(16, 24, (0.3, 0.5), seed=5)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))
    expected = float((noise - x0).pow(2).mean())
    assert [s.t for s in losses] == [0.8, 0.3]
    for s in losses:
        assert s.true_caption == pytest.approx(expected, rel=1e-6)
        assert s.shape_swapped == 0.0 and s.colour_swapped == 0.0
    # the swapped captions differ from the true one in exactly the named word
    for a, b, c in zip(true, shape_swapped, colour_swapped, strict=True):
        assert a.split()[1] == b.split()[1] and a.split()[2] != b.split()[2]
        assert a.split()[2] == c.split()[2] and a.split()[1] != c.split()[1]
    with pytest.raises(ValueError, match="flow times"):
        caption_swap_losses(_TextBlind(), encode, num_rewards=0, times=(1.0,), n=2)


def test_caption_swap_losses_see_a_model_that_reads_the_caption(tmp_path: Path) -> None:
    pipe = MiroPipeline.from_pretrained(export_tiny_model(tmp_path / "model", None))
    losses = caption_swap_losses(pipe.pretrained.model, pipe.encode_text, len(pipe.reward_names), n=8)
    assert all(np.isfinite(s.true_caption) and s.shape_swapped != 0.0 for s in losses)


def test_cli_prints_and_writes_the_numbers_and_refuses_a_missing_model(tmp_path: Path, capsys) -> None:
    export = export_tiny_model(tmp_path / "model", None)
    out = tmp_path / "probe" / "probe.json"
    argv = ["--checkpoint", str(export), "--per-cell", "1", "--scenes", "4", "--precision", "fp32"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "single-object prompts: 18" in printed and f"Wrote {out}" in printed
    numbers = json.loads(out.read_text())
    assert numbers["accuracy"]["n"] == 18 and len(numbers["swap_losses"]) == 7
    assert main(["--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no such model directory" in capsys.readouterr().err
