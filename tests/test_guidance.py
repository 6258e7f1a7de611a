import pytest
import torch

from miro.flow.guidance import guided_velocity_fn, reward_targets
from miro.flow.sampling import sample_euler
from miro.models.dit import MiroDiT

REWARDS = ["aesthetic", "alignment"]
TOL = dict(rtol=1e-4, atol=1e-4)  # batched vs separate forwards: kernels round differently per batch size


class CountingModel(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batch_sizes: list[int] = []

    def forward(self, x, *args):
        self.batch_sizes.append(x.shape[0])
        return self.model(x, *args)


def _model(reward_names=REWARDS) -> MiroDiT:
    torch.manual_seed(0)
    model = MiroDiT(8, 3, 2, 32, 2, 2, text_dim=12, reward_names=reward_names, conv_channels=4)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _cond(batch: int = 3, length: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=gen)
    t = torch.rand(batch, generator=gen)
    tokens = torch.randn(batch, length, 12, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 2:] = False
    return x, t, tokens, mask


def test_scale_zero_is_the_conditional_prediction_in_one_pass():
    model = CountingModel(_model())
    x, t, tokens, mask = _cond()
    rewards = reward_targets(REWARDS, 3, level=1.0)
    v = guided_velocity_fn(model, tokens, mask, rewards, scale=0.0)(x, t)
    assert model.batch_sizes == [3]
    torch.testing.assert_close(v, model(x, t, tokens, mask, rewards, None))


def test_batched_guidance_equals_two_forwards():
    model = CountingModel(_model())
    x, t, tokens, mask = _cond()
    pos = reward_targets(REWARDS, 3, level=1.0)
    reward_mask = torch.tensor([[True, True], [True, False], [True, True]])
    neg_tokens, neg_mask = torch.randn(3, 2, 12), torch.tensor([[True, False]] * 3)  # shorter "empty" prompt
    w = 2.5
    fn = guided_velocity_fn(model, tokens, mask, pos, reward_mask, scale=w,
                            neg_text_tokens=neg_tokens, neg_text_mask=neg_mask)
    v = fn(x, t)
    assert model.batch_sizes == [6]
    v_pos = model(x, t, tokens, mask, pos, reward_mask)
    v_neg = model(x, t, neg_tokens, neg_mask, torch.zeros_like(pos), reward_mask)
    torch.testing.assert_close(v, v_pos + w * (v_pos - v_neg), **TOL)


def test_default_negative_is_all_rewards_low_same_text():
    model = _model()
    x, t, tokens, mask = _cond()
    pos = reward_targets(REWARDS, 3, level=0.9, overrides={"aesthetic": 0.625})
    neg = reward_targets(REWARDS, 3, level=0.0)
    v = guided_velocity_fn(model, tokens, mask, pos, scale=1.0)(x, t)
    v_pos, v_neg = model(x, t, tokens, mask, pos), model(x, t, tokens, mask, neg)
    torch.testing.assert_close(v, 2 * v_pos - v_neg, **TOL)
    assert not torch.allclose(v, v_pos)


def test_text_only_guidance_for_a_baseline_model():
    model = _model(reward_names=())
    x, t, tokens, mask = _cond()
    empty = torch.zeros(3, 1, 12), torch.zeros(3, 1, dtype=torch.bool)
    v = guided_velocity_fn(model, tokens, mask, None, scale=3.0, neg_text_tokens=empty[0],
                           neg_text_mask=empty[1])(x, t)
    v_pos, v_neg = model(x, t, tokens, mask), model(x, t, *empty)
    torch.testing.assert_close(v, v_pos + 3.0 * (v_pos - v_neg), **TOL)


def test_guided_sampling_is_deterministic_for_a_seed():
    model = _model()
    _, _, tokens, mask = _cond()
    fn = guided_velocity_fn(model, tokens, mask, reward_targets(REWARDS, 3), scale=1.5)
    outs = [sample_euler(fn, torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7)), steps=4)
            for _ in range(2)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_reward_targets_and_errors():
    targets = reward_targets(REWARDS, 2, level=0.8, overrides={"alignment": 0.1})
    torch.testing.assert_close(targets, torch.tensor([[0.8, 0.1], [0.8, 0.1]]))
    with pytest.raises(KeyError, match="not one of"):
        reward_targets(REWARDS, 2, overrides={"hps": 1.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reward_targets(REWARDS, 2, overrides={"alignment": 2.0})
    _, _, tokens, mask = _cond()
    with pytest.raises(ValueError, match="neg_text_mask"):
        guided_velocity_fn(_model(), tokens, mask, None, scale=1.0, neg_text_tokens=tokens)
    with pytest.raises(ValueError, match="batch"):
        guided_velocity_fn(_model(), tokens, mask, None, scale=1.0, neg_text_tokens=tokens[:1],
                           neg_text_mask=mask[:1])


# -- MIRO's sampling options: guidance interval / ramp, snapping, push --------------------------------


def _schedule_fn(model, schedule, scale=2.5):
    from miro.flow.guidance import GuidanceSchedule

    x, t, tokens, mask = _cond()
    pos = reward_targets(REWARDS, 3)
    fn = guided_velocity_fn(model, tokens, mask, pos, scale=scale,
                            schedule=GuidanceSchedule(scale, *schedule) if schedule else None)
    return fn, x, tokens, mask, pos


def test_guidance_interval_spanning_the_schedule_is_plain_guidance() -> None:
    model = _model()
    plain, x, *_ = _schedule_fn(model, None)
    whole, *_ = _schedule_fn(model, ((0.0, 1.0), "constant"))
    for t in (1.0, 0.7, 0.0):
        tt = torch.full((3,), t)
        assert torch.equal(whole(x, tt), plain(x, tt))


def test_outside_the_interval_only_the_conditional_prediction_runs() -> None:
    counting = CountingModel(_model())
    fn, x, tokens, mask, pos = _schedule_fn(counting, ((0.2, 0.6), "constant"))
    plain, *_ = _schedule_fn(counting, None)
    for t, inside in ((0.9, False), (0.1, False), (0.6, True), (0.4, True), (0.2, True)):
        tt = torch.full((3,), t)
        counting.batch_sizes.clear()
        got = fn(x, tt)
        if inside:
            assert counting.batch_sizes == [6]
            torch.testing.assert_close(got, plain(x, tt), **TOL)
        else:
            assert counting.batch_sizes == [3]  # the negative branch is not evaluated
            assert torch.equal(got, counting(x, tt, tokens, mask, pos, None))


def test_linear_ramp_weight_by_hand() -> None:
    from miro.flow.guidance import GuidanceSchedule

    ramp = GuidanceSchedule(2.0, (0.2, 0.6), "linear")
    w = ramp.weight(torch.tensor([1.0, 0.6, 0.5, 0.4, 0.2, 0.1]))
    torch.testing.assert_close(w, torch.tensor([0.0, 0.0, 1.0, 2.0, 4.0, 0.0]))
    # over the whole schedule: the released sampler's 2 w (step / steps) at t = 1 - step / steps
    whole = GuidanceSchedule(7.0, (0.0, 1.0), "linear")
    steps = torch.arange(50)
    torch.testing.assert_close(whole.weight(1 - steps / 50), 2 * 7.0 * steps / 50)
    # ... and the guided velocity uses w(t): v_pos + w (v_pos - v_neg), with w = 2 at t = 0.4
    model = _model()
    fn, x, tokens, mask, pos = _schedule_fn(model, ((0.2, 0.6), "linear"), scale=2.0)
    tt = torch.full((3,), 0.4)
    v_pos = model(x, tt, tokens, mask, pos)
    v_neg = model(x, tt, tokens, mask, torch.zeros_like(pos))
    torch.testing.assert_close(fn(x, tt), v_pos + 2.0 * (v_pos - v_neg), **TOL)


def test_bad_schedules_are_rejected() -> None:
    from miro.flow.guidance import GuidanceSchedule

    for interval in ((0.6, 0.2), (-0.1, 0.5), (0.0, 1.5)):
        with pytest.raises(ValueError, match="guidance interval"):
            GuidanceSchedule(1.0, interval)
    with pytest.raises(ValueError, match="guidance ramp"):
        GuidanceSchedule(1.0, (0.0, 1.0), "cosine")


def test_snap_to_level_maps_nine_to_the_nearest_trained_level() -> None:
    from miro.flow.guidance import snap_to_level

    value, level = snap_to_level(0.9, 64)  # 0.9 * 63 = 56.7
    assert level == 57 and value == pytest.approx(57 / 63)
    assert snap_to_level(0.0, 64) == (0.0, 0) and snap_to_level(1.0, 64) == (1.0, 63)
    assert snap_to_level(0.4, 2) == (0.0, 0) and snap_to_level(0.6, 2) == (1.0, 1)
    assert snap_to_level(0.3, 1) == (0.5, 0)  # a constant reward was trained at 0.5 only
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        snap_to_level(1.2, 64)


def test_push_targets_builds_the_documented_branches() -> None:
    from miro.flow.guidance import push_targets

    names = ["aesthetic", "hps", "pick"]
    positive, negative = push_targets(names, "hps")
    assert positive == {"aesthetic": 10.0, "hps": 10.0, "pick": 10.0}
    assert negative == {"aesthetic": 10.0, "hps": 0.0, "pick": 10.0}
    with pytest.raises(KeyError, match="not one of this model's rewards"):
        push_targets(names, "vqa")
