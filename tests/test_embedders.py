import math

import pytest
import torch

from miro.models.embedders import FourierFeatures, RewardEmbedder, TimestepEmbedder, sinusoidal_embedding


def _embedder(**kw) -> RewardEmbedder:
    torch.manual_seed(0)
    return RewardEmbedder(["aesthetic", "alignment", "sharpness"], hidden_size=16, fourier_dim=8, **kw)


def test_sinusoidal_embedding_hand_values():
    emb = sinusoidal_embedding(torch.tensor([0.0, 2.0]), dim=4, max_period=100.0)
    # frequencies 1 and 1/10; layout [cos..., sin...]
    expected = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0], [math.cos(2.0), math.cos(0.2), math.sin(2.0), math.sin(0.2)]]
    )
    torch.testing.assert_close(emb, expected)


def test_timestep_embedder_shape_and_distinct_times():
    emb = TimestepEmbedder(hidden_size=24)(torch.tensor([0.0, 0.5, 1.0]))
    assert emb.shape == (3, 24)
    assert not torch.allclose(emb[0], emb[1])


def test_fourier_features_hand_values():
    ff = FourierFeatures(dim=4, max_frequency=10.0)  # frequencies pi and 10 pi
    out = ff(torch.tensor([0.25]))
    expected = torch.tensor([[math.sin(math.pi / 4), math.sin(2.5 * math.pi), math.cos(math.pi / 4),
                              math.cos(2.5 * math.pi)]])
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="even"):
        FourierFeatures(dim=3)


def test_missing_rewards_get_missing_plus_id_embedding_regardless_of_value():
    emb = _embedder().eval()
    mask = torch.tensor([[True, False, True], [False, False, True]])
    a = emb(torch.tensor([[0.1, 0.9, 0.3], [0.0, 0.2, 1.0]]), mask, batch_size=2)
    b = emb(torch.tensor([[0.1, 0.0, 0.3], [0.7, 0.6, 1.0]]), mask, batch_size=2)
    assert a.shape == (2, 3, 16)
    expected_missing = emb.missing + emb.reward_id
    torch.testing.assert_close(a[0, 1], expected_missing[1])
    torch.testing.assert_close(a[1, 0], expected_missing[0])
    torch.testing.assert_close(a[1, 1], expected_missing[1])
    torch.testing.assert_close(a[~mask], b[~mask])
    torch.testing.assert_close(a[mask], b[mask])  # present values are equal in a and b


def test_present_reward_token_is_value_mlp_plus_id():
    emb = _embedder().eval()
    values = torch.tensor([[0.2, 0.5, 0.8]])
    out = emb(values, None, batch_size=1)
    for i in range(3):
        expected = emb.value_mlps[i](emb.fourier(values[:, i])) + emb.reward_id[i]
        torch.testing.assert_close(out[0, i], expected[0])
    other = emb(torch.tensor([[0.9, 0.5, 0.8]]), None, batch_size=1)
    assert not torch.allclose(out[0, 0], other[0, 0])  # the value matters when present
    torch.testing.assert_close(out[0, 1:], other[0, 1:])


def test_rewards_none_means_all_missing():
    emb = _embedder().eval()
    out = emb(None, None, batch_size=2)
    torch.testing.assert_close(out, (emb.missing + emb.reward_id).expand(2, 3, 16))


def test_reward_dropout_only_in_training():
    emb = _embedder(dropout=1.0)
    values = torch.rand(4, 3)
    missing = (emb.missing + emb.reward_id).expand(4, 3, 16)
    torch.testing.assert_close(emb.train()(values, None, batch_size=4), missing)
    assert not torch.allclose(emb.eval()(values, None, batch_size=4), missing)


def test_reward_dropout_rate():
    emb = _embedder(dropout=0.3).train()
    torch.manual_seed(1)
    values = torch.full((2000, 3), 0.5)
    out = emb(values, None, batch_size=2000)
    is_missing = torch.isclose(out, (emb.missing + emb.reward_id)).all(-1)
    assert abs(is_missing.float().mean().item() - 0.3) < 0.03


def test_no_rewards_gives_no_tokens():
    emb = RewardEmbedder([], hidden_size=16)
    assert emb(None, None, batch_size=3).shape == (3, 0, 16)
    with pytest.raises(ValueError, match="no reward conditioning"):
        emb(torch.rand(3, 2), None, batch_size=3)


def test_bad_shapes_and_arguments_raise():
    emb = _embedder()
    with pytest.raises(ValueError, match=r"\[2, 3\].*aesthetic"):
        emb(torch.rand(2, 2), None, batch_size=2)
    with pytest.raises(ValueError, match="reward_mask shape"):
        emb(torch.rand(2, 3), torch.ones(2, 2, dtype=torch.bool), batch_size=2)
    with pytest.raises(ValueError, match="duplicate"):
        RewardEmbedder(["a", "a"], hidden_size=8)
    with pytest.raises(ValueError, match="dropout"):
        RewardEmbedder(["a"], hidden_size=8, dropout=1.5)
