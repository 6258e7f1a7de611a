"""Cache VAE latents and text features in shards: ``python -m data_prep.cache_latents input=... output=...``.

Config: ``conf/cache_latents.yaml`` (``text_encoder``: the group ``conf/text_encoder``). Reads scored
shards and writes one shard per input shard, same file name, same samples in the same order, each with
its ``txt`` and ``rewards.json`` (and, with ``keep_image``, its image) plus the fields that let training
skip the JPEG decoder and every frozen encoder (format: :mod:`miro.data.samples`):

* ``KEY.latent.npy``: float32 [C, h, w], the VAE latent of the ``image_size`` center crop, on the
  diffusion scale. ``latent=mean`` stores the posterior mean (what :class:`~miro.models.vae.LatentVAE`
  encodes in raw mode); ``latent=mean_std`` adds ``KEY.latent_std.npy`` so every training step draws a
  fresh posterior sample; ``latent=sample`` stores one posterior sample, seeded by (seed, key).
* ``KEY.text_tokens.npy``: float16 [L, D], the text encoder's features of the caption's L real tokens,
  unpadded. float16, not float32: these dominate the shard (FLAN-T5-XL: ~20 tokens x 2048 x 2 bytes
  = ~80 KB a sample, 2x the latent and image together), and half precision halves that; float16
  rather than bfloat16 because numpy has no bfloat16 and because T5's final-layer-norm outputs are
  small (|x| << 65504), where float16's 3 extra mantissa bits are worth more than bfloat16's range.
  A value that does overflow is caught: the sample is skipped and reported, never written as inf.
* ``KEY.syn_text_tokens.npy``: the same for the synthetic caption (``KEY.syn.txt``, from
  ``make caption-shards``), when the sample has one; training mixes the two (``data.synthetic_caption_prob``).

Guarantees, as scoring's (both run on :mod:`miro.data.shard_stage`): an output shard and its report
appear atomically and a shard is done when both exist, so a killed run restarted skips finished shards
and redoes the one in flight (``recompute=true`` redoes all); a sample whose image does not decode,
without a caption, or whose latent or features are not finite, is left out and listed (key, reason) in
``REPORTS/NAME.json``;
under torchrun, rank ``i`` of ``W`` takes shards ``i, i + W, ...`` on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from data_prep import image_limits_option, int_option, require, run_stage, shard_progress
from miro.data.image_limits import ImageLimits
from miro.data.samples import (
    LATENT_EXT,
    LATENT_STD_EXT,
    SYN_TEXT_TOKENS_EXT,
    TEXT_TOKENS_EXT,
    SampleDecodeError,
    caption_of,
    decode_image,
    encode_array,
    synthetic_caption_of,
    to_model_range,
)
from miro.data.shard_stage import (
    RunSummary,
    StageConfigError,
    StageReport,
    device_for_rank,
    dist_rank_world,
    map_shard,
    run_shards,
)
from miro.data.shards import (
    IMAGE_EXTS,
)
from miro.models.vae import LatentVAE

log = logging.getLogger(__name__)

LATENT_MODES = ("mean", "mean_std", "sample")
DEFAULT_LIMITS = ImageLimits()
MAX_IMAGE_SIZE = 8192  # the side images are resized to; beyond it a VAE batch cannot fit anywhere
MAX_BATCH_SIZE = 1 << 16
CACHED_EXTS = (LATENT_EXT, LATENT_STD_EXT, TEXT_TOKENS_EXT, SYN_TEXT_TOKENS_EXT)


class CacheConfigError(StageConfigError):
    """A caching request that cannot work; the message says what to change."""


@dataclass(kw_only=True)
class CacheReport(StageReport):
    """A cached shard: the latent mode and shapes, so training can check what it reads."""

    latent: str  # mean | mean_std | sample
    image_size: int
    latent_shape: list[int] = field(default_factory=list)
    text_dim: int = 0
    n_cached: int = 0
    text_tokens: int = 0  # real tokens stored, summed over samples


class CacheSummary(RunSummary):
    @property
    def n_cached(self) -> int:
        return self.total("n_cached")


# --------------------------------------------------------------------------------------------------
# Encoding


def key_seed(seed: int, key: str) -> int:
    """A per-sample seed: a rerun, any batch size or any rank draws the same posterior sample."""
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**63)


def encode_latents(
    vae: LatentVAE, images: torch.Tensor, keys: Sequence[str], mode: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (latent [B, C, h, w], std or None), float32 on the images' device, for ``mode``."""
    mean, std = (x.float() for x in vae.posterior(images))
    if mode == "mean":
        return mean, None
    if mode == "mean_std":
        return mean, std
    generators = [torch.Generator().manual_seed(key_seed(seed, k)) for k in keys]
    eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators])
    return mean + std * eps.to(mean.device), None


