"""GRPO's pure math on hand-computed tensors: advantages, the loss and its gradients, log-probs, masks."""

import math

import pytest
import torch

from engine.train.fused_head import selective_log_softmax
from engine.train.grpo_math import (
    completion_mask,
    frac_reward_zero_std,
    group_advantages,
    grpo_loss,
    kl_penalty,
)

NAN = math.nan
C = 1 - math.log(2)  # the k3 penalty where ref − logp = ln 2: 2 − ln 2 − 1


def close(actual, expected, tol=1e-6):
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# group_advantages ---------------------------------------------------------------------------------

def test_group_scale_is_centered_over_unbiased_std_plus_eps():
    # [1, 2, 3]: mean 2, unbiased std 1. [0, 2]: mean 1, std √2 (not 1, the biased one).
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0]), group_size=3)
    assert close(adv, [-1 / 1.0001, 0.0, 1 / 1.0001])
    adv = group_advantages([0.0, 2.0], group_size=2, eps=0.0)
    assert close(adv, [-1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert close(group_advantages([0.0, 2.0], group_size=2, eps=0.5), [-1 / (math.sqrt(2) + 0.5), 1 / (math.sqrt(2) + 0.5)])


def test_groups_are_consecutive_and_match_torch_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.2, 1.2, 0.2, 0.0])
    adv = group_advantages(rewards, group_size=4)
    # Group 0: mean 0.5, unbiased std √(4 · 0.25 / 3) = √(1/3).
    assert close(adv[:4], [x / (math.sqrt(1 / 3) + 1e-4) for x in (0.5, -0.5, -0.5, 0.5)])
    expected = torch.cat([(group - group.mean()) / (group.std() + 1e-4) for group in rewards.view(2, 4)])
    assert close(adv, expected)


def test_scale_none_is_reward_minus_group_mean():
    adv = group_advantages([1.0, 0.0, 0.0, 0.0, 3.0, 5.0], group_size=3, scale="none")
    assert close(adv, [2 / 3, -1 / 3, -1 / 3, -8 / 3, 1 / 3, 7 / 3])


def test_scale_batch_divides_by_the_std_of_all_rewards():
    # All six: mean 1, squared deviations 0+1+4+1+1+1 = 8, unbiased variance 8/5.
    adv = group_advantages([1.0, 2.0, 3.0, 0.0, 0.0, 0.0], group_size=3, scale="batch")
    std = math.sqrt(8 / 5)
    assert close(adv, [-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4), 0.0, 0.0, 0.0])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_a_group_with_equal_rewards_gets_zero_advantages(scale):
    adv = group_advantages([0.7, 0.7, 0.7, 0.0, 1.0, 0.0], group_size=3, scale=scale)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert adv[3:].abs().min() > 0


def test_unscored_samples_leave_the_baseline_and_get_zero():
    # Scored [1, 3, 2]: mean 2, std 1 — as if the NaN sample had not been drawn.
    adv = group_advantages(torch.tensor([1.0, NAN, 3.0, 2.0]), group_size=4)
    assert close(adv, [-1 / 1.0001, 0.0, 1 / 1.0001, 0.0])
    assert close(group_advantages([1.0, None, 3.0, 2.0], group_size=4, scale="none"), [-1.0, 0.0, 1.0, 0.0])
    # One scored sample, or none: no baseline, no signal.
    adv = group_advantages([NAN, 5.0, NAN, NAN], group_size=2)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert not torch.isnan(group_advantages([NAN, 1.0, 2.0, 4.0], group_size=4, scale="batch")).any()


def test_frac_reward_zero_std_counts_groups_without_signal():
    # equal | different | one scored | none scored
    rewards = [1.0, 1.0, 0.0, 1.0, NAN, 2.0, NAN, NAN]
    assert frac_reward_zero_std(rewards, group_size=2) == 0.75
    assert frac_reward_zero_std(torch.tensor([0.0, 1.0, 1.0, 1.0]), group_size=4) == 0.0


def test_advantage_arguments_are_checked():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages([1.0, 2.0, 3.0], group_size=4)
    with pytest.raises(ValueError, match="unknown scale"):
        group_advantages([1.0, 2.0], group_size=2, scale="std")
    assert group_advantages(torch.tensor([0, 1]), group_size=2).dtype == torch.float32


# grpo_loss: a hand-computed batch -----------------------------------------------------------------
# Row 0 (A = +1): ρ = 1.5, 0.5, 1 → min(ρA, clip(ρ)A) = 1.2 (clipped high), 0.5, 1.
# Row 1 (A = −1): ρ = 1.5, 0.5, masked → min = −1.5, −0.8 (clipped low).
# ref − logp = ln 2 at (0, 0) and (1, 1), else 0 → D = C there, 0 elsewhere.

