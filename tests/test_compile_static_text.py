"""A compiled network gets caption tokens of one fixed length (the text encoder's max_length), so batches
with different caption lengths neither recompile nor hit torch 2.13's dynamic-shape backward bug on CPU;
the padding is masked out, so the loss is unchanged. torch.compile is replaced by a recorder here: the
real compilation takes minutes on a CPU (bench/results/demo_avx2.md has the measured failure)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import OFFLINE_REWARDS
from tiny_models import tiny_model, tiny_text_encoder

from miro.lit.module import MiroModule


def _batch(captions: list[str]) -> dict:
    gen = torch.Generator().manual_seed(3)
    n = len(captions)
    return {"image": torch.rand(n, 3, 24, 24, generator=gen) * 2 - 1, "caption": captions,
            "rewards": torch.rand(n, len(OFFLINE_REWARDS), generator=gen),
            "reward_mask": torch.ones(n, len(OFFLINE_REWARDS), dtype=torch.bool)}


def test_compiled_network_sees_fixed_length_captions_and_the_same_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lengths: list[int] = []

    def fake_compile(model):  # noqa: ANN001, ANN202
        def forward(x, t, tokens, mask, *rest, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            lengths.append(tokens.shape[1])
            return model(x, t, tokens, mask, *rest, **kw)

        return forward

    model, text = tiny_model(OFFLINE_REWARDS, 0), tiny_text_encoder(0)
    plain = MiroModule(copy.deepcopy(model), copy.deepcopy(text), OFFLINE_REWARDS)
    monkeypatch.setattr("miro.lit.module.torch.compile", fake_compile)
    compiled = MiroModule(model, text, OFFLINE_REWARDS, compile=True)
    assert compiled.static_text_length == text.max_length and plain.static_text_length == 0
    for captions in (["a red circle", "a blue square"], ["two green triangles above a small red circle"] * 2):
        batch = _batch(captions)
        want = plain.batch_loss(batch, torch.Generator().manual_seed(0))
        got = compiled.batch_loss(batch, torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert lengths == [text.max_length, text.max_length]
