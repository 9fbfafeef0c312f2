"""engine.distill.kd.kd_loss against values computed by hand, plus its edge cases (β, −inf, masks)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.distill.kd import KD_KINDS, kd_loss, token_divergence

# Two-token vocabulary, worked by hand. Teacher logits (0, 0) → P = (1/2, 1/2); student logits (ln 3, 0)
# → Q = (3/4, 1/4) at τ = 1. At τ = 2 the student's logits halve: Q = (√3, 1) / (√3 + 1); P is unchanged.
#   KL(P‖Q) = ½ ln(½ / ¾) + ½ ln(½ / ¼)             = ½ ln(4/3)
#   KL(Q‖P) = ¾ ln(¾ / ½) + ¼ ln(¼ / ½)             = ¾ ln(3/2) − ¼ ln 2
#   β = ½: M = (5/8, 3/8); KL(P‖M) = ½ ln(16/15); KL(Q‖M) = ¾ ln(6/5) + ¼ ln(2/3)
TEACHER = [0.0, 0.0]
STUDENT = [math.log(3), 0.0]
ROOT3 = math.sqrt(3)
Q_TAU2 = (ROOT3 / (ROOT3 + 1), 1 / (ROOT3 + 1))
M_TAU2 = ((0.5 + Q_TAU2[0]) / 2, (0.5 + Q_TAU2[1]) / 2)
HAND = {
    ("forward_kl", 1.0): 0.5 * math.log(4 / 3),
    ("reverse_kl", 1.0): 0.75 * math.log(3 / 2) - 0.25 * math.log(2),
    ("jsd", 1.0): 0.5 * (0.5 * math.log(16 / 15) + 0.75 * math.log(6 / 5) + 0.25 * math.log(2 / 3)),
    # τ = 2: the divergence of the softened distributions, times τ² = 4.
    ("forward_kl", 2.0): 4 * (0.5 * math.log(0.5 / Q_TAU2[0]) + 0.5 * math.log(0.5 / Q_TAU2[1])),
    ("reverse_kl", 2.0): 4 * (Q_TAU2[0] * math.log(Q_TAU2[0] / 0.5) + Q_TAU2[1] * math.log(Q_TAU2[1] / 0.5)),
    ("jsd", 2.0): 4 * 0.5 * (0.5 * math.log(0.5 / M_TAU2[0]) + 0.5 * math.log(0.5 / M_TAU2[1])
                             + Q_TAU2[0] * math.log(Q_TAU2[0] / M_TAU2[0]) + Q_TAU2[1] * math.log(Q_TAU2[1] / M_TAU2[1])),
}


def _softmax(logits: list[float], temperature: float) -> list[float]:
    top = max(logits)
    weights = [math.exp((x - top) / temperature) for x in logits]
    return [w / sum(weights) for w in weights]


def _kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def _reference(student: list[float], teacher: list[float], kind: str, beta: float, temperature: float) -> float:
    """The per-position divergence in plain Python (float64), independent of the torch code."""
    p, q = _softmax(teacher, temperature), _softmax(student, temperature)
    if kind == "forward_kl":
        return _kl(p, q)
    if kind == "reverse_kl":
        return _kl(q, p)
    m = [beta * x + (1 - beta) * y for x, y in zip(p, q, strict=True)]
    return beta * _kl(p, m) + (1 - beta) * _kl(q, m)


def _tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind", KD_KINDS)
def test_two_token_values_worked_by_hand(kind, temperature):
    loss = kd_loss(_tensor([[STUDENT]]), _tensor([[TEACHER]]), torch.ones(1, 1), kind=kind, temperature=temperature)
    assert loss.item() == pytest.approx(HAND[kind, temperature], rel=1e-5)
    assert loss.dtype == torch.float32 and loss.shape == ()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind", KD_KINDS)
def test_mean_over_masked_positions_times_tau_squared(kind, temperature):
    student = [[[0.2, 1.0, 3.0, -1.0], [2.0, 2.0, 0.0, 1.0]], [[0.0, 0.0, 0.0, 0.0], [5.0, -3.0, 1.0, 0.5]]]
    teacher = [[[1.0, 2.0, 0.5, 0.0], [0.0, 1.0, 1.0, 4.0]], [[3.0, 0.0, -2.0, 1.0], [-1.0, 0.0, 2.0, 0.0]]]
    mask = [[1, 1], [1, 0]]
    divergences = [_reference(student[b][t], teacher[b][t], kind, 0.3, temperature)
                   for b in range(2) for t in range(2) if mask[b][t]]
    expected = temperature ** 2 * sum(divergences) / len(divergences)
    loss = kd_loss(_tensor(student), _tensor(teacher), torch.tensor(mask), kind=kind, beta=0.3, temperature=temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("kind", KD_KINDS)
def test_equal_logits_give_zero(kind, beta):
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0)) * 4  # (B, T, V)
    for temperature in (0.5, 1.0, 2.0):
        loss = kd_loss(logits, logits.clone(), torch.ones(2, 5), kind=kind, beta=beta, temperature=temperature)
        assert abs(loss.item()) < 1e-6


def test_forward_kl_gradient_is_tau_times_q_minus_p_over_positions():
    """d/ds τ²·KL(P‖softmax(s/τ)) / N = τ (Q − P) / N: the textbook gradient, checked exactly."""
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(1, 3, 7, generator=generator).requires_grad_()  # (B, T, V)
    teacher = torch.randn(1, 3, 7, generator=generator)                   # (B, T, V)
    temperature = 2.0
    kd_loss(student, teacher, torch.ones(1, 3), temperature=temperature).backward()
    q = torch.softmax(student.detach() / temperature, -1)
    p = torch.softmax(teacher / temperature, -1)
    torch.testing.assert_close(student.grad, temperature * (q - p) / 3, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("kind", KD_KINDS)
def test_extreme_and_banned_logits_give_finite_values_and_gradients(kind, beta):
    big, banned = 1e4, float("-inf")
    student = _tensor([[[big, -big, 0.0, -big], [0.0, 1.0, banned, 2.0], [-1e30, 3.0, 1.0, big]]]).requires_grad_()
    teacher = _tensor([[[-big, big, banned, 0.0], [0.0, banned, banned, 2.0], [1.0, -big, torch.finfo(torch.float32).min, 0.0]]])
    loss = kd_loss(student, teacher, torch.ones(1, 3), kind=kind, beta=beta, temperature=1.0)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert torch.isfinite(student.grad).all()
    # A token banned by both (−inf in each) contributes nothing: same loss as a vocabulary without it.
    both_banned = kd_loss(_tensor([[[0.0, 1.0, banned, 2.0]]]), _tensor([[[0.0, 3.0, banned, 2.0]]]), torch.ones(1, 1), kind=kind)
    without = kd_loss(_tensor([[[0.0, 1.0, 2.0]]]), _tensor([[[0.0, 3.0, 2.0]]]), torch.ones(1, 1), kind=kind)
    assert both_banned.item() == pytest.approx(without.item(), rel=1e-6)


@pytest.mark.parametrize("kind", KD_KINDS)
def test_masked_positions_have_no_effect(kind):
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(2, 4, 6, generator=generator)  # (B, T, V)
    teacher = torch.randn(2, 4, 6, generator=generator)  # (B, T, V)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    reference = kd_loss(student, teacher, mask, kind=kind)
    garbage_student, garbage_teacher = student.clone(), teacher.clone()
    garbage_student[~mask] = float("nan")
    garbage_teacher[~mask] = float("inf")
    garbage_student.requires_grad_()
    loss = kd_loss(garbage_student, garbage_teacher, mask, kind=kind)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert (garbage_student.grad[~mask] == 0).all() and torch.isfinite(garbage_student.grad).all()
    # Only the selected positions count: the same rows packed densely give the same mean.
    dense = kd_loss(student[mask][None], teacher[mask][None], torch.ones(1, int(mask.sum())), kind=kind)
    assert dense.item() == pytest.approx(reference.item(), rel=1e-6)


def test_no_masked_position_gives_zero_with_a_gradient():
    student = torch.randn(1, 3, 5).requires_grad_()
    loss = kd_loss(student, torch.randn(1, 3, 5), torch.zeros(1, 3), kind="jsd")
    loss.backward()
    assert loss.item() == 0.0 and (student.grad == 0).all()


def test_jsd_endpoints_are_the_limits_of_the_normalized_divergence():
    """The literal JSD_β vanishes at β = 0 and 1 (M = Q, M = P); kd_loss uses the limits instead:
    JSD_β/β → KL(P‖Q) as β → 0 and JSD_β/(1−β) → KL(Q‖P) as β → 1, as TRL's GKDTrainer does."""
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(4, 9, generator=generator)  # (N, V)
    teacher = torch.randn(4, 9, generator=generator)  # (N, V)
    forward = token_divergence(student, teacher, "forward_kl")
    reverse = token_divergence(student, teacher, "reverse_kl")
    torch.testing.assert_close(token_divergence(student, teacher, "jsd", beta=0.0), forward)
    torch.testing.assert_close(token_divergence(student, teacher, "jsd", beta=1.0), reverse)
    small = 1e-3
    torch.testing.assert_close(token_divergence(student, teacher, "jsd", beta=small) / small, forward, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(token_divergence(student, teacher, "jsd", beta=1 - small) / small, reverse, rtol=2e-2, atol=1e-4)
    # In between: 0 ≤ JSD_β ≤ H(β), the binary entropy (JSD_β is a mutual information with a Bernoulli(β)).
    for beta in (0.1, 0.5, 0.9):
        jsd = token_divergence(student * 50, teacher * 50, "jsd", beta=beta)
        assert (jsd >= -1e-7).all() and (jsd <= -beta * math.log(beta) - (1 - beta) * math.log(1 - beta) + 1e-6).all()


def test_low_precision_logits_are_computed_in_fp32():
    student, teacher = torch.randn(1, 2, 8).bfloat16(), torch.randn(1, 2, 8).bfloat16()
    loss = kd_loss(student, teacher, torch.ones(1, 2), kind="jsd")
    expected = kd_loss(student.float(), teacher.float(), torch.ones(1, 2), kind="jsd")
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("arguments, message", [
    ({"kind": "kl"}, "unknown distillation loss"),
    ({"kind": "jsd", "beta": 1.5}, "beta must lie in"),
    ({"temperature": 0.0}, "temperature must be positive"),
])
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        kd_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), torch.ones(1, 1), **arguments)


def test_shape_mismatches_are_refused():
    with pytest.raises(ValueError, match="share a vocabulary"):
        kd_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="does not match"):
        kd_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(2, 1))
