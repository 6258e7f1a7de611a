"""Write a synthetic caption for every sample: ``python -m data_prep.caption_shards input=... output=...``.

Config: ``conf/caption_shards.yaml`` (``captioner``: a vision-language model loaded through transformers,
:class:`miro.models.captioner.HFCaptioner`). Reads shards and writes one shard per input shard, same file
name, same samples in the same order, every field kept, plus ``KEY.syn.txt``: the model's caption of
the image. Training mixes the two captions (``data.synthetic_caption_prob``; MIRO: 50/50), and
``cache-latents`` caches the features of both.

Guarantees, as scoring's and caching's (all run on :mod:`miro.data.shard_stage`): an output shard and its
report appear atomically and a shard is done when both exist, so a killed run restarted skips finished
shards and redoes the one in flight (``recompute=true`` redoes all); a sample whose image does not
decode, or for which the model writes an empty caption, is left out and listed (key, reason) in
``REPORTS/NAME.json``; under torchrun, rank ``i`` of ``W`` takes shards ``i, i + W, ...`` on
``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from data_prep import require, run_stage, shard_progress
from miro.data.samples import SYN_CAPTION_EXT, SYN_TEXT_TOKENS_EXT
from miro.data.shard_stage import (
    RunSummary,
    StageConfigError,
    StageReport,
    device_for_rank,
    dist_rank_world,
    map_shard,
    run_shards,
)
from miro.data.shards import IMAGE_EXTS

log = logging.getLogger(__name__)
Captioner = Callable[[Sequence[Image.Image]], list[str]]


@dataclass(kw_only=True)
class CaptionReport(StageReport):
    """A captioned shard: which model wrote the captions, and how many."""

    captioner: str
    n_captioned: int = 0


class CaptionSummary(RunSummary):
    @property
    def n_captioned(self) -> int:
        return self.total("n_captioned")


@dataclass
class _Item:
    sample: dict[str, Any]
    image: Image.Image


def _prepare(sample: dict[str, Any]) -> _Item | str:
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        return f"no image ({'/'.join(IMAGE_EXTS)})"
    try:
        image = Image.open(io.BytesIO(sample[ext]))
        image.load()
    except Exception as err:  # PIL raises many types for corrupt files
        return f"cannot decode image ({err})"
    return _Item(sample, image.convert("RGB"))


def caption_shard(
    input_path: str | Path,
    output_path: str | Path,
    report_path: str | Path,
    captioner: Captioner,
    batch_size: int = 32,
    on_samples: Callable[[int], None] | None = None,
) -> CaptionReport:
    """Caption one shard into ``output_path`` and write its report; returns the report."""
    if batch_size < 1:
        raise StageConfigError(f"batch_size must be >= 1, got {batch_size}")
    report = CaptionReport(
        shard=Path(output_path).name, input=str(input_path), captioner=getattr(captioner, "name", "?")
    )

    def write(items: list[_Item]) -> list[dict[str, Any] | str]:
        captions = captioner([it.image for it in items])
        if len(captions) != len(items):
            raise RuntimeError(f"the captioner returned {len(captions)} captions for {len(items)} images")
        outputs: list[dict[str, Any] | str] = []
        for item, caption in zip(items, captions, strict=True):
            caption = " ".join(caption.split())
            if not caption:
                outputs.append("the captioner wrote an empty caption")
                continue
            # a stale caption's cached features would no longer match it: drop them
            kept = {k: v for k, v in item.sample.items() if k != SYN_TEXT_TOKENS_EXT}
            outputs.append({**kept, SYN_CAPTION_EXT: caption.encode("utf-8")})
            report.n_captioned += 1
        return outputs

    map_shard(input_path, output_path, report_path, report, _prepare, write, batch_size, on_samples)
    log.info("%s: captioned %d, skipped %d -> %s", input_path, report.n_captioned, report.n_skipped,
             output_path)
    return report


def caption_shards(
    inputs: str | Sequence[str],
    output_dir: str | Path,
    captioner: Captioner,
    batch_size: int = 32,
    report_dir: str | Path | None = None,
    recompute: bool = False,
    rank: int = 0,
    world_size: int = 1,
    on_samples: Callable[[int], None] | None = None,
    on_shard: Callable[[int, int, str], None] | None = None,
) -> CaptionSummary:
    """Caption this rank's share of ``inputs`` into ``output_dir``, skipping finished shards."""
    reports, resumed, reports_in = run_shards(
        inputs, output_dir, report_dir, rank, world_size,
        lambda path, out, report: caption_shard(path, out, report, captioner, batch_size, on_samples),
        CaptionReport.load, skip_finished=not recompute, done="captioned", on_shard=on_shard,
    )  # fmt: skip
    return CaptionSummary(str(output_dir), str(reports_in), reports, resumed)


def stage(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    rank, world = dist_rank_world()
    captioner = instantiate(cfg.captioner, device=device_for_rank(cfg.device))
    with shard_progress("captioning", bool(cfg.progress) and rank == 0) as callbacks:
        summary = caption_shards(
            cfg.input, cfg.output, captioner, batch_size=int(cfg.batch_size), report_dir=cfg.report_dir,
            recompute=bool(cfg.recompute), rank=rank, world_size=world, **callbacks,
        )
    who = f"rank {rank}/{world}: " if world > 1 else ""
    print(
        f"{who}captioned {summary.n_captioned} samples with {captioner.name}, skipped {summary.n_skipped} "
        f"({len(summary.reports)} shards, {summary.n_resumed} already done) -> {summary.output_dir} "
        f"(reports: {summary.report_dir})"
    )


def main() -> None:
    run_stage("caption_shards", stage)


if __name__ == "__main__":
    main()
