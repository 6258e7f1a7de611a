import pytest
import torch

from miro.flow.path import flow_loss, interpolate, sample_timesteps, shift_time, velocity_target
from miro.flow.sampling import euler_step, integrate, sample_euler, time_schedule


def test_interpolate_and_target_by_hand():
    x0 = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    noise = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    t = torch.tensor([0.25, 1.0])
    torch.testing.assert_close(interpolate(x0, noise, t), torch.tensor([[0.75, 2.5], [1.0, 1.0]]))
    torch.testing.assert_close(velocity_target(x0, noise), torch.tensor([[-1.0, 2.0], [-2.0, 2.0]]))
    img = torch.ones(2, 3, 4, 4)
    assert interpolate(img, torch.zeros_like(img), torch.tensor([0.0, 1.0]))[1].abs().sum() == 0


def test_flow_loss_by_hand():
    x0 = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    noise = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    v = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # errors: [1, 0] and [2, 2]
    torch.testing.assert_close(flow_loss(v, x0, noise, reduction="none"), torch.tensor([0.5, 4.0]))
    torch.testing.assert_close(flow_loss(v, x0, noise), torch.tensor(2.25))
    with pytest.raises(ValueError, match="reduction"):
        flow_loss(v, x0, noise, reduction="sum")


def test_shift_formula():
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(shift_time(t, 3.0), torch.tensor([0.0, 0.75, 1.0]))
    torch.testing.assert_close(shift_time(torch.tensor([0.25]), 2.0), torch.tensor([0.4]))
    assert shift_time(t, 1.0) is t
    with pytest.raises(ValueError, match="shift"):
        shift_time(t, 0.0)


def test_logit_normal_statistics():
    gen = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, mean=0.5, std=0.8, generator=gen)
    assert t.dtype == torch.float32 and ((t > 0) & (t < 1)).all()
    logit = torch.logit(t.double())
    assert abs(logit.mean().item() - 0.5) < 0.03
    assert abs(logit.std().item() - 0.8) < 0.03


def test_logit_normal_shift_and_seed():
    a = sample_timesteps(8, 0.0, 1.0, shift=3.0, generator=torch.Generator().manual_seed(4))
    b = sample_timesteps(8, 0.0, 1.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, shift_time(b, 3.0))
    c = sample_timesteps(8, 0.0, 1.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(b, c, rtol=0, atol=0)


def test_time_schedule():
    sched = time_schedule(4)
    torch.testing.assert_close(sched, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = time_schedule(4, shift=3.0)
    torch.testing.assert_close(shifted, shift_time(sched, 3.0))
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and (shifted.diff() < 0).all()
    with pytest.raises(ValueError, match="steps"):
        time_schedule(0)


def test_euler_step_by_hand():
    x = torch.tensor([[1.0, -2.0]])
    v = torch.tensor([[2.0, 4.0]])
    torch.testing.assert_close(euler_step(x, v, 1.0, 0.75), torch.tensor([[0.5, -3.0]]))
    xb, vb = torch.ones(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    out = euler_step(xb, vb, torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(out, torch.full_like(xb, 0.5))


def test_euler_recovers_a_point_mass_exactly():
    # For data concentrated at x0 the exact velocity is (x_t - x0) / t; Euler on a straight path is exact.
    x0 = torch.tensor([[0.3, -0.7, 1.5]])
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        return (x - x0) / t[:, None]

    out = sample_euler(velocity, noise, steps=7, shift=2.0)
    torch.testing.assert_close(out, x0.expand(4, 3), rtol=0, atol=1e-5)


def test_callback_and_trajectory():
    calls = []
    noise = torch.zeros(2, 3)
    out, traj = sample_euler(
        lambda x, t: torch.ones_like(x), noise, steps=5, return_trajectory=True,
        callback=lambda i, t, t_next, x, v: calls.append((i, t, t_next)),
    )
    assert [c[0] for c in calls] == list(range(5))
    assert calls[0][1] == 1.0 and calls[-1][2] == 0.0
    assert len(traj) == 6 and traj[0] is noise
    torch.testing.assert_close(out, torch.full((2, 3), -1.0))  # integrated dt sums to -1
    torch.testing.assert_close(traj[-1], out)


def test_integrate_with_custom_step():
    seen = []

    def step(x, v, t, t_next):
        seen.append((t, t_next))
        return x + 1

    out = integrate(lambda x, t: x, torch.zeros(1, 2), torch.tensor([1.0, 0.5, 0.0]), step)
    assert seen == [(1.0, 0.5), (0.5, 0.0)]
    torch.testing.assert_close(out, torch.full((1, 2), 2.0))
