"""The parity harness's own arithmetic (parity/compare.py), on hand-made inputs; no originals needed."""

from __future__ import annotations

import pytest
import torch

from parity.common import CAPTIONS, IMAGE_SIZES, natural_image
from parity.compare import (
    ParityRow,
    grey_level_difference,
    grey_levels,
    markdown_table,
    relative_difference,
)

MEAN, STD = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)


def test_relative_difference_by_hand():
    ref = torch.tensor([2.0, -4.0, 0.001], dtype=torch.float64)
    ours = torch.tensor([2.0002, -4.0, 0.0011], dtype=torch.float64)
    # 0.0002 / 2 = 1e-4; the near-zero score is measured against the floor 1e-2: 1e-4 / 1e-2 = 1e-2.
    assert relative_difference(ours, ref) == pytest.approx(1e-2)
    assert relative_difference(ours[:2], ref[:2]) == pytest.approx(1e-4)
    assert relative_difference(ref, ref) == 0.0
    with pytest.raises(ValueError, match="score counts"):
        relative_difference(ref, ref[:2])


def test_grey_levels_undo_the_normalisation():
    grey = torch.tensor([0.0, 127.5, 255.0])
    pixels = torch.stack([(grey / 255 - m) / s for m, s in zip(MEAN, STD, strict=True)])[None, :, None, :]
    torch.testing.assert_close(grey_levels(pixels, MEAN, STD)[0, :, 0], grey.double().expand(3, 3))
    shifted = pixels.clone()
    shifted[0, 1, 0, 2] += 2 / 255 / STD[1]  # two grey levels in the green channel
    assert grey_level_difference(shifted, pixels, MEAN, STD) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shapes differ"):
        grey_level_difference(pixels, pixels[..., :2], MEAN, STD)


def test_verdict_and_table():
    good = ParityRow("hps", "hpsv2 1.2.0", model_only=1e-7, end_to_end=5e-5, grey_levels=0.5, strict=True)
    far = ParityRow("pick", "card", model_only=1e-7, end_to_end=2e-4, grey_levels=0.0, strict=True)
    shifted = ParityRow("sci", "card", end_to_end=1e-6, grey_levels=1.5, strict=True)
    loose = ParityRow("aesthetic", "clip", end_to_end=1e-6, grey_levels=0.0, strict=False)
    skipped = ParityRow("clip", "jina", note="remote code")
    assert [r.passed() for r in (good, far, shifted, loose, skipped)] == [True, False, False, False, None]
    good.dropped = {"tied alias": 2}
    table = markdown_table([good, far, skipped], {"torch": "2.13.0"})
    lines = table.splitlines()
    assert lines[2] == "| hps | hpsv2 1.2.0 | 1.0e-07 | 5.0e-05 | 0.5 | yes | 2 tied alias | yes |"
    assert lines[3].endswith("| **no** |") and "| not run |" in lines[4] and "(remote code)" in lines[4]
    assert lines[-1] == "Versions: torch 2.13.0."


def test_inputs_are_deterministic_and_odd_sized():
    a, b = natural_image(33, 25, seed=3), natural_image(33, 25, seed=3)
    assert a.shape == (33, 25, 3) and a.dtype.name == "uint8" and (a == b).all()
    assert not (a == natural_image(33, 25, seed=4)).all()
    assert a.std() > 20  # gradients, shapes and noise, not a flat image
    assert (1216, 832) in IMAGE_SIZES and len(CAPTIONS) == len(IMAGE_SIZES)
    # Odd centre-crop margins at 224 px (short side to 224, long side truncated), where crop rules differ.
    margins = [int(224 * max(h, w) / min(h, w)) - 224 for h, w in IMAGE_SIZES]
    assert sum(m % 2 for m in margins) >= 3
