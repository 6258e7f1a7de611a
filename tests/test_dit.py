import json

import pytest
import torch

from miro.components import MODEL
from miro.models.dit import (
    DIT_SIZES,
    ConvLevels,
    ConvStemHead,
    DiTParams,
    MiroDiT,
    PatchEnds,
    attention,
    flops_per_image,
    num_parameters,
    sincos_pos_embed_2d,
)

REWARDS = ["aesthetic", "alignment", "sharpness"]


def _model(**kw) -> MiroDiT:
    torch.manual_seed(0)
    args = dict(image_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2, num_heads=2, text_dim=12,
                reward_names=REWARDS)
    args.update(kw)
    return MiroDiT(**args)


def _randomize(model: MiroDiT, seed: int = 1) -> MiroDiT:
    """Give the zero-initialised layers weights, as training would, so outputs depend on inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def _inputs(batch: int = 3, length: int = 5, image_size: int = 8, channels: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, image_size, image_size, generator=gen)
    t = torch.rand(batch, generator=gen)
    tokens = torch.randn(batch, length, 12, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    rewards = torch.rand(batch, len(REWARDS), generator=gen)
    return x, t, tokens, mask, rewards


CONV_VARIANTS = [{}, {"conv_channels": 8}, {"unet_channels": [8, 12], "patch_size": 1}]


@pytest.mark.parametrize("conv_channels", [0, 8])
@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_output_shape_and_exact_zero_at_init(conv_channels, patch_size):
    model = _model(conv_channels=conv_channels, patch_size=patch_size)
    x, t, tokens, mask, rewards = _inputs()
    out = model(x, t, tokens, mask, rewards, None)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize(
    "unet_channels, patch_size, grid", [([8], 2, 4), ([8, 12], 1, 4), ([8, 12, 16], 2, 1)]
)
def test_conv_levels_shape_grid_and_exact_zero_at_init(unet_channels, patch_size, grid):
    """Each conv level below the first halves the side the transformer's patches are cut from."""
    model = _model(unet_channels=unet_channels, patch_size=patch_size)
    assert model.grid_size == grid
    x, t, tokens, mask, rewards = _inputs()
    out = model(x, t, tokens, mask, rewards)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0
    trained = _randomize(model).eval()
    out = trained(x, t, tokens, mask, rewards)
    assert out.shape == x.shape and torch.isfinite(out).all()
    changed = rewards.clone()
    changed[:, 0] = 1.0 - changed[:, 0]
    assert not torch.allclose(trained(x, t, tokens, mask, changed), out)  # conditioning reaches the pixels


@pytest.mark.parametrize("variant", CONV_VARIANTS)
def test_zero_init_still_learns(variant):
    model = _model(**variant)
    x, t, tokens, mask, rewards = _inputs()
    loss = (model(x, t, tokens, mask, rewards) - x).pow(2).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert torch.count_nonzero(model(x, t, tokens, mask, rewards)) > 0


def test_unpatchify_inverts_patch_layout():
    model = _model(patch_size=2)
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    # patch (i, j) -> token i * 4 + j holding [p, q, c] values in that order
    patches = img.reshape(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 12)
    torch.testing.assert_close(model.unpatchify(patches), img)


def test_sincos_pos_embed_distinct_and_bounded():
    emb = sincos_pos_embed_2d(16, 4)
    assert emb.shape == (16, 16)
    assert emb.abs().max() <= 1.0
    assert torch.cdist(emb, emb).add(torch.eye(16)).min() > 0.1  # all positions distinguishable
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(10, 4)


@pytest.mark.parametrize(
    "variant", [{"conv_channels": 4}, {"unet_channels": [4, 8], "patch_size": 1}], ids=["conv", "levels"]
)
def test_config_round_trip_through_json(variant):
    model = _randomize(_model(**variant, reward_dropout=0.1, pooled_text=False))
    config = json.loads(json.dumps(model.to_config()))
    clone = MiroDiT.from_config(config)
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config
    model.eval()
    clone.eval()
    x, t, tokens, mask, rewards = _inputs()
    torch.testing.assert_close(clone(x, t, tokens, mask, rewards), model(x, t, tokens, mask, rewards))


