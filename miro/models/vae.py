"""The frozen image autoencoder of latent-space recipes (SDXL-VAE for cc12m).

The DiT never sees the VAE: training encodes pixels to *scaled* latents (roughly unit variance, which the
flow path assumes, since its noise end is N(0, I)), and generation decodes them back. The scaling comes
from the checkpoint's own config, so another autoencoder (SD3/Flux VAEs with a shift) works unchanged.

Encoding takes the posterior mean rather than a sample: the latent of an image is then a pure function
of the image, so latents can be cached once and reused every epoch, and a resumed run sees the same
data. The posterior's standard deviation is tiny for these VAEs, so little is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class MissingVAEError(RuntimeError):
    """The VAE's weights are not in the cache and cannot be fetched; one line says how to get them."""


class LatentVAE(nn.Module):
    """Pixels in [-1, 1] [B, 3, H, W] <-> latents [B, C, H/f, W/f] on the diffusion scale.

    Either ``model_name_or_path`` (a Hugging Face id or a local folder of a diffusers ``AutoencoderKL``)
    or ``config`` (a diffusers AutoencoderKL config, randomly initialised: tests and benchmarks).
    """

    def __init__(
        self,
        model_name_or_path: str | None = "stabilityai/sdxl-vae",
        config: Mapping[str, Any] | None = None,
        subfolder: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise MissingVAEError("latent-space training needs diffusers: pip install 'miro[vae]'") from None
        if config is not None:
            self.vae = AutoencoderKL(**dict(config))
        elif model_name_or_path:
            try:
                self.vae = AutoencoderKL.from_pretrained(
                    model_name_or_path, subfolder=subfolder, revision=revision
                )
            except OSError as err:
                raise MissingVAEError(
                    f"VAE {model_name_or_path!r} is not in the Hugging Face cache and could not be "
                    "downloaded "
                    f"({type(err).__name__}); on a machine with internet run "
                    f"`huggingface-cli download {model_name_or_path}` and copy HF_HOME here"
                ) from None
        else:
            raise ValueError("LatentVAE needs model_name_or_path or config")
        self.vae.requires_grad_(False).eval()
        cfg = self.vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] in [-1, 1] -> the posterior's (mean, std) on the diffusion scale, in the VAE's
        dtype. The std is scaled like the mean (a shift moves the mean only), so ``mean + std * eps``
        is a scaled posterior sample: what the caching stage stores for sampled latents."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return (dist.mean - self.shift_factor) * self.scaling_factor, dist.std * self.scaling_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> scaled posterior-mean latents."""
        return self.posterior(images)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> [B, 3, H, W] in [-1, 1] (not clamped)."""
        z = latents.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample
