"""MIRO's side of a parity run (MIRO's venv): load each original's file through MIRO's loader, score.

Per reward: end to end (our preprocessing of the same PNGs), model only (the original's preprocessed
tensor fed past our preprocessing), the grey-level difference of the two preprocessings, and the
loader's report of dropped keys (strict: the loader refused nothing and dropped only named keys).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from parity.common import (
    BLIP_VIT_TINY,
    OPEN_CLIP_TINY,
    OPEN_CLIP_TINY_NAME,
    OPENAI_CLIP_TINY_NAME,
    OPENAI_CLIP_TINY_OPEN_CLIP,
    read_inputs,
)
from parity.compare import SCORE_FLOOR, ParityRow, grey_level_difference, relative_difference


def _register_open_clip(folder: Path) -> None:
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{OPEN_CLIP_TINY_NAME}.json").write_text(json.dumps(OPEN_CLIP_TINY))
    (folder / f"{OPENAI_CLIP_TINY_NAME}.json").write_text(json.dumps(OPENAI_CLIP_TINY_OPEN_CLIP))
    open_clip.add_model_config(folder)


def _load(reward: str, work: Path):
    """MIRO's scorer for ``reward`` from the files the original's script saved."""
    folder = work / reward
    if reward == "hps":
        from miro.rewards.hps import load_hps_scorer

        return load_hps_scorer(OPEN_CLIP_TINY_NAME, folder / "HPS_parity.pt")
    if reward == "aesthetic":
        from miro.rewards.aesthetic import load_aesthetic_scorer

        return load_aesthetic_scorer(
            OPENAI_CLIP_TINY_NAME,
            folder / "open_clip_model.safetensors",
            folder / "sac+logos+ava1-l14-linearMSE.pth",
        )
    if reward in ("pick", "sci"):
        from miro.rewards.clip_common import load_hf_clip

        processor = folder / ("processor" if reward == "pick" else "model")
        return load_hf_clip(reward, str(folder / "model"), str(processor))
    if reward == "imagereward":
        from miro.rewards.imagereward import load_imagereward_scorer

        return load_imagereward_scorer(
            folder / "ImageReward.pt", folder / "med_config.json", folder / "vocab.txt", BLIP_VIT_TINY
        )
    if reward == "vqa":
        from miro.rewards.vqa import load_clip_t5_scorer

        return load_clip_t5_scorer(folder / "model", folder / "tokenizer", folder / "vision", torch.float32)
    raise ValueError(f"parity: no loader for {reward!r}")


def _uint8(path: Path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].contiguous()


def compare(reward: str, original: str, work: Path) -> ParityRow:
    """One reward's row; a loader error is reported in the row (strict: no), not raised."""
    from miro.rewards.checkpoints import RewardCheckpointError

    result = torch.load(work / reward / "original.pt", weights_only=True)
    row = ParityRow(reward=reward, original=original)
    try:
        scorer = _load(reward, work).eval()
    except (RewardCheckpointError, KeyError, RuntimeError) as err:
        row.strict, row.note = False, f"load failed: {str(err).splitlines()[0]}"
        return row
    row.strict = scorer.load_report is not None
    row.dropped = scorer.load_report.reasons() if scorer.load_report else {}
    paths, captions = read_inputs(work / "inputs")
    preprocess: Callable[[torch.Tensor], torch.Tensor] = scorer.preprocess
    ends, onlys, pre = [], [], []
    with torch.no_grad():
        for i, (path, caption) in enumerate(zip(paths, captions, strict=True)):
            images = _uint8(path)
            ends.append(scorer(images, [caption])[0])
            pre.append(preprocess(images)[0])
            scorer.preprocess = lambda x: x  # the original's tensor, past our preprocessing
            try:
                onlys.append(scorer(result["pixels"][i : i + 1], [caption])[0])
            finally:
                scorer.preprocess = preprocess
    reference = result["scores"]
    # VQAScore is a probability, positive but tiny for a random model: compare it purely relatively.
    floor = 1e-30 if reward == "vqa" else SCORE_FLOOR
    row.end_to_end = relative_difference(torch.stack(ends), reference, floor)
    row.model_only = relative_difference(torch.stack(onlys), reference, floor)
    row.grey_levels = grey_level_difference(
        torch.stack(pre), result["pixels"], preprocess.mean, preprocess.std
    )
    row.scores = {"original": reference.tolist(), "ours": torch.stack(ends).double().tolist()}
    return row


__all__ = ["compare"]