def test_size_registry():
    assert {"tiny", "S", "B", "L", "XL"} <= set(DIT_SIZES)
    assert (DIT_SIZES["XL"].hidden_size, DIT_SIZES["XL"].depth, DIT_SIZES["XL"].num_heads) == (1152, 28, 16)
    model = MiroDiT.from_size("tiny", image_size=8, in_channels=3, patch_size=2, text_dim=12)
    assert model.config["hidden_size"] == DIT_SIZES["tiny"].hidden_size
    assert num_parameters(model) > 0 and flops_per_image(model, text_length=5) > 0
    with pytest.raises(KeyError, match="known sizes"):
        MiroDiT.from_size("huge", image_size=8, in_channels=3, patch_size=2, text_dim=12)


def test_baseline_without_rewards():
    model = _randomize(_model(reward_names=())).eval()
    x, t, tokens, mask, _ = _inputs()
    out = model(x, t, tokens, mask, None, None)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="no reward conditioning"):
        model(x, t, tokens, mask, torch.rand(3, 2))


def test_empty_caption_and_no_rewards_is_finite():
    model = _randomize(_model(reward_names=())).eval()
    x, t, tokens, mask, _ = _inputs()
    mask[1] = False
    out = model(x, t, tokens, mask)
    assert torch.isfinite(out).all()


def test_padding_tokens_are_ignored():
    model = _randomize(_model()).eval()
    x, t, tokens, mask, rewards = _inputs()
    garbage = tokens.clone()
    garbage[0, 3:] = 100.0  # masked positions of sample 0
    padded = torch.cat([tokens, torch.randn(3, 2, 12)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], dim=1)
    ref = model(x, t, tokens, mask, rewards)
    torch.testing.assert_close(model(x, t, garbage, mask, rewards), ref)
    torch.testing.assert_close(model(x, t, padded, padded_mask, rewards), ref)


def test_rewards_condition_the_output_and_missing_ignores_value():
    model = _randomize(_model()).eval()
    x, t, tokens, mask, rewards = _inputs()
    ref = model(x, t, tokens, mask, rewards)
    changed = rewards.clone()
    changed[:, 1] = 1.0 - changed[:, 1]
    assert not torch.allclose(model(x, t, tokens, mask, changed), ref)
    present = torch.tensor([True, False, True]).expand(3, 3)
    torch.testing.assert_close(
        model(x, t, tokens, mask, changed, present), model(x, t, tokens, mask, rewards, present)
    )


def test_bad_inputs_raise():
    model = _model()
    x, t, tokens, mask, rewards = _inputs()
    with pytest.raises(ValueError, match=r"expects inputs \[B, 3, 8, 8\]"):
        model(torch.randn(3, 3, 16, 16), t, tokens, mask, rewards)
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, t[:2], tokens, mask, rewards)
    with pytest.raises(ValueError, match="text_tokens"):
        model(x, t, tokens[:2], mask[:2], rewards)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        _model(image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="num_heads"):
        _model(num_heads=3)
    with pytest.raises(ValueError, match=r"patch_size 2 x 2\^2 \(unet_channels levels\)"):
        _model(image_size=12, unet_channels=[4, 4, 4])  # the lowest level is 3 px: no whole 2-px patches
    with pytest.raises(ValueError, match="alternatives"):
        _model(conv_channels=4, unet_channels=[4])
    with pytest.raises(ValueError, match="positive"):
        _model(unet_channels=[4, 0])


def test_gradient_checkpointing_gives_identical_gradients():
    x, t, tokens, mask, rewards = _inputs()
    grads = []
    for ckpt in (False, True):
        model = _randomize(_model(grad_checkpointing=ckpt, conv_channels=4)).train()
        loss = (model(x, t, tokens, mask, rewards) - x).pow(2).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=1e-6, msg=name)


