"""Offline image-quality rewards: sharpness, colorfulness and JPEG compressibility.

They need no weights, run on a CPU and give the embedded "shapes" world quality axes to condition on.
A generator trained with reward conditioning, and pushed beyond the data by guidance, satisfies a
reward by *any* means, so each one is built to measure what its name says and not something noise
can supply:

* the textbook sharpness score, variance of the Laplacian, rises with every kind of noise; in the
  feasibility run, guidance towards high "sharpness" produced blocky noise scoring 12x the data mean.
  :class:`SharpnessReward` measures how steep the *real* edges are and counts detail that is not on
  them against the image, so noise lowers it.
* Hasler-Suesstrunk colorfulness grows with colour noise; :class:`ColorfulnessReward` scores the
  denoised image and subtracts what the remaining noise adds.

All three take uint8 RGB images ``[B, 3, H, W]`` of any size and return float32 ``[B]``; larger is
better. Filter sizes are in pixels and were chosen on 32x32 images; pass other values for much larger
images.
"""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from miro.rewards.base import RewardModel, register_reward

# Most elements the median filter's working set may hold (B * C * H * W * (k * k // 2 + 2)): a batch of
# large images is filtered in pieces instead of allocating gigabytes.
_MEDIAN_BUDGET = 1 << 24


def versioned(base: str, reward: RewardModel, **params: object) -> str:
    """``base`` plus every parameter that differs from its default, e.g. ``1+median_size=3``.

    Scores computed with other settings are different scores; putting the settings in the version
    lets bins and merged annotations tell them apart without anyone remembering to bump it.
    """
    defaults = {k: p.default for k, p in inspect.signature(type(reward).__init__).parameters.items()}
    changed = sorted(f"{k}={v}" for k, v in params.items() if defaults.get(k) != v)
    return "+".join([base, ",".join(changed)]) if changed else base


# --------------------------------------------------------------------------------------------------
# Filters on tensors [B, C, H, W]. Borders replicate the edge pixel, so a flat image stays flat.


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel ``size`` x ``size`` median (``size`` odd; 1 or less returns ``x``).

    Forgetful selection (see N. Devillard, "Fast median search: an ANSI C implementation", 1998): of
    the first ``n // 2 + 2`` window values, the smallest and the largest cannot be the median; drop both,
    take in the next value, repeat. Done with elementwise min/max on whole shifted images, it is exact
    (ties included) and ~5x faster than sorting unfolded windows.
    """
    if size <= 1:
        return x
    if size % 2 == 0:
        raise ValueError(f"median filter size must be odd, got {size}")
    r = size // 2
    b, c, h, w = x.shape
    keep = size * size // 2 + 2
    step = max(1, _MEDIAN_BUDGET // max(1, c * h * w * keep))
    out = []
    for i in range(0, b, step):
        padded = F.pad(x[i : i + step], (r, r, r, r), mode="replicate")
        window = [padded[..., dy : dy + h, dx : dx + w] for dy in range(size) for dx in range(size)]
        kept, incoming = window[:keep], window[keep:]
        while True:
            for j in range(len(kept) - 1):  # bubble the largest to the end
                kept[j], kept[j + 1] = _ordered(kept[j], kept[j + 1])
            for j in range(len(kept) - 2, 0, -1):  # and the smallest to the front
                kept[j - 1], kept[j] = _ordered(kept[j - 1], kept[j])
            kept = kept[1:-1]
            if not incoming:
                break
            kept.append(incoming.pop(0))
        out.append(kept[0])
    return torch.cat(out)


def _ordered(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.minimum(a, b), torch.maximum(a, b)


def gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with kernel radius ceil(3 sigma); sigma <= 0 returns ``x``.

    Sums of shifted slices rather than a grouped convolution: several times faster on a CPU for the
    small images and kernels used here.
    """
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3.0 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    taps = (taps / taps.sum()).tolist()
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = sum(k * padded[..., :, i : i + w] for i, k in enumerate(taps))
    padded = F.pad(x, (0, 0, r, r), mode="replicate")
    return sum(k * padded[..., i : i + h, :] for i, k in enumerate(taps))


def gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """Squared Sobel gradient magnitude summed over channels -> [B, 1, H, W].

    The Sobel kernels are divided by 8, so a ramp rising by 1 per pixel has energy 1.
    """
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")

    def at(dy: int, dx: int) -> torch.Tensor:
        return p[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gx = (at(-1, 1) - at(-1, -1) + 2 * (at(0, 1) - at(0, -1)) + at(1, 1) - at(1, -1)) / 8
    gy = (at(1, -1) - at(-1, -1) + 2 * (at(1, 0) - at(-1, 0)) + at(1, 1) - at(-1, 1)) / 8
    return (gx**2 + gy**2).sum(dim=1, keepdim=True)


def noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Robust per-channel standard deviation of white noise in ``x`` [B, C, H, W] -> [B, C].

    Immerkaer's operator (1996, "Fast noise variance estimation": a difference of two Laplacians, zero
    on flat and linearly varying regions, variance 36 sigma^2 on white noise) with the median absolute
    response instead of the mean, so edges, which cover a minority of pixels, do not count as noise.
    Images smaller than 3x3 give 0.
    """
    b, c, h, w = x.shape
    if h < 3 or w < 3:
        return torch.zeros(b, c, dtype=x.dtype, device=x.device)
    k = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=x.dtype, device=x.device)
    response = F.conv2d(x.reshape(b * c, 1, h, w), k.view(1, 1, 3, 3)).reshape(b, c, -1)
    return 1.4826 * response.abs().median(dim=2).values / 6.0


# --------------------------------------------------------------------------------------------------
# Sharpness


@register_reward
class SharpnessReward(RewardModel):
    """Steepness of the image's real edges, discounted by fine detail that is not on them.

    On RGB images Y in [0, 1] (colour rather than luma: yellow on light grey has almost no luma edge):

    1. ``D = median(Y)`` per channel (``median_size``) removes pixel noise and keeps step edges (a
       median filter leaves monotone edge profiles unchanged, so a blurred edge stays as blurred).
    2. Gradient energies of ``D`` summed over channels, at three scales: fine ``f = |grad D|^2``,
       coarse ``c = |grad (G_coarse * D)|^2`` and region ``r = |grad (G_region * D)|^2``.
    3. The ``edge_fraction`` of pixels with the largest ``r`` form the edge band E, the
       ``flat_fraction`` with the smallest ``r`` the flat region F. ``r`` is smoothed so much that
       pixel- and block-scale noise hardly moves it, so E follows the outlines of objects.
    4. ``steepness = (mean_E f - mean_F f) / (mean_E c - mean_F c)``: the fine-to-coarse gradient
       energy ratio at the edges, background level subtracted. This is the re-blur ratio of Zhuo & Sim
       (2011, "Defocus map estimation from a single image"): for an edge blurred by s it behaves like
       sqrt((s^2 + s_coarse^2) / (s^2 + s_fine^2)), so it falls monotonically with blur and does not
       depend on edge contrast (and only weakly on how many edges there are). At the defaults an ideal
       straight step gives 2.8, a step blurred with sigma 1 px 1.7, and it falls towards 1.
    5. ``purity = S / (S + N)``: ``S = |E| (mean_E f - mean_F f)`` is the edge energy and
       ``N = H W mean_F |grad Y|^2`` the fine energy of the *raw* image away from edges, counted over
       the whole image: whatever noise adds, wherever it lands, counts against the image.

    ``score = steepness * purity``: 0 for a flat image or pure noise, highest for clean sharp edges.
    Blur lowers it; Gaussian noise, blocky noise (2x2 and 4x4 blocks) and JPEG artefacts lower it;
    contrast does not change it (a separate quality). Dense fine texture counts as noise, which suits
    the shapes world; photographs need a learned reward.
    """

    name = "sharpness"
    version = "1"
    aliases = ("sharp",)
    needs_captions = False

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        median_size: int = 5,
        coarse_sigma: float = 1.5,
        region_sigma: float = 3.0,
        edge_fraction: float = 0.2,
        flat_fraction: float = 0.5,
    ) -> None:
        super().__init__(device, batch_size)
        if not (0.0 < edge_fraction and 0.0 < flat_fraction and edge_fraction + flat_fraction <= 1.0):
            raise ValueError(
                "sharpness: need edge_fraction > 0, flat_fraction > 0 and edge_fraction + flat_fraction <= 1,"
                f" got {edge_fraction} and {flat_fraction}"
            )
        self.median_size = int(median_size)
        self.coarse_sigma = float(coarse_sigma)
        self.region_sigma = float(region_sigma)
        self.edge_fraction = float(edge_fraction)
        self.flat_fraction = float(flat_fraction)
        self.version = versioned(
            type(self).version, self, median_size=self.median_size, coarse_sigma=self.coarse_sigma,
            region_sigma=self.region_sigma, edge_fraction=self.edge_fraction,
            flat_fraction=self.flat_fraction,
        )

    @torch.no_grad()
    def components(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``steepness``, ``purity`` and ``score`` (each float32 [B]) for uint8 images [B, 3, H, W]."""
        images = images.to(self.device)
        y = images.float() / 255.0
        d = median_filter(images, self.median_size).float() / 255.0  # on uint8: exact and faster
        b = y.shape[0]
        fine = gradient_energy(d).reshape(b, -1)
        coarse = gradient_energy(gaussian_filter(d, self.coarse_sigma)).reshape(b, -1)
        region = gradient_energy(gaussian_filter(d, self.region_sigma)).reshape(b, -1)
        raw_fine = gradient_energy(y).reshape(b, -1)

        n = fine.shape[1]
        n_edge = max(1, round(self.edge_fraction * n))
        n_flat = max(1, round(self.flat_fraction * n))
        order = torch.argsort(region, dim=1, stable=True)
        edge, flat = order[:, n - n_edge :], order[:, :n_flat]

        def mean_at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return values.gather(1, index).mean(dim=1)

        signal_fine = (mean_at(fine, edge) - mean_at(fine, flat)).clamp(min=0.0)
        signal_coarse = mean_at(coarse, edge) - mean_at(coarse, flat)
        zero = torch.zeros_like(signal_fine)
        # Below 1e-10 the image is flat up to float rounding: no edges, score 0.
        steepness = torch.where(signal_coarse > 1e-10, signal_fine / signal_coarse.clamp(min=1e-10), zero)
        edge_energy = n_edge * signal_fine
        total = edge_energy + n * mean_at(raw_fine, flat)
        purity = torch.where(total > 0, edge_energy / total.clamp(min=1e-20), zero)
        return {"steepness": steepness.cpu(), "purity": purity.cpu(), "score": (steepness * purity).cpu()}

    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        return self.components(images)["score"].float()