def hand_batch():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
    log_ratio = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 1.0]]))
    old_logp = logp - log_ratio
    ref_logp = logp + torch.tensor([[math.log(2), 0.0, 0.0], [0.0, math.log(2), 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old_logp, ref_logp, advantages, mask


ROW0 = [-1.2 + 0.1 * C, -0.5, -1.0]  # per-token loss with β = 0.1
ROW1 = [1.5, 0.8 + 0.1 * C]


@pytest.mark.parametrize(("aggregation", "expected"), [
    ("sequence", (sum(ROW0) / 3 + sum(ROW1) / 2) / 2),
    ("token", (sum(ROW0) + sum(ROW1)) / 5),
    ("constant", (sum(ROW0) + sum(ROW1)) / (2 * 4)),
])
def test_loss_by_aggregation_on_a_hand_computed_batch(aggregation, expected):
    loss, metrics = grpo_loss(*hand_batch(), beta=0.1, aggregation=aggregation, max_len=4)
    assert loss.dim() == 0
    assert close(loss, expected)
    assert close(metrics["kl"], 2 * C / 5)


def test_clip_metrics_on_crafted_ratios():
    _, metrics = grpo_loss(*hand_batch(), beta=0.1)
    assert metrics == pytest.approx({"ratio_mean": 1.0, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2,
                                     "clip_ratio_region": 0.4, "kl": 2 * C / 5})
    assert all(type(value) is float for value in metrics.values())
    # A wider high clip (DAPO's clip-higher) lets ρ = 1.5 through: row 0 then contributes 1.5, not 1.2.
    loss, metrics = grpo_loss(*hand_batch(), beta=0.0, epsilon_high=0.6, aggregation="token")
    assert metrics["clip_ratio_high"] == 0.0 and metrics["clip_ratio_low"] == pytest.approx(0.2)
    assert close(loss, (-1.5 - 0.5 - 1.0 + 1.5 + 0.8) / 5)


def test_beta_zero_needs_no_reference():
    logp, old_logp, _, advantages, mask = hand_batch()
    loss, metrics = grpo_loss(logp, old_logp, None, advantages, mask, beta=0.0, aggregation="token")
    assert close(loss, (-1.2 - 0.5 - 1.0 + 1.5 + 0.8) / 5)
    assert "kl" not in metrics
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp, old_logp, None, advantages, mask, beta=0.04)
    with pytest.raises(ValueError, match="needs max_len"):
        grpo_loss(*hand_batch(), aggregation="constant")
    with pytest.raises(ValueError, match="unknown aggregation"):
        grpo_loss(*hand_batch(), aggregation="mean")


# grpo_loss: gradients -----------------------------------------------------------------------------

def random_batch(seed=0, batch=4, length=6):
    generator = torch.Generator().manual_seed(seed)
    logp = (-3 * torch.rand(batch, length, generator=generator)).requires_grad_()
    ref_logp = -3 * torch.rand(batch, length, generator=generator)
    advantages = torch.randn(batch, generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    return logp, ref_logp, advantages, mask


def hand_weights(mask, aggregation, max_len):
    """Each token's weight in the loss, written out independently of the implementation."""
    mask = mask.float()
    batch = mask.shape[0]
    if aggregation == "sequence":
        return mask / mask.sum(1, keepdim=True) / batch
    if aggregation == "token":
        return mask / mask.sum()
    return mask / (batch * max_len)


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_one_update_without_kl_is_reinforce_with_the_group_baseline(aggregation):
    """μ = 1 (old = logp detached) and β = 0: ∇loss = ∇(−Σ w·A·logp) under the same weights w."""
    logp, _, advantages, mask = random_batch()
    loss, metrics = grpo_loss(logp, logp.detach(), None, advantages, mask, beta=0.0,
                              aggregation=aggregation, max_len=8)
    (grad,) = torch.autograd.grad(loss, logp)
    weights = hand_weights(mask, aggregation, 8)
    reinforce = -(weights * advantages.unsqueeze(1) * logp).sum()
    (expected,) = torch.autograd.grad(reinforce, logp)
    assert torch.allclose(grad, expected, atol=1e-7)
    assert close(loss, -(weights * advantages.unsqueeze(1)).sum())
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_ratio_region"] == 0.0


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_zero_advantages_give_zero_gradient(aggregation):
    logp, ref_logp, advantages, mask = random_batch(seed=1)
    zero = torch.zeros_like(advantages)
    loss, _ = grpo_loss(logp, logp.detach() + 0.1, None, zero, mask, beta=0.0, aggregation=aggregation, max_len=8)
    (grad,) = torch.autograd.grad(loss, logp)
    assert not grad.any()
    # With the KL term on, a policy equal to the reference still has nothing to move.
    loss, metrics = grpo_loss(logp, logp.detach(), logp.detach(), zero, mask, beta=0.5,
                              aggregation=aggregation, max_len=8)
    (grad,) = torch.autograd.grad(loss, logp)
    assert not grad.any() and metrics["kl"] == 0.0


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_masked_positions_have_no_effect(aggregation):
    logp, ref_logp, advantages, mask = random_batch(seed=2)
    old_logp = logp.detach() + 0.3 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(3))

    def run(fill):
        masked = mask == 0
        inputs = [torch.where(masked, fill, tensor.detach()) for tensor in (logp, old_logp, ref_logp)]
        inputs[0].requires_grad_()
        loss, metrics = grpo_loss(inputs[0], inputs[1], inputs[2], advantages, mask, beta=0.04,
                                  aggregation=aggregation, max_len=8)
        (grad,) = torch.autograd.grad(loss, inputs[0])
        return loss, metrics, grad

    loss, metrics, grad = run(torch.tensor(-1.0))
    for fill in (100.0, -1e30, math.inf, math.nan):
        other_loss, other_metrics, other_grad = run(torch.tensor(fill))
        assert torch.equal(other_loss, loss) and other_metrics == metrics
        assert torch.equal(other_grad, grad)
    assert not grad[mask == 0].any()
    assert grad[mask == 1].abs().min() > 0


def test_kl_penalty_is_nonnegative_and_zero_at_the_reference():
    values = torch.linspace(-20, 0, 41)
    logp, ref_logp = torch.meshgrid(values, values, indexing="ij")  # (41, 41)
    penalty = kl_penalty(logp, ref_logp)
    assert (penalty >= 0).all()
    assert not kl_penalty(values, values).any()
    assert close(kl_penalty(torch.tensor([0.0]), torch.tensor([math.log(2)])), [C])


# selective_log_softmax and completion_mask --------------------------------------------------------

@pytest.mark.parametrize("chunk_rows", [1, 2, 5, 7, 100])
def test_selective_log_softmax_matches_log_softmax_and_its_gradient(chunk_rows):
    generator = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(3, 7, 11, generator=generator)).requires_grad_()
    ids = torch.randint(0, 11, (3, 7), generator=generator)
    upstream = torch.randn(3, 7, generator=generator)

    logp = selective_log_softmax(logits, ids, temperature=0.7, chunk_rows=chunk_rows)
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert logp.shape == (3, 7) and logp.dtype == torch.float32
    assert torch.allclose(logp, expected, atol=1e-5)
    (grad,) = torch.autograd.grad((logp * upstream).sum(), logits)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), logits)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_selective_log_softmax_reads_bf16_slices_in_float32():
    generator = torch.Generator().manual_seed(5)
    full = (4 * torch.randn(2, 9, 13, generator=generator)).bfloat16().requires_grad_()
    ids = torch.randint(0, 13, (2, 5), generator=generator)
    sliced = full[:, 3:8]  # a non-contiguous view, as the loop slices the completion positions
    logp = selective_log_softmax(sliced, ids, chunk_rows=2)
    expected = torch.log_softmax(sliced.detach().float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert logp.dtype == torch.float32 and torch.allclose(logp, expected, atol=1e-5)
    logp.sum().backward()
    assert full.grad.dtype == torch.bfloat16
    assert not full.grad[:, :3].any() and not full.grad[:, 8:].any()


def test_selective_log_softmax_checks_shapes():
    with pytest.raises(ValueError, match=r"logits \(B, T, V\)"):
        selective_log_softmax(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        selective_log_softmax(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), temperature=0)


def test_completion_mask_keeps_the_first_eos_when_pad_is_eos():
    eos = 2  # also the pad token, as in the R1 distills
    ids = torch.tensor([
        [5, 3, 2, 2, 2],  # stopped, then padded
        [2, 2, 2, 2, 2],  # stopped at once
        [5, 6, 7, 8, 9],  # truncated: no EOS
        [5, 2, 7, 2, 9],  # tokens after the first EOS never count
    ])
    assert completion_mask(ids, eos).tolist() == [
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
    ]
    assert completion_mask(torch.tensor([[4, 9, 3, 9]]), [3, 9]).tolist() == [[1, 1, 0, 0]]
    assert completion_mask(ids, eos).dtype == torch.long