def test_deterministic_for_a_seed():
    a, b = _randomize(_model(), seed=3).eval(), _randomize(_model(), seed=3).eval()
    inputs = _inputs(seed=5)
    torch.testing.assert_close(a(*inputs), b(*inputs), rtol=0, atol=0)


def test_bf16_autocast_runs():
    model = _randomize(_model(conv_channels=4)).eval()
    x, t, tokens, mask, rewards = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, tokens, mask, rewards)
    ref = model(x, t, tokens, mask, rewards)
    assert out.shape == x.shape
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_cpu_bf16_attention_matches_sdpa():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8, generator=gen) for _ in range(3))
    mask = torch.tensor([True, True, False, True, False, True]).expand(2, 1, 1, 6)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.02, atol=0.02)
    torch.testing.assert_close(attention(q, k, v, mask), ref)


@pytest.mark.parametrize(
    "variant, kind, channels, reduction, layers",
    [
        ({}, PatchEnds, 3, 1, []),
        ({"conv_channels": 8}, ConvStemHead, 8, 1, ["stem", "head"]),
        ({"unet_channels": [8, 12, 16], "patch_size": 1}, ConvLevels, 16, 4, ["levels"]),
    ],
    ids=["patch", "stem_head", "levels"],
)
def test_params_choose_the_image_ends_and_the_model_lists_their_layers_once(
    variant, kind, channels, reduction, layers
):
    model = _model(**variant)
    ends = model.ends
    assert type(ends) is kind and (ends.channels, ends.reduction) == (channels, reduction)
    assert model.grid_size == 8 // (model.patch_size * reduction)
    assert [name for name, _ in ends.named_children()] == layers
    for name in layers:
        assert getattr(model, name) is getattr(ends, name)  # the same layers, not copies
    assert "ends" not in dict(model.named_children())
    owned = {id(p) for p in ends.parameters()}
    assert owned <= {id(p) for p in model.parameters()}
    assert len(list(model.parameters())) == len(model.state_dict())  # nothing listed twice
    assert not model.eval().ends.training and all(not m.training for m in ends.modules())
    # the ends' interface: the map the core patchifies, and back to the image
    x, c = torch.randn(2, 3, 8, 8), torch.randn(2, 32)
    features, saved = ends.encode(x, c)
    assert features.shape == (2, channels, 8 // reduction, 8 // reduction)
    assert ends.decode(features, saved, c).shape == x.shape


def test_patch_ends_are_the_plain_dit():
    """Without conv layers the core patchifies the input itself and its output is the velocity."""
    ends = PatchEnds(4)
    x = torch.randn(2, 4, 8, 8)
    features, saved = ends.encode(x, torch.zeros(2, 16))
    assert features is x and saved == [] and ends.decode(x, saved, torch.zeros(2, 16)) is x
    assert ends.macs(8) == 0 and not list(ends.parameters())


@pytest.mark.parametrize("variant", CONV_VARIANTS, ids=["patch", "stem_head", "levels"])
def test_each_end_zeroes_its_own_output_layer(variant):
    """The end's last layer starts at zero; the core's final linear does only where it is the output."""
    model = _model(**variant)
    final_zero = torch.count_nonzero(model.final.linear.weight) == 0
    assert final_zero == isinstance(model.ends, PatchEnds)


def test_params_are_the_whole_config():
    params = DiTParams(8, 3, 2, 32, 2, 2, text_dim=12, reward_names=REWARDS, unet_channels=[4, 8])
    model = MiroDiT(**params.to_config())
    assert model.params == params and model.to_config() == params.to_config()
    # the export's config.json lists exactly what the closed component registry accepts, in its order
    assert list(params.to_config()) == list(MODEL.args)
    with pytest.raises(TypeError):
        DiTParams(8, 3, 2, 32, 2, 2, 4.0, 12)  # text_dim and what follows are named, never positional
