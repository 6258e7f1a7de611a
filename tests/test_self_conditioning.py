"""Self-conditioning as MIRO's network does it: the network's residual, the training step's second
forward and its gradient path, sampling's step-to-step tokens, and the FLOPs it costs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_REWARDS
from tiny_models import tiny_text_encoder
from torch.utils.flop_counter import FlopCounterMode

from miro.config import compose_config
from miro.flow.guidance import guided_velocity_fn
from miro.flow.path import flow_loss
from miro.flow.sampling import sample_euler
from miro.lit.module import MiroModule
from miro.models.dit import MiroDiT, flops_per_image, training_flops
from miro.train import build


def _sc_model(perturb: bool = True) -> MiroDiT:
    torch.manual_seed(0)
    model = MiroDiT.from_size("tiny", image_size=24, in_channels=3, patch_size=4, text_dim=16,
                              reward_names=OFFLINE_REWARDS, self_conditioning=True)
    if perturb:  # the zero-initialised output norm would otherwise hide the residual
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def _inputs(b: int = 3):  # noqa: ANN202
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(b, 3, 24, 24, generator=gen)
    t = torch.rand(b, generator=gen)
    tokens = torch.randn(b, 5, 16, generator=gen)
    mask = torch.ones(b, 5, dtype=torch.bool)
    rewards = torch.rand(b, len(OFFLINE_REWARDS), generator=gen)
    return x, t, tokens, mask, rewards


def test_the_residual_starts_as_a_no_op_and_then_uses_the_previous_tokens() -> None:
    fresh = _sc_model(perturb=False).eval()
    x, t, tokens, mask, rewards = _inputs()
    v, out_tokens = fresh(x, t, tokens, mask, rewards, return_tokens=True)
    assert out_tokens.shape == (3, fresh.grid_size**2, 32)
    previous = torch.randn_like(out_tokens)
    torch.testing.assert_close(fresh(x, t, tokens, mask, rewards, previous_tokens=previous), v)
    trained = _sc_model().eval()
    assert not torch.allclose(trained(x, t, tokens, mask, rewards, previous_tokens=previous),
                              trained(x, t, tokens, mask, rewards))
    plain = MiroDiT.from_size("tiny", image_size=24, in_channels=3, patch_size=4, text_dim=16)
    with pytest.raises(ValueError, match="without self_conditioning"):
        plain(x, t, tokens, mask, previous_tokens=previous)


class _Recorder:
    """Wraps a network; records every call's grad mode, previous tokens and returned tokens."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls = model, []

    def __call__(self, *args, previous_tokens=None, return_tokens=False):  # noqa: ANN002, ANN204
        out = self.model(*args, previous_tokens=previous_tokens, return_tokens=return_tokens)
        self.calls.append({"grad": torch.is_grad_enabled(), "args": args, "previous": previous_tokens,
                           "tokens": out[1] if return_tokens else None})
        return out


def _module(rate: float) -> MiroModule:
    return MiroModule(_sc_model().train(), tiny_text_encoder(), OFFLINE_REWARDS, self_cond_rate=rate)


def _batch(n: int) -> dict:
    gen = torch.Generator().manual_seed(3)
    return {"image": torch.rand(n, 3, 24, 24, generator=gen) * 2 - 1, "caption": ["a red circle"] * n,
            "rewards": torch.rand(n, len(OFFLINE_REWARDS), generator=gen),
            "reward_mask": torch.ones(n, len(OFFLINE_REWARDS), dtype=torch.bool)}


