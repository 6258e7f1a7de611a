"""GRPO's math against hand computations: the SDE policy step, advantages, chunk ratios and losses,
and the chunking functions on synthetic L1rel curves."""

from __future__ import annotations

import math

import pytest
import torch

from miro.flow.sampling import euler_step, gaussian_kl_same_std, sde_step
from miro.rl.chunks import (
    check_chunks,
    chunk_bounds,
    chunk_means,
    chunk_sampling_weights,
    dynamic_chunks,
    equal_chunks,
    relative_l1,
    relative_l1_per_sample,
    sample_chunks,
)
from miro.rl.grpo import (
    chunk_policy_loss,
    chunk_ratios,
    clipped_surrogate,
    group_advantages,
    policy_kl,
    transition_noise_scale,
)
from miro.rl.module import trained_bounds

# ---------------------------------------------------------------------------------------------------
# SDE step


def test_sde_step_log_prob_is_the_gaussian_density_of_the_flow_grpo_step() -> None:
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    t, t_next, a = 0.6, 0.45, 0.7
    step = sde_step(x, v, t, t_next, a, generator=torch.Generator().manual_seed(1))
    # Flow-GRPO's formulas, written out independently of the implementation.
    std_t = a * math.sqrt(t / (1 - t))
    dt = t_next - t
    mean = x * (1 + std_t**2 * dt / (2 * t)) + v * (1 + std_t**2 * (1 - t) / (2 * t)) * dt
    sd = std_t * math.sqrt(-dt)
    torch.testing.assert_close(step.mean, mean)
    torch.testing.assert_close(step.std, torch.full((3,), sd))
    expected = torch.distributions.Normal(mean, sd).log_prob(step.x_next).flatten(1).mean(1)
    torch.testing.assert_close(step.log_prob, expected)
    # The sample itself is mean + sd * eps with eps from the generator.
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(step.x_next, mean + sd * eps)


def test_sde_step_scores_a_given_transition_and_is_float32_under_bf16_inputs() -> None:
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    given = torch.randn(2, 3, 4, 4)
    step = sde_step(x.bfloat16(), v.bfloat16(), 0.5, 0.25, x_next=given)
    assert step.log_prob.dtype == torch.float32 and step.log_prob.shape == (2,)
    assert step.x_next is given
    ref = torch.distributions.Normal(step.mean, step.std[0]).log_prob(given).flatten(1).mean(1)
    torch.testing.assert_close(step.log_prob, ref)


def test_sde_step_without_noise_is_the_euler_step_and_first_step_uses_the_next_time() -> None:
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    quiet = sde_step(x, v, 0.8, 0.6, noise_level=0.0)
    torch.testing.assert_close(quiet.mean, euler_step(x, v, 0.8, 0.6))
    first = sde_step(x, v, 1.0, 0.75, noise_level=0.5)  # 1 / (1 - t) would divide by zero
    torch.testing.assert_close(first.std, torch.full((2,), 0.5 * math.sqrt(1.0 / 0.25) * math.sqrt(0.25)))
    assert torch.isfinite(first.log_prob).all()
    with pytest.raises(ValueError, match="t_next must be smaller"):
        sde_step(x, v, 0.5, 0.5)
    with pytest.raises(ValueError, match="noise level"):
        sde_step(x, v, 0.5, 0.4, noise_level=-1)


def test_kl_between_equal_std_gaussians_by_hand() -> None:
    mean, ref = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    ref[0] = 1.0
    ref[1, 0, 0, 0] = 2.0
    kl = gaussian_kl_same_std(mean, ref, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(kl, torch.tensor([1.0 / (2 * 0.25), (4.0 / 4) / 2]))


def test_kl_forms_by_hand_flow_grpo_is_divided_by_the_noise_scale_only() -> None:
    x, v, v_ref = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t, t_next, a = 0.6, 0.45, 0.7
    step, ref = sde_step(x, v, t, t_next, a), sde_step(x, v_ref, t, t_next, a)
    dt = t_next - t
    std_t = a * math.sqrt(t / (1 - t))  # Flow-GRPO's std_dev_t
    scale = transition_noise_scale(step.std, dt)
    torch.testing.assert_close(scale, torch.full((2,), std_t))
    # Flow-GRPO: ((mean - mean_ref) ** 2).mean(dim=(1, 2, 3)) / (2 * std_dev_t ** 2)
    flow_grpo = ((step.mean - ref.mean) ** 2).mean((1, 2, 3)) / (2 * std_t**2)
    torch.testing.assert_close(policy_kl(step.mean, ref.mean, scale, dt), flow_grpo)
    torch.testing.assert_close(policy_kl(step.mean, ref.mean, scale, dt, "flow_grpo"), flow_grpo)
    # the exact KL of the two transitions N(mean, std_t^2 |dt|): 1 / |dt| times more
    transition = policy_kl(step.mean, ref.mean, scale, dt, "transition")
    torch.testing.assert_close(transition, flow_grpo / abs(dt))
    torch.testing.assert_close(transition, gaussian_kl_same_std(step.mean, ref.mean, step.std))
    with pytest.raises(ValueError, match="kl must be one of flow_grpo, transition"):
        policy_kl(step.mean, ref.mean, scale, dt, "exact")


# ---------------------------------------------------------------------------------------------------
# Advantages and losses


def test_group_advantages_normalise_within_each_prompt_group() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    adv = group_advantages(rewards, group_size=3, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))  # std of 1,2,3 is 1
    glob = group_advantages(rewards, group_size=3, global_std=True, eps=0.0)
    torch.testing.assert_close(glob[:3], torch.tensor([-1.0, 0.0, 1.0]) / rewards.std())
    clamped = group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), group_size=4, clamp=1.0)
    torch.testing.assert_close(clamped, torch.tensor([-0.5, -0.5, -0.5, 1.0]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), group_size=4)


