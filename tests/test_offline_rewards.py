"""Offline rewards: each measures what its name says, and noise does not buy a higher score."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from miro.rewards import available_rewards, build_reward
from miro.rewards.offline import (
    ColorfulnessReward,
    CompressibilityReward,
    SharpnessReward,
    gaussian_filter,
    gradient_energy,
    hasler_susstrunk,
    median_filter,
    noise_sigma,
)

N_IMAGES = 8
SIZE = 32


# --------------------------------------------------------------------------------------------------
# Test images: a few filled shapes on a plain background, antialiased like the shapes world.


def scene(seed: int, size: int = SIZE, supersample: int = 4) -> Image.Image:
    rng = np.random.default_rng(seed)
    big = size * supersample
    background = tuple(int(v) for v in rng.integers(30, 220, 3))
    img = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 4))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        side = rng.uniform(0.25, 0.45) * big
        x0, y0 = rng.uniform(0, big - side, 2)
        box = (x0, y0, x0 + side, y0 + side)
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)], fill=colour)
    return img.resize((size, size), Image.Resampling.BOX)


def to_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous()


def from_float(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


def blur(im: Image.Image, radius: float) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else im


def gaussian_noise(im: Image.Image, sigma: float, seed: int) -> Image.Image:
    rng = np.random.default_rng(1000 + seed)
    return from_float(np.asarray(im, dtype=np.float64) + rng.normal(0, sigma, (im.height, im.width, 3)))


def blocky_noise(
    im: Image.Image, sigma: float, seed: int, block: int = 4, colour: bool = True
) -> Image.Image:
    """Noise constant on ``block`` x ``block`` squares: what guidance produced against a Laplacian reward."""
    rng = np.random.default_rng(2000 + seed)
    cells = rng.normal(0, sigma, (im.height // block + 1, im.width // block + 1, 3 if colour else 1))
    noise = np.repeat(np.repeat(cells, block, 0), block, 1)[: im.height, : im.width]
    return from_float(np.asarray(im, dtype=np.float64) + noise)


def low_contrast(im: Image.Image, factor: float) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    return from_float(arr.mean() + factor * (arr - arr.mean()))


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def colour_cast(im: Image.Image, amount: float, tint: tuple[int, int, int] = (255, 170, 60)) -> Image.Image:
    """Blend towards a one-hue (sepia-like) rendering of the image."""
    grey = np.asarray(im.convert("L"), dtype=np.float64)[..., None] / 255.0
    return from_float((1 - amount) * np.asarray(im, dtype=np.float64) + amount * grey * np.array(tint))


def laplacian_variance(batch: torch.Tensor) -> np.ndarray:
    """The naive sharpness score this module replaces (for showing that the tests can fail)."""
    y = batch.float().mean(dim=1, keepdim=True)
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(y, k).flatten(1).var(dim=1).numpy()


@pytest.fixture(scope="module")
def clean() -> list[Image.Image]:
    return [scene(i) for i in range(N_IMAGES)]


def scores(reward, images: list[Image.Image]) -> np.ndarray:
    return reward.score(to_batch(images), [""] * len(images)).numpy()


# --------------------------------------------------------------------------------------------------
# Registry and interface


def test_registered_with_aliases():
    names = available_rewards()
    assert {"sharpness", "colorfulness", "compressibility"} <= set(names)
    assert isinstance(build_reward("sharp"), SharpnessReward)
    assert isinstance(build_reward("color"), ColorfulnessReward)
    assert isinstance(build_reward("compress"), CompressibilityReward)
    assert isinstance(build_reward({"_target_": "miro.rewards.offline.SharpnessReward", "median_size": 3}),
                      SharpnessReward)


def test_version_names_non_default_settings():
    assert SharpnessReward().version == "1"
    assert SharpnessReward(median_size=5, coarse_sigma=1.5).version == "1"
    assert SharpnessReward(median_size=3).version == "1+median_size=3"
    plain = ColorfulnessReward(noise_compensation=False, median_size=1)
    assert plain.version == "1+median_size=1,noise_compensation=False"
    assert CompressibilityReward(quality=80).version == "1+quality=80"


@pytest.mark.parametrize("cls", [SharpnessReward, ColorfulnessReward, CompressibilityReward])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 5), (48, 64)])
def test_any_size_gives_finite_float32(cls, hw):
    images = torch.randint(0, 256, (3, 3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = cls(batch_size=2).score(images, ["", "", ""])
    assert out.dtype == torch.float32 and out.shape == (3,) and torch.isfinite(out).all()


def test_flat_grey_image_has_no_sharpness_and_no_colour():
    flat = torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)
    assert SharpnessReward().score(flat, ["", ""]).tolist() == [0.0, 0.0]
    assert ColorfulnessReward().score(flat, ["", ""]).tolist() == [0.0, 0.0]


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        median_filter(torch.zeros(1, 1, 4, 4), 4)
    with pytest.raises(ValueError, match="edge_fraction"):
        SharpnessReward(edge_fraction=0.6, flat_fraction=0.6)
    with pytest.raises(ValueError, match="quality"):
        CompressibilityReward(quality=0)
    with pytest.raises(ValueError, match="uint8"):
        SharpnessReward().score(torch.zeros(1, 3, 8, 8), [""])


# --------------------------------------------------------------------------------------------------
# Filters


def test_filters_against_hand_values():
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 9.0
    assert median_filter(spike, 3).abs().max() == 0  # an isolated pixel is not an edge
    step = torch.zeros(1, 1, 6, 6)
    step[..., 3:] = 1.0
    assert torch.equal(median_filter(step, 3), step)  # a straight step edge survives unchanged
    const = torch.full((1, 2, 7, 9), 3.0)
    assert torch.allclose(gaussian_filter(const, 1.5), const)
    ramp = torch.arange(8.0).repeat(8, 1).view(1, 1, 8, 8)  # rises by 1 per pixel along x
    assert torch.allclose(gradient_energy(ramp)[..., 1:-1, 1:-1], torch.ones(1, 1, 6, 6))


@pytest.mark.parametrize("size", [3, 5, 7])
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (1, 2, 2, 3), (3, 1, 9, 7), (2, 3, 20, 20)])
def test_median_filter_equals_sorting_every_window(size, shape):
    x = torch.randint(0, 6, shape, generator=torch.Generator().manual_seed(size)).float()  # many ties
    r = size // 2
    windows = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate").unfold(2, size, 1).unfold(3, size, 1)
    expected = windows.reshape(*shape, -1).sort(dim=-1).values[..., size * size // 2]
    assert torch.equal(median_filter(x, size), expected)


def test_noise_sigma_sees_noise_not_edges():
    g = torch.Generator().manual_seed(0)
    noise = 10.0 * torch.randn(1, 1, 64, 64, generator=g)
    assert noise_sigma(noise).item() == pytest.approx(10.0, rel=0.1)
    step = torch.zeros(1, 1, 64, 64)
    step[..., 20:] = 200.0
    assert noise_sigma(step).item() == 0.0


# --------------------------------------------------------------------------------------------------
# Sharpness


def test_sharpness_falls_with_every_step_of_blur(clean):
    reward = SharpnessReward()
    levels = np.stack([scores(reward, [blur(im, r) for im in clean]) for r in (0.0, 0.5, 1.0, 2.0)])
    assert (np.diff(levels, axis=0) < 0).all(), levels


@pytest.mark.parametrize("base_blur", [0.0, 1.0])
@pytest.mark.parametrize(
    "noise",
    [
        ("gauss", 5), ("gauss", 15), ("gauss", 30),
        ("blocky4", 10), ("blocky4", 30), ("blocky4", 60),
        ("blocky4_grey", 10), ("blocky4_grey", 30), ("blocky4_grey", 60),
        ("blocky2", 30),
    ],
)
def test_noise_never_raises_sharpness(clean, base_blur, noise):
    kind, sigma = noise
    base = [blur(im, base_blur) for im in clean]
    if kind == "gauss":
        noisy = [gaussian_noise(im, sigma, i) for i, im in enumerate(base)]
    else:
        block = 2 if kind == "blocky2" else 4
        colour = not kind.endswith("grey")
        noisy = [blocky_noise(im, sigma, i, block, colour) for i, im in enumerate(base)]
    reward = SharpnessReward()
    before, after = scores(reward, base), scores(reward, noisy)
    assert (after < before).all(), (before, after)
    # The naive score is fooled by the very same images: this test can fail.
    assert (laplacian_variance(to_batch(noisy)) > laplacian_variance(to_batch(base))).all()


def test_clean_sharp_images_score_highest(clean):
    reward = SharpnessReward()
    best = scores(reward, clean)
    for degraded in (
        [blur(im, 0.7) for im in clean],
        [gaussian_noise(im, 10, i) for i, im in enumerate(clean)],
        [blocky_noise(im, 20, i) for i, im in enumerate(clean)],
        [jpeg(im, 10) for im in clean],
    ):
        assert (scores(reward, degraded) < best).all()


def test_sharpness_of_a_step_ignores_its_contrast():
    reward = SharpnessReward()
    strong = np.zeros((32, 32, 3), np.uint8)
    strong[:, 16:] = 255
    weak = np.full((32, 32, 3), 100, np.uint8)
    weak[:, 16:] = 150
    parts = reward.components(to_batch([Image.fromarray(strong), Image.fromarray(weak)]))
    assert parts["purity"].tolist() == [1.0, 1.0]  # no detail away from the edge
    assert parts["score"][1].item() == pytest.approx(parts["score"][0].item(), rel=1e-4)
    assert parts["steepness"][0].item() == pytest.approx(2.82, abs=0.01)  # documented value for an ideal step


def test_low_contrast_leaves_sharpness_alone(clean):
    reward = SharpnessReward()
    ratio = scores(reward, [low_contrast(im, 0.5) for im in clean]) / scores(reward, clean)
    assert np.abs(ratio - 1).max() < 0.05


# --------------------------------------------------------------------------------------------------
# Colorfulness


def test_hasler_susstrunk_against_hand_computation():
    # One red and one blue pixel: rg = (255, 0), yb = (127.5, -255).
    image = torch.tensor([[[255.0, 0.0]], [[0.0, 0.0]], [[0.0, 255.0]]]).unsqueeze(0)
    std_rg, mean_rg = 127.5, 127.5
    std_yb, mean_yb = 191.25, -63.75
    expected = math.sqrt(std_rg**2 + std_yb**2) + 0.3 * math.sqrt(mean_rg**2 + mean_yb**2)
    assert hasler_susstrunk(image).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(272.62, abs=0.01)


def test_plain_settings_give_the_published_metric(clean):
    plain = ColorfulnessReward(median_size=1, smooth_sigma=0.0, noise_compensation=False)
    batch = to_batch(clean)
    expected = hasler_susstrunk(batch.float()).numpy()
    assert np.allclose(plain.score(batch, [""] * N_IMAGES).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("sigma", [10, 25])
def test_colour_noise_does_not_raise_colorfulness(clean, sigma):
    noisy = [gaussian_noise(im, sigma, i) for i, im in enumerate(clean)]
    reward = ColorfulnessReward()
    before, after = scores(reward, clean), scores(reward, noisy)
    assert after.mean() < before.mean()
    assert (after <= before * 1.03).all(), after / before  # single images: estimation error only
    plain = ColorfulnessReward(median_size=1, smooth_sigma=0.0, noise_compensation=False)
    assert scores(plain, noisy).mean() > scores(plain, clean).mean()  # the plain metric is fooled


def test_grey_noise_does_not_raise_colorfulness(clean):
    reward = ColorfulnessReward()
    before = scores(reward, clean)
    after = scores(reward, [blocky_noise(im, 30, i, colour=False) for i, im in enumerate(clean)])
    assert (after <= before * 1.01).all()


def test_colour_patches_count_as_colour_but_cost_sharpness(clean):
    """Documented trade-off: random colour patches are visible colour; sharpness is the guard."""
    patched = [blocky_noise(im, 40, i, block=2) for i, im in enumerate(clean)]
    assert scores(ColorfulnessReward(), patched).mean() > scores(ColorfulnessReward(), clean).mean()
    assert (scores(SharpnessReward(), patched) < 0.7 * scores(SharpnessReward(), clean)).all()


@pytest.mark.parametrize(
    "degrade",
    [lambda im: low_contrast(im, 0.5), lambda im: colour_cast(im, 0.6), lambda im: jpeg(im, 10),
     lambda im: blur(im, 1.0)],
    ids=["low_contrast", "colour_cast", "jpeg", "blur"],
)
def test_washed_out_colourful_images_are_less_colourful(clean, degrade):
    reward = ColorfulnessReward()
    before = scores(reward, clean)
    colourful = before > 40  # above "moderately colourful" on Hasler & Suesstrunk's scale
    assert colourful.sum() >= N_IMAGES // 2
    after = scores(reward, [degrade(im) for im in clean])
    assert (after[colourful] < before[colourful]).all()


def test_a_cast_colours_a_grey_image():
    """The other side of a cast: tinting a grey scene adds colour (the mean term of M), as it looks."""
    grey = scene(0).convert("L").convert("RGB")
    reward = ColorfulnessReward()
    assert scores(reward, [grey])[0] < 1.0 < scores(reward, [colour_cast(grey, 0.6)])[0]


def test_low_contrast_halves_colorfulness(clean):
    reward = ColorfulnessReward()
    ratio = scores(reward, [low_contrast(im, 0.5) for im in clean]) / scores(reward, clean)
    assert np.allclose(ratio, 0.5, atol=0.03)  # M is linear in contrast around the mean colour


# --------------------------------------------------------------------------------------------------
# Compressibility


def test_compressibility_is_negative_jpeg_kilobytes(clean):
    sizes = []
    for im in clean:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
        sizes.append(len(buf.getvalue()))
    assert np.allclose(scores(CompressibilityReward(), clean), -np.array(sizes) / 1000.0)
    per_pixel = scores(CompressibilityReward(per_pixel=True), clean)
    assert np.allclose(per_pixel, -8.0 * np.array(sizes) / (SIZE * SIZE))


@pytest.mark.parametrize("sigma", [5, 20])
def test_noise_makes_images_less_compressible(clean, sigma):
    reward = CompressibilityReward()
    before = scores(reward, clean)
    assert (scores(reward, [gaussian_noise(im, sigma, i) for i, im in enumerate(clean)]) < before).all()
    assert (scores(reward, [blocky_noise(im, sigma, i) for i, im in enumerate(clean)]) < before).all()
