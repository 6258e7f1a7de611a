"""Generation: ``--rewards`` parsing, MiroPipeline determinism, per-image seeds and guidance paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OFFLINE_REWARDS
from PIL import Image
from tiny_models import export_tiny_model

from miro.flow.sampling import sample_euler
from miro.pipeline import (
    FALLBACK_SAMPLING,
    MiroPipeline,
    RewardSpecError,
    generate_images,
    image_grid,
    negative_targets,
    parse_reward_spec,
    sampling_settings,
    target_values,
    to_uint8,
)

PROMPTS = ["a red circle", "two blue squares and a green triangle", "a yellow square above a purple circle"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory, scored_shapes: Path) -> MiroPipeline:
    export = export_tiny_model(tmp_path_factory.mktemp("model"), scored_shapes / "bins.json")
    # fp32: the tests compare with float32 computations by hand; "auto" is bf16 on a CPU with AMX
    return MiroPipeline.from_pretrained(export, precision="fp32")


# -- --rewards parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("alignment=9,sharpness=8", {"alignment": 9.0, "sharpness": 8.0}),
        ("align=3, sharp=4.5 ,color=0", {"alignment": 3.0, "sharpness": 4.5, "colorfulness": 0.0}),
        (" compress = 10 ", {"compressibility": 10.0}),
        ("Alignment=2.25,COLOURFULNESS=1e0", {"alignment": 2.25, "colorfulness": 1.0}),
        ("alignment=0", {"alignment": 0.0}),
        ("", {}),
        ("   ", {}),
        (None, {}),
        ({"align": 7, "sharpness": "6.5"}, {"alignment": 7.0, "sharpness": 6.5}),
    ],
)
def test_parse_good_reward_specs(spec: object, expected: dict[str, float]) -> None:
    assert parse_reward_spec(spec, OFFLINE_REWARDS) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "aesthetic=3",
            "unknown reward 'aesthetic' for this model; valid rewards: alignment, sharpness, "
            "colorfulness, compressibility",
        ),
        ("foo=1", "unknown reward 'foo'"),
        ("alignment=11", "must be between 0 and 10, got 11"),
        ("sharp=-1", "must be between 0 and 10, got -1"),
        ("alignment=nan", "must be between 0 and 10"),
        ("alignment=", "malformed reward target 'alignment='"),
        ("alignment=1=2", "malformed reward target 'alignment=1=2'"),
        ("x", "malformed reward target 'x'"),
        ("=3", "malformed reward target '=3'"),
        ("alignment=3,", "malformed reward target ''"),
        ("alignment=high", "reward target for 'alignment' is not a number: 'high'"),
        ("align=3,alignment=4", "reward 'alignment' is given twice (as 'align' and 'alignment')"),
        ({"alignment": "x"}, "not a number"),
        ({"alignment": None}, "not a number"),
        (3, "must be a string or a mapping"),
    ],
)
def test_parse_bad_reward_specs_one_line(spec: object, expected: str) -> None:
    with pytest.raises(RewardSpecError) as info:
        parse_reward_spec(spec, OFFLINE_REWARDS)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unnamed_rewards_default_to_top_and_negatives_to_zero() -> None:
    targets = parse_reward_spec("color=5", OFFLINE_REWARDS)
    assert target_values(OFFLINE_REWARDS, targets).tolist() == [1.0, 1.0, 0.5, 1.0]
    assert target_values(OFFLINE_REWARDS, targets, default=0.0).tolist() == [0.0, 0.0, 0.5, 0.0]


# -- the pipeline ----------------------------------------------------------------------------------------


def test_pipeline_returns_images(pipe: MiroPipeline) -> None:
    images = pipe(PROMPTS[:2], rewards={"align": 9})
    assert len(images) == 2
    assert all(isinstance(im, Image.Image) and im.size == (24, 24) and im.mode == "RGB" for im in images)
    tensor = pipe(PROMPTS[:2], rewards="align=9", output="tensor")
    assert tensor.dtype == torch.uint8 and tensor.shape == (2, 3, 24, 24)
    assert torch.equal(tensor[0].permute(1, 2, 0), torch.from_numpy(np.array(images[0])))
    assert tensor.float().std() > 10  # the perturbed model draws something, not a flat image


def test_same_seed_same_images_other_seed_other_images(pipe: MiroPipeline) -> None:
    a = pipe(PROMPTS, seed=3, output="tensor")
    assert torch.equal(a, pipe(PROMPTS, seed=3, output="tensor"))
    assert (a.int() - pipe(PROMPTS, seed=4, output="tensor").int()).abs().float().mean() > 5


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """uint8 images equal up to one level: batched and single forwards round differently (~1e-6)."""
    torch.testing.assert_close(a.int(), b.int(), atol=1, rtol=0)


def test_image_i_of_a_batch_is_its_prompt_alone_with_seed_plus_i(pipe: MiroPipeline) -> None:
    batch = pipe(PROMPTS, seed=5, output="tensor")
    for i, prompt in enumerate(PROMPTS):
        _close(batch[i], pipe([prompt], seed=5 + i, output="tensor")[0])
    # an explicit seed list means one seed per image
    picked = pipe([PROMPTS[2], PROMPTS[0]], seed=[7, 5], output="tensor")
    _close(picked[1], batch[0])
    _close(picked[0], pipe([PROMPTS[2]], seed=7, output="tensor")[0])


class ForwardLog:
    """Records the batch size of every forward of a module (a forward hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(lambda m, args, out: self.batches.append(out.shape[0]))

    def __enter__(self) -> ForwardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _noise(seeds: list[int]) -> torch.Tensor:
    return torch.stack([torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(s)) for s in seeds])


