"""The optional reward/text refiner (MIRO's conditioning mapping): registers and a small transformer over
[reward tokens, registers, text tokens] before the DiT; off by default."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from miro.models.dit import MiroDiT, flops_per_image

REWARDS = ["aesthetic", "hps", "pick"]


def _model(**kwargs) -> MiroDiT:  # noqa: ANN003
    torch.manual_seed(0)
    return MiroDiT.from_size("tiny", image_size=24, in_channels=3, patch_size=4, text_dim=16,
                             reward_names=REWARDS, **kwargs).eval()


def _inputs():  # noqa: ANN202
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 5, 16, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return (torch.randn(2, 3, 24, 24, generator=gen), torch.rand(2, generator=gen), tokens, mask,
            torch.rand(2, 3, generator=gen))


def test_refiner_builds_the_documented_sequence_and_mask() -> None:
    model = _model(refiner_depth=2, refiner_registers=4)
    x, t, tokens, mask, rewards = _inputs()
    _, cond, cond_mask = model.conditioning(t, tokens, mask, rewards, None)
    assert cond.shape == (2, 3 + 4 + 5, 32) and cond_mask.shape == (2, 12)
    assert cond_mask[:, :7].all() and torch.equal(cond_mask[:, 7:], mask)  # rewards, registers, text
    # by hand: the blocks applied to [reward tokens, registers, projected text]
    seq = torch.cat([model.reward_embedder(rewards, None, 2), model.registers.expand(2, -1, -1),
                     model.text_proj(tokens)], dim=1)
    for block in model.refiner:
        seq = seq + block.scale1 * block.attn(block.norm1(seq), key_mask=cond_mask)
        seq = seq + block.scale2 * block.mlp(block.norm2(seq))
    torch.testing.assert_close(cond, seq)
    assert model(x, t, tokens, mask, rewards).shape == x.shape
    # the refined tokens depend on the rewards, the text tokens on the rewards too (they attend to them)
    _, other, _ = model.conditioning(t, tokens, mask, 1 - rewards, None)
    assert not torch.allclose(other[:, 7:], cond[:, 7:])


def test_refiner_is_off_by_default_and_round_trips_its_config() -> None:
    plain = _model()
    assert len(plain.refiner) == 0 and plain.registers is None
    refined = _model(refiner_depth=1, refiner_registers=2)
    rebuilt = MiroDiT.from_config(refined.to_config())
    rebuilt.load_state_dict(refined.state_dict())
    x, t, tokens, mask, rewards = _inputs()
    torch.testing.assert_close(rebuilt(x, t, tokens, mask, rewards), refined(x, t, tokens, mask, rewards))
    with pytest.raises(ValueError, match="registers only with a refiner"):
        _model(refiner_registers=2)


def test_refiner_flops_are_counted() -> None:
    x, t, tokens, mask, rewards = _inputs()
    mask = torch.ones_like(mask)
    counted = {}
    for name, kwargs in (("plain", {}), ("refined", {"refiner_depth": 2, "refiner_registers": 4})):
        model = _model(**kwargs)
        with FlopCounterMode(display=False) as counter:
            model(x[:1], t[:1], tokens[:1], mask[:1], rewards[:1])
        counted[name] = (counter.get_total_flops(), flops_per_image(model, 5))
    # the matrix products the refiner adds (attention scores aside, which the CPU counter leaves out
    # for this path): per block 4 m d^2 (q, kv, proj) + 2 m d mlp, and 4 more keys per cross-attention
    d, m, mlp, n, depth = 32, 3 + 4 + 5, 128, 36, 2
    added_linear = 2 * (2 * (4 * m * d * d + 2 * m * d * mlp) + depth * 2 * 4 * d * d)
    assert counted["refined"][0] - counted["plain"][0] == added_linear
    analytic = counted["refined"][1] - counted["plain"][1]
    assert analytic == added_linear + 2 * (2 * 2 * m * m * d + depth * 2 * n * 4 * d)