# --------------------------------------------------------------------------------------------------
# One shard


@dataclass
class _Item:
    sample: dict[str, Any]
    image: torch.Tensor  # uint8 [3, S, S]
    caption: str
    syn_caption: str | None = None


def _prepare(sample: dict[str, Any], image_size: int, limits: ImageLimits | None) -> _Item | str:
    """A decoded sample, or the reason it cannot be cached."""
    key = sample["__key__"]
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        return f"no image ({'/'.join(IMAGE_EXTS)})"
    try:
        image = decode_image(sample[ext], key, image_size, limits)
        caption = caption_of(sample, key)
        syn_caption = synthetic_caption_of(sample, key)
    except SampleDecodeError as err:
        return str(err).removeprefix(f"sample {key}: ")
    return _Item(sample, image, caption, syn_caption)


@dataclass
class _Encoded:
    fields: dict[str, bytes]  # extension -> .npy bytes
    latent_shape: list[int]
    text_shape: list[int]  # [L, D]


def _encode_batch(
    items: list[_Item], vae: LatentVAE, text_encoder: nn.Module, mode: str, seed: int, device: torch.device
) -> list[_Encoded | str]:
    """The cached fields of each item, or the reason the item is skipped."""
    images = to_model_range(torch.stack([it.image for it in items])).to(device)
    keys = [it.sample["__key__"] for it in items]
    latent, std = encode_latents(vae, images, keys, mode, seed)
    with torch.no_grad():
        tokens, mask = text_encoder([it.caption for it in items])
        with_syn = [i for i, it in enumerate(items) if it.syn_caption is not None]
        syn_rows: dict[int, np.ndarray] = {}
        if with_syn:
            syn_tokens, syn_mask = text_encoder([items[i].syn_caption for i in with_syn])
            syn_tokens, syn_mask = syn_tokens.float().cpu(), syn_mask.cpu()
            syn_rows = {
                i: syn_tokens[j, syn_mask[j]].numpy().astype(np.float16) for j, i in enumerate(with_syn)
            }
    latent, tokens, mask = latent.cpu(), tokens.float().cpu(), mask.cpu()
    std = std.cpu() if std is not None else None
    out: list[_Encoded | str] = []
    for i in range(len(items)):
        row = tokens[i, mask[i]].numpy().astype(np.float16)
        if not torch.isfinite(latent[i]).all() or (std is not None and not torch.isfinite(std[i]).all()):
            out.append("non-finite latent (a float16 VAE overflows; run it in float32 or bfloat16)")
            continue
        if row.shape[0] == 0:
            out.append("the text encoder returned no token")
            continue
        if not np.isfinite(row).all():
            out.append("text features are not finite in float16 (overflow)")
            continue
        syn = syn_rows.get(i)
        if syn is not None and (syn.shape[0] == 0 or not np.isfinite(syn).all()):
            out.append("synthetic caption features are empty or not finite in float16")
            continue
        fields = {LATENT_EXT: encode_array(latent[i].numpy()), TEXT_TOKENS_EXT: encode_array(row)}
        if syn is not None:
            fields[SYN_TEXT_TOKENS_EXT] = encode_array(syn)
        if std is not None:
            fields[LATENT_STD_EXT] = encode_array(std[i].numpy())
        out.append(_Encoded(fields, list(latent.shape[1:]), list(row.shape)))
    return out