# --------------------------------------------------------------------------------------------------
# Colorfulness


def hasler_susstrunk(rgb: torch.Tensor) -> torch.Tensor:
    """Colorfulness M of Hasler & Suesstrunk (2003) for float RGB [B, 3, H, W] on the 0-255 scale.

    ``rg = R - G``, ``yb = (R + G) / 2 - B``,
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2)`` (population std).
    Their perceptual anchors: 0 not colourful, 15 slightly, 33 moderately, 45 averagely, 59 quite,
    82 highly, 109 extremely colourful.
    """
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    opponent = torch.stack([r - g, 0.5 * (r + g) - b], dim=1).flatten(2)
    return _colorfulness(opponent.var(dim=2, unbiased=False), opponent.mean(dim=2))


def _colorfulness(variance: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """M from the opponent channels' variances and means, both [B, 2] (rg, yb)."""
    return variance.sum(dim=1).sqrt() + 0.3 * mean.pow(2).sum(dim=1).sqrt()


@register_reward
class ColorfulnessReward(RewardModel):
    """Hasler-Suesstrunk colorfulness (0-255 scale, :func:`hasler_susstrunk`) of the image with its
    colour noise removed.

    Noise adds variance to ``rg`` and ``yb`` and so raises the plain metric: Gaussian noise of sigma 25
    adds 10-25% on low-colour shapes images. Two steps take that away:

    1. both opponent channels are median filtered (``median_size``) then Gaussian smoothed
       (``smooth_sigma``): pixel-scale colour noise goes, the colour of regions stays;
    2. (``noise_compensation``) the noise left after step 1 still adds ``kappa sigma_n^2`` to each
       channel's variance, where ``sigma_n`` is the channel's noise estimated per image by
       :func:`noise_sigma` and ``kappa`` the filter chain's variance gain on white noise (measured once
       on a seeded noise field; 0.037 at the defaults). It is subtracted.

    The result estimates the colourfulness of the noise-free image, so adding pixel noise does not pay:
    on average it lowers the score (clipping and the median erode saturated colour) and single images
    move only by estimation error, a few percent. Grey noise leaves the opponent channels alone. Colour
    *structure* of a few pixels and more, such as random 2x2 or 4x4 colour patches, is visible colour
    and does raise the score; such patches lower :class:`SharpnessReward` strongly, which guards against
    that hack when both rewards are conditioned on. ``median_size=1, smooth_sigma=0,
    noise_compensation=False`` gives the plain published metric.
    """

    name = "colorfulness"
    version = "1"
    aliases = ("color", "colourfulness")
    needs_captions = False

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        median_size: int = 5,
        smooth_sigma: float = 1.0,
        noise_compensation: bool = True,
    ) -> None:
        super().__init__(device, batch_size)
        self.median_size = int(median_size)
        self.smooth_sigma = float(smooth_sigma)
        self.noise_compensation = bool(noise_compensation)
        self.version = versioned(
            type(self).version, self, median_size=self.median_size, smooth_sigma=self.smooth_sigma,
            noise_compensation=self.noise_compensation,
        )
        self.kappa = self._noise_gain() if noise_compensation else 0.0

    def _denoise(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_filter(median_filter(x, self.median_size).float(), self.smooth_sigma)

    def _noise_gain(self) -> float:
        """Variance of the denoised output for unit white noise, away from the borders."""
        noise = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))
        return float(self._denoise(noise)[..., 16:-16, 16:-16].var())

    @torch.no_grad()
    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        rgb = images.to(self.device).short()
        r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
        # rg and 2 yb are integers, so the median runs on int16 (exact, faster); then yb = (2 yb) / 2.
        doubled = torch.cat([r - g, r + g - 2 * b], dim=1)
        scale = torch.tensor([1.0, 0.5], device=doubled.device).view(1, 2, 1, 1)
        opponent = doubled.float() * scale  # [B, 2, H, W]: rg, yb
        clean = (self._denoise(doubled) * scale).flatten(2)  # both filters commute with the scaling
        variance = clean.var(dim=2, unbiased=False)
        if self.noise_compensation:
            variance = (variance - self.kappa * noise_sigma(opponent) ** 2).clamp(min=0.0)
        return _colorfulness(variance, clean.mean(dim=2)).float().cpu()