def test_chunk_ratio_is_the_geometric_mean_of_step_ratios() -> None:
    new = torch.tensor([[0.1, 0.3, -0.2, 0.0, 0.4]])
    old = torch.zeros(1, 5)
    ratios = chunk_ratios(new, old, [2, 3])
    step_ratios = new.exp()[0]
    torch.testing.assert_close(ratios[0, 0], (step_ratios[0] * step_ratios[1]).sqrt())
    torch.testing.assert_close(ratios[0, 1], (step_ratios[2] * step_ratios[3] * step_ratios[4]) ** (1 / 3))


def test_clipped_surrogate_takes_the_pessimistic_side() -> None:
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    loss = clipped_surrogate(ratio, adv, clip_range=0.2)
    # A > 0: min(r A, clip(r) A) -> clipped when r is too large, unclipped when small; A < 0: mirrored.
    torch.testing.assert_close(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8, -2.0]))


def test_asymmetric_clipping_uses_its_own_bound_on_each_side() -> None:
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # clip(r, 1 - 0.1, 1 + 0.3): A > 0 is capped at 1.3, A < 0 at 0.9
    loss = clipped_surrogate(ratio, adv, clip_range=0.2, clip_low=0.1, clip_high=0.3)
    torch.testing.assert_close(loss, torch.tensor([-1.3, 1.5, -0.5, 0.9]))
    out = chunk_policy_loss(
        torch.tensor([[0.25], [-0.05], [-0.2]]), torch.zeros(3, 1), torch.ones(3), [1], 0.2,
        clip_low=0.1, clip_high=0.3,
    )  # fmt: skip
    assert float(out.clip_fraction) == pytest.approx(1 / 3)  # exp(0.25) = 1.28 and 0.95 inside, 0.82 below
    with pytest.raises(ValueError, match="must be >= 0"):
        clipped_surrogate(ratio, adv, 0.2, clip_low=-0.1)


def test_chunks_of_one_step_reproduce_the_step_level_loss_exactly() -> None:
    gen = torch.Generator().manual_seed(3)
    n, steps, clip = 6, 5, 0.05
    new = 0.1 * torch.randn(n, steps, generator=gen)
    old = 0.1 * torch.randn(n, steps, generator=gen)
    adv = torch.randn(n, generator=gen)
    # Flow-GRPO's step-level loss: mean over samples and steps of max(-A r_t, -A clip(r_t)).
    terms = []
    for i in range(n):
        for t in range(steps):
            r = math.exp(float(new[i, t] - old[i, t]))
            a = float(adv[i])
            terms.append(max(-a * r, -a * min(max(r, 1 - clip), 1 + clip)))
    step_level = sum(terms) / len(terms)
    out = chunk_policy_loss(new, old, adv, [1] * steps, clip)
    assert float(out.loss) == pytest.approx(step_level, rel=1e-6)
    # One chunk of all steps is the sequence-level objective: a single ratio per trajectory.
    seq = chunk_policy_loss(new, old, adv, [steps], clip)
    r = (new - old).mean(1).exp()
    torch.testing.assert_close(seq.loss, clipped_surrogate(r, adv, clip).mean())


def test_chunk_loss_on_a_subset_of_chunks_and_its_statistics() -> None:
    new = torch.zeros(2, 3, requires_grad=True)
    old = torch.zeros(2, 3)
    out = chunk_policy_loss(new, old, torch.tensor([1.0, -1.0]), [2, 1, 3], 0.1, chunks=[0, 1])
    assert float(out.ratio_mean) == 1.0 and float(out.clip_fraction) == 0.0
    out.loss.backward()  # at ratio 1: -A / chunk size per step, averaged over samples and chunks
    torch.testing.assert_close(new.grad, torch.tensor([[-0.125, -0.125, -0.25], [0.125, 0.125, 0.25]]))
    with pytest.raises(ValueError, match="do not cover"):
        chunk_policy_loss(new, old, torch.ones(2), [2, 1, 3], 0.1)


# ---------------------------------------------------------------------------------------------------
# Chunking