def cache_shard(
    input_path: str | Path,
    output_path: str | Path,
    report_path: str | Path,
    vae: LatentVAE,
    text_encoder: nn.Module,
    image_size: int = 256,
    latent: str = "mean",
    batch_size: int = 64,
    keep_image: bool = True,
    seed: int = 0,
    on_samples: Callable[[int], None] | None = None,
    limits: ImageLimits | None = DEFAULT_LIMITS,
) -> CacheReport:
    """Cache one shard into ``output_path`` and write its report; returns the report. ``limits``:
    images whose header claims more are skipped, not decoded (None: no limit)."""
    check_settings(vae, image_size, latent, batch_size)
    device = next(vae.parameters()).device
    report = CacheReport(
        shard=Path(output_path).name, input=str(input_path), latent=latent, image_size=image_size,
        settings=cache_settings(vae, text_encoder, image_size, latent, keep_image, seed, limits),
    )

    def encode(items: list[_Item]) -> list[dict[str, Any] | str]:
        outputs: list[dict[str, Any] | str] = []
        encoded = _encode_batch(items, vae, text_encoder, latent, seed, device)
        for item, enc in zip(items, encoded, strict=True):
            if isinstance(enc, str):
                outputs.append(enc)
                continue
            kept = {
                k: v for k, v in item.sample.items()
                if k not in CACHED_EXTS and (keep_image or k not in IMAGE_EXTS)
            }
            outputs.append({**kept, **enc.fields})
            report.n_cached += 1
            report.text_tokens += enc.text_shape[0]
            report.latent_shape, report.text_dim = enc.latent_shape, enc.text_shape[1]
        return outputs

    map_shard(
        input_path, output_path, report_path, report, lambda s: _prepare(s, image_size, limits), encode,
        batch_size, on_samples,
    )
    log.info("%s: cached %d, skipped %d -> %s", input_path, report.n_cached, report.n_skipped, output_path)
    return report


def cache_settings(
    vae: LatentVAE, text_encoder: nn.Module, image_size: int, latent: str, keep_image: bool, seed: int,
    limits: ImageLimits | None,
) -> dict[str, Any]:
    """The options that change a cached shard's bytes, recorded in its report (resume compares them).
    The encoders are named by class and dtype: which checkpoint made the features is the training
    run's to check (it checks the feature dimension)."""
    return {
        "latent": latent,
        "image_size": int(image_size),
        "keep_image": bool(keep_image),
        "seed": int(seed) if latent == "sample" else None,
        "vae": f"{type(vae).__name__}/{next(vae.parameters()).dtype}",
        "text_encoder": type(text_encoder).__name__,
        "image_limits": limits.to_json() if limits is not None else None,
    }


def check_settings(vae: LatentVAE, image_size: int, latent: str, batch_size: int) -> None:
    if latent not in LATENT_MODES:
        raise CacheConfigError(f"latent must be one of {', '.join(LATENT_MODES)}, got {latent!r}")
    if batch_size < 1:
        raise CacheConfigError(f"batch_size must be >= 1, got {batch_size}")
    if image_size < 1 or image_size % vae.downsample:
        raise CacheConfigError(
            f"image_size {image_size} is not a positive multiple of the VAE's downsampling factor "
            f"{vae.downsample}"
        )


# --------------------------------------------------------------------------------------------------
# Many shards