def test_training_step_second_forward_and_gradient_path() -> None:
    module = _module(1.0)
    recorder = _Recorder(module.model)
    object.__setattr__(module, "_forward", recorder)
    loss = module.batch_loss(_batch(4), torch.Generator().manual_seed(0))
    first, second = recorder.calls
    # a first pass without gradients and without previous tokens, at the same x_t, t and conditioning
    assert not first["grad"] and first["previous"] is None
    assert second["grad"]
    assert all(torch.equal(a, b) for a, b in zip(first["args"], second["args"], strict=True))
    # the second pass gets the first pass's tokens, detached: no gradient path through the first pass
    assert torch.equal(second["previous"], first["tokens"]) and not second["previous"].requires_grad
    module.model.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in module.model.parameters()]
    # ... so the gradients are those of the second pass alone, with its input held fixed
    x_t, t, tokens, mask, rewards, reward_mask = second["args"]
    x0 = _batch(4)["image"]
    noise = (x_t - (1 - t.view(-1, 1, 1, 1)) * x0) / t.view(-1, 1, 1, 1)
    module.model.zero_grad()
    v = module.model(x_t, t, tokens.detach(), mask, rewards, reward_mask, previous_tokens=first["tokens"])
    flow_loss(v, x0, noise).backward()
    for got, want in zip(grads, (p.grad for p in module.model.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # and not those with a gradient through the first pass too (what the detach prevents)
    module.model.zero_grad()
    _, live = module.model(x_t, t, tokens.detach(), mask, rewards, reward_mask, return_tokens=True)
    v = module.model(x_t, t, tokens.detach(), mask, rewards, reward_mask, previous_tokens=live)
    flow_loss(v, x0, noise).backward()
    assert any(not torch.allclose(g, p.grad, rtol=1e-3, atol=1e-6)
               for g, p in zip(grads, module.model.parameters(), strict=True) if p.grad is not None)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_self_conditioning_applies_to_the_configured_share(rate: float) -> None:
    module = _module(rate)
    recorder = _Recorder(module.model)
    object.__setattr__(module, "_forward", recorder)
    module.batch_loss(_batch(64), torch.Generator().manual_seed(0))
    if rate == 0:
        assert len(recorder.calls) == 1 and recorder.calls[0]["previous"] is None
        return
    first, second = recorder.calls
    kept = second["previous"].flatten(1).abs().sum(1) > 0
    assert torch.equal(second["previous"][kept], first["tokens"][kept])  # kept rows are the first pass's
    assert 0.3 < kept.float().mean() < 0.7  # Binomial(64, 0.5): outside this range with p < 0.002


def test_sampling_passes_each_branch_its_previous_tokens() -> None:
    model = _sc_model().eval()
    recorder = _Recorder(model)
    recorder.self_conditioning = True
    _, _, tokens, mask, rewards = _inputs(2)
    fn = guided_velocity_fn(recorder, tokens, mask, rewards, scale=2.0)
    with torch.no_grad():
        sample_euler(fn, torch.randn(2, 3, 24, 24), steps=3)
    calls = recorder.calls
    assert len(calls) == 3 and calls[0]["previous"] is None
    # both branches ([positive; negative] rows) get their own previous tokens, in order
    for before, after in zip(calls[:-1], calls[1:], strict=True):
        assert torch.equal(after["previous"], before["tokens"])


def test_flops_count_the_residual_and_the_extra_forward() -> None:
    model = _sc_model().eval()
    x, t, tokens, mask, rewards = _inputs(1)
    previous = model(x, t, tokens, mask, rewards, return_tokens=True)[1]
    counted = []
    for prev in (previous, None):
        with FlopCounterMode(display=False) as counter:
            model(x, t, tokens, mask, rewards, previous_tokens=prev)
        counted.append(counter.get_total_flops())
    # the residual's MLP over the 36 image tokens: 2 FLOPs x 36 x (32 x 128 + 128 x 32)
    residual = flops_per_image(model, 5) - flops_per_image(model, 5, self_conditioned=False)
    assert counted[0] - counted[1] == residual == 2 * 36 * 2 * 32 * 128
    fwd = flops_per_image(model, 5)
    assert training_flops(fwd, 0.0) == 3 * fwd
    assert training_flops(fwd, 0.5) == training_flops(fwd, 0.9) == 4 * fwd  # the first pass runs for all
    with pytest.raises(ValueError, match="self_cond_rate"):
        training_flops(fwd, 1.5)


def test_config_trains_with_self_conditioning_and_rejects_it_without(
    scored_shapes: Path, tmp_path: Path
) -> None:
    base = [f"paths.data_dir={scored_shapes}", f"paths.output_dir={tmp_path}", "model=dit_tiny",
            "data.image_size=24", "data.batch_size=4", "callbacks=none", "logger=none", "trainer.max_steps=2"]
    module, datamodule, trainer = build(compose_config(
        "train", [*base, "++model.self_conditioning=true", "module.self_cond_rate=0.5"]))
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2 and module.model.self_conditioning
    with pytest.raises(Exception, match="needs a network built with self-conditioning"):
        build(compose_config("train", [*base, "module.self_cond_rate=0.5"]))