def test_chunk_lists_and_bounds() -> None:
    assert equal_chunks(10, 4) == [4, 4, 2]
    assert equal_chunks(16, 1) == [1] * 16
    assert check_chunks([2, 3, 4, 7], 16) == [2, 3, 4, 7]
    assert chunk_bounds([2, 3, 4]) == [(0, 2), (2, 5), (5, 9)]
    with pytest.raises(ValueError, match="sum to 15, but the sampler makes 16"):
        check_chunks([2, 3, 4, 6], 16)
    with pytest.raises(ValueError, match="positive"):
        check_chunks([0, 16], 16)
    with pytest.raises(ValueError, match=">= 1"):
        equal_chunks(8, 0)


def test_relative_l1_per_sample_by_hand() -> None:
    states = torch.tensor([[[4.0], [1.0]], [[2.0], [3.0]]])  # [T + 1 = 2, B = 2, D = 1]
    torch.testing.assert_close(relative_l1_per_sample(states), torch.tensor([[2.0 / 4.0, 2.0 / 1.0]]))


def test_relative_l1_by_hand() -> None:
    states = torch.tensor([[[1.0, -1.0]], [[2.0, -1.0]], [[2.0, 1.0]]])  # [T + 1 = 3, B = 1, D = 2]
    # the change of each step over the state before it (GCPO): |(1, 0)| / |(1, -1)|, |(0, 2)| / |(2, -1)|
    torch.testing.assert_close(relative_l1(states), torch.tensor([1.0 / 2.0, 2.0 / 3.0]))


@pytest.mark.parametrize(
    ("curve", "k", "expected"),
    [
        ([1, 1, 4, 4, 4, 16, 16, 16, 16], 3, [2, 3, 4]),  # three plateaus
        ([0.9, 1.1, 1.0, 0.2, 0.21, 0.19, 0.2, 0.8], 3, [3, 4, 1]),  # high, low, a jump at the end
        ([5, 4, 3, 2, 1], 5, [1, 1, 1, 1, 1]),  # K = T: step level
        ([5, 4, 3, 2, 1], 1, [5]),  # K = 1: whole trajectory
    ],
)
def test_dynamic_chunks_cut_where_the_dynamics_change(
    curve: list[float], k: int, expected: list[int]
) -> None:
    assert dynamic_chunks(curve, k) == expected


def test_dynamic_chunks_compare_ratios_not_differences() -> None:
    # On a linear scale 10 -> 20 would dwarf 0.1 -> 0.2; both are doublings, so the two cuts go there.
    curve = [0.1, 0.1, 0.2, 0.2, 10, 10, 20, 20]
    assert dynamic_chunks(curve, 4) == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="finite and positive"):
        dynamic_chunks([1.0, 0.0, 2.0], 2)
    with pytest.raises(ValueError, match="between 1 and the 3"):
        dynamic_chunks([1.0, 2.0, 3.0], 4)


def test_weights_from_rollout_l1rel_favour_the_high_noise_chunks() -> None:
    # A trajectory whose change shrinks toward the clean end, as along a noisy rollout: 10, 6, 4, 3, 2.5
    states = torch.tensor([10.0, 6.0, 4.0, 3.0, 2.5]).reshape(5, 1, 1)
    l1rel = relative_l1(states)
    torch.testing.assert_close(l1rel, torch.tensor([4 / 10, 2 / 6, 1 / 4, 0.5 / 3]))
    weights = chunk_sampling_weights(l1rel, [2, 2])
    high, low = (0.4 + 1 / 3) / 2, (0.25 + 0.5 / 3) / 2
    torch.testing.assert_close(weights, torch.tensor([high, low]) / (high + low))
    assert weights[0] > weights[1]


def test_skipping_the_last_step_shortens_the_last_chunk() -> None:
    assert trained_bounds([2, 3], skip_last_step=False) == [(0, 2), (2, 5)]
    assert trained_bounds([2, 3], skip_last_step=True) == [(0, 2), (2, 4)]
    assert trained_bounds([1, 1, 1], skip_last_step=True) == [(0, 1), (1, 2), (2, 2)]  # nothing left


def test_weighted_chunk_sampling_follows_the_mean_l1rel() -> None:
    l1rel = torch.tensor([4.0, 4.0, 1.0, 1.0, 1.0, 1.0])
    weights = chunk_sampling_weights(l1rel, [2, 4])
    torch.testing.assert_close(weights, torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(chunk_means(l1rel, [2, 4]), torch.tensor([4.0, 1.0]))
    gen = torch.Generator().manual_seed(0)
    draws = [sample_chunks(weights, 1, gen)[0] for _ in range(2000)]
    assert 0.77 < draws.count(0) / 2000 < 0.83
    both = sample_chunks(torch.tensor([0.1, 0.6, 0.3]), 2, torch.Generator().manual_seed(1))
    assert both == sorted(both) and len(set(both)) == 2
    with pytest.raises(ValueError, match="1 to 3"):
        sample_chunks(torch.ones(3), 4)