def cache_shards(
    inputs: str | Sequence[str],
    output_dir: str | Path,
    vae: LatentVAE,
    text_encoder: nn.Module,
    image_size: int = 256,
    latent: str = "mean",
    batch_size: int = 64,
    keep_image: bool = True,
    seed: int = 0,
    report_dir: str | Path | None = None,
    recompute: bool = False,
    rank: int = 0,
    world_size: int = 1,
    on_samples: Callable[[int], None] | None = None,
    on_shard: Callable[[int, int, str], None] | None = None,
    limits: ImageLimits | None = DEFAULT_LIMITS,
) -> CacheSummary:
    """Cache this rank's share of ``inputs`` into ``output_dir``, skipping finished shards (made with
    the same settings, :func:`cache_settings`; ``recompute=True`` redoes all).

    ``on_samples(n)`` is called as samples are processed and ``on_shard(i, total, name)`` before each
    shard (for progress bars).
    """
    check_settings(vae, image_size, latent, batch_size)
    reports, resumed, reports_in = run_shards(
        inputs, output_dir, report_dir, rank, world_size,
        lambda path, out, report: cache_shard(
            path, out, report, vae, text_encoder, image_size, latent, batch_size, keep_image, seed,
            on_samples=on_samples, limits=limits,
        ),
        CacheReport.load, skip_finished=not recompute, done="cached", on_shard=on_shard,
        settings=cache_settings(vae, text_encoder, image_size, latent, keep_image, seed, limits),
    )  # fmt: skip
    return CacheSummary(str(output_dir), str(reports_in), reports, resumed)


# --------------------------------------------------------------------------------------------------
# The stage


def build_encoders(cfg: DictConfig, device: str) -> tuple[LatentVAE, nn.Module]:
    """The VAE and text encoder the config names, frozen, on ``device``."""
    vae = instantiate(cfg.vae)
    dtype = getattr(torch, str(cfg.vae_dtype), None)
    if not isinstance(dtype, torch.dtype):
        raise CacheConfigError(
            f"vae_dtype must be a torch dtype name (float32, bfloat16), got {cfg.vae_dtype!r}"
        )
    vae = vae.to(device=device, dtype=dtype).eval()
    text_encoder = instantiate(cfg.text_encoder).to(device).eval()
    return vae, text_encoder


def _options(cfg: DictConfig) -> dict[str, Any]:
    """The validated options of the request, before the encoders are loaded."""
    if cfg.latent not in LATENT_MODES:
        raise CacheConfigError(f"latent must be one of {', '.join(LATENT_MODES)}, got {cfg.latent!r}")
    return dict(
        image_size=int_option(cfg, "image_size", 1, MAX_IMAGE_SIZE), latent=str(cfg.latent),
        batch_size=int_option(cfg, "batch_size", 1, MAX_BATCH_SIZE), keep_image=bool(cfg.keep_image),
        seed=int_option(cfg, "seed", 0), limits=image_limits_option(cfg),
    )


def _cache(cfg: DictConfig, vae: LatentVAE, text_encoder: nn.Module, rank: int, world: int,
           options: dict[str, Any]) -> CacheSummary:
    kwargs: dict[str, Any] = dict(
        inputs=cfg.input, output_dir=cfg.output, vae=vae, text_encoder=text_encoder,
        report_dir=cfg.report_dir, recompute=bool(cfg.recompute), rank=rank, world_size=world, **options,
    )
    with shard_progress("caching", bool(cfg.progress) and rank == 0) as callbacks:
        return cache_shards(**kwargs, **callbacks)


def stage(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    options = _options(cfg)  # before loading multi-GB encoders
    rank, world = dist_rank_world()
    vae, text_encoder = build_encoders(cfg, device_for_rank(cfg.device))
    summary = _cache(cfg, vae, text_encoder, rank, world, options)
    who = f"rank {rank}/{world}: " if world > 1 else ""
    truncated = f", {len(summary.truncated)} truncated" if summary.truncated else ""
    print(
        f"{who}cached {summary.n_cached} samples ({cfg.latent} latents), skipped {summary.n_skipped} "
        f"({len(summary.reports)} shards, {summary.n_resumed} already done{truncated}) -> "
        f"{summary.output_dir} (reports: {summary.report_dir})"
    )
    summary.raise_if_truncated()


def main() -> None:
    run_stage("cache_latents", stage)


if __name__ == "__main__":
    main()