def test_guidance_zero_is_the_conditional_prediction_alone(pipe: MiroPipeline) -> None:
    model, steps = pipe.pretrained.model, 4
    positive = target_values(pipe.reward_names, {"alignment": 6.0})[None].expand(2, -1)
    tokens, mask = pipe.encode_text(PROMPTS[:2])
    with torch.no_grad():
        conditional = lambda x, t: model(x, t, tokens, mask, positive)  # noqa: E731
        want = to_uint8(sample_euler(conditional, _noise([0, 1]), steps=steps))
    with ForwardLog(model) as log:
        got = pipe(PROMPTS[:2], rewards={"alignment": 6}, guidance=0.0, steps=steps, seed=0, output="tensor",
                   snap=False)
    assert log.batches == [2] * steps  # no negative branch is evaluated
    assert torch.equal(got, want)
    # ... so the negative branch's targets cannot matter
    other = pipe(
        PROMPTS[:2],
        rewards={"alignment": 6},
        negative_rewards="align=10,sharp=10",
        guidance=0.0,
        steps=steps,
        output="tensor",
        snap=False,
    )
    assert torch.equal(other, got)


def test_guided_sampling_runs_both_branches_in_one_forward(pipe: MiroPipeline) -> None:
    model, steps, w = pipe.pretrained.model, 3, 2.0
    names = pipe.reward_names
    positive = target_values(names, {})[None].expand(2, -1)
    negative = target_values(names, {"sharpness": 10}, default=0.0)[None].expand(2, -1)
    tokens, mask = pipe.encode_text(PROMPTS[:2])

    def two_forwards(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_pos, v_neg = model(x, t, tokens, mask, positive), model(x, t, tokens, mask, negative)
        return v_pos + w * (v_pos - v_neg)

    with torch.no_grad():
        want = to_uint8(sample_euler(two_forwards, _noise([0, 1]), steps=steps))
    with ForwardLog(model) as log:
        got = pipe(PROMPTS[:2], negative_rewards={"sharp": 10}, guidance=w, steps=steps, output="tensor")
    assert log.batches == [4] * steps
    _close(got, want)


def test_targets_and_negative_prompt_change_guided_images(pipe: MiroPipeline) -> None:
    base = pipe(PROMPTS[:2], guidance=3.0, output="tensor").int()
    for kwargs in (
        {"rewards": {"alignment": 0}},
        {"negative_rewards": {"colorfulness": 10}},
        {"negative_prompt": ""},
    ):
        changed = pipe(PROMPTS[:2], guidance=3.0, output="tensor", **kwargs).int()
        assert (changed - base).abs().float().mean() > 0.5, kwargs


def test_defaults_come_from_the_export(pipe: MiroPipeline) -> None:
    assert pipe.sampling() == FALLBACK_SAMPLING | {"guidance": 1.5, "steps": 3, "shift": 1.0}
    assert pipe.sampling(guidance=0.0, steps=7) == pipe.sampling() | {"guidance": 0.0, "steps": 7}
    assert sampling_settings({}, shift=3) == FALLBACK_SAMPLING | {"shift": 3.0}  # an export without settings
    with ForwardLog(pipe.pretrained.model) as log:
        pipe(PROMPTS[:1])
    assert log.batches == [2, 2, 2]


def test_model_without_rewards_rejects_targets(tmp_path: Path) -> None:
    plain = MiroPipeline.from_pretrained(export_tiny_model(tmp_path, None, reward_names=[]))
    assert plain(PROMPTS[:1], output="tensor").shape == (1, 3, 24, 24)
    with pytest.raises(RewardSpecError, match="without reward conditioning"):
        plain(PROMPTS[:1], rewards={"alignment": 3})


def test_bad_output_kind_and_seed_count(pipe: MiroPipeline) -> None:
    with pytest.raises(ValueError, match="output must be"):
        pipe(PROMPTS[:1], output="numpy")
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        generate_images(pipe.pretrained.model, pipe.encode_text, PROMPTS[:1], 24, seed=[1, 2])


def test_image_grid_layout() -> None:
    images = torch.arange(1, 6, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    grid = image_grid(images, ncol=3, pad=1)
    assert grid.shape == (3, 2 * 3 + 1, 3 * 3 + 1)
    assert grid[0, 1, 1] == 1 and grid[0, 1, 4] == 2 and grid[0, 4, 4] == 5
    assert grid[0, 0, 0] == 255 and grid[0, 4, 7] == 255  # padding, and the empty sixth cell
    assert image_grid(images, ncol=2, pad=0, upscale=2).shape == (3, 12, 8)


def test_bf16_sampling_is_deterministic_and_close_to_fp32(pipe: MiroPipeline) -> None:
    fast = MiroPipeline(pipe.pretrained, precision="bf16")
    a = fast(PROMPTS, seed=2, output="tensor")
    assert torch.equal(a, fast(PROMPTS, seed=2, output="tensor"))
    full = pipe(PROMPTS, seed=2, output="tensor")
    assert (a.float() - full.float()).abs().mean() < 2.0  # rounding, not a different image
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        MiroPipeline(pipe.pretrained, precision="fp16")


def test_negative_branch_all_low_by_default_or_only_the_guided_rewards() -> None:
    names = ["alignment", "sharpness", "colorfulness"]
    requested = {"sharpness": 4.0}
    assert negative_targets(names, requested, None) == {
        "alignment": 0.0,
        "sharpness": 0.0,
        "colorfulness": 0.0,
    }
    assert negative_targets(names, requested, None, ["align"]) == {
        "alignment": 0.0,
        "sharpness": 4.0,
        "colorfulness": 10.0,
    }
    # An explicit negative spec wins; rewards it does not name are 0.
    assert negative_targets(names, requested, "color=3", ["alignment"]) == {
        "alignment": 0.0,
        "sharpness": 0.0,
        "colorfulness": 3.0,
    }
    with pytest.raises(RewardSpecError, match="unknown reward 'aesthetic'"):
        negative_targets(names, requested, None, ["aesthetic"])