# --------------------------------------------------------------------------------------------------
# Compressibility


@register_reward
class CompressibilityReward(RewardModel):
    """Negative JPEG size, ``-bytes / 1000`` (kB) at ``quality`` with PIL's other settings at their
    defaults: DDPO's compressibility reward (Black et al. 2023, "Training diffusion models with
    reinforcement learning"). Larger = more compressible.

    It rewards flat, smooth, noise-free images, blurred ones included; that is what the name promises,
    so pair it with sharpness. ``per_pixel=True`` gives ``-bits per pixel`` instead, for data that mixes
    image sizes (kB would then mostly measure the size).
    """

    name = "compressibility"
    version = "1"
    aliases = ("compress",)
    needs_captions = False

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        quality: int = 95,
        per_pixel: bool = False,
    ) -> None:
        super().__init__(device, batch_size)
        if not 1 <= quality <= 100:
            raise ValueError(f"compressibility: JPEG quality must be in 1..100, got {quality}")
        self.quality = int(quality)
        self.per_pixel = bool(per_pixel)
        self.version = versioned(type(self).version, self, quality=self.quality, per_pixel=self.per_pixel)

    def jpeg_bytes(self, image: np.ndarray) -> int:
        """Size in bytes of one HWC uint8 image encoded as JPEG at ``quality``."""
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=self.quality)
        return buf.tell()

    @torch.no_grad()
    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        hwc = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        sizes = torch.tensor([self.jpeg_bytes(img) for img in hwc], dtype=torch.float64)
        if self.per_pixel:
            return (-8.0 * sizes / (images.shape[2] * images.shape[3])).float()
        return (-sizes / 1000.0).float()


__all__ = [
    "ColorfulnessReward",
    "CompressibilityReward",
    "SharpnessReward",
    "gaussian_filter",
    "gradient_energy",
    "hasler_susstrunk",
    "median_filter",
    "noise_sigma",
    "versioned",
]
