"""GSPO's sequence-level importance ratio in grpo_loss (arXiv 2507.18071), checked against hand-written formulas."""

import math

import pytest
import torch

from engine.errors import AhaError
from engine.train.grpo import GRPOConfig
from engine.train.grpo_math import grpo_loss


def sequence_loss_by_hand(logp, old_logp, advantages, mask, eps_low=0.2, eps_high=0.2):
    """(1/B) Σ_i −min(s_i·A_i, clip(s_i)·A_i), s_i = exp(mean of the unmasked log-ratios): the paper's eq. 5–7."""
    terms = []
    for i in range(logp.shape[0]):
        kept = mask[i] != 0
        s = torch.exp((logp[i][kept] - old_logp[i][kept]).sum() / kept.sum())
        a = advantages[i]
        terms.append(-torch.minimum(s * a, s.clamp(1 - eps_low, 1 + eps_high) * a))
    return torch.stack(terms).mean()


def test_one_sequence_inside_the_clip_has_gradient_minus_a_s_over_length():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -1.5]], requires_grad=True)
    old_logp = logp.detach() - torch.tensor([[0.1, -0.05, 0.2, 0.0]])  # mean log-ratio 0.0625: s inside the clip
    advantages = torch.tensor([0.7])
    mask = torch.ones(1, 4, dtype=torch.long)
    loss, metrics = grpo_loss(logp, old_logp, None, advantages, mask, beta=0.0,
                              importance_sampling_level="sequence")
    (grad,) = torch.autograd.grad(loss, logp)
    s = math.exp(0.0625)
    assert loss.item() == pytest.approx(-0.7 * s, abs=1e-6)
    assert torch.allclose(grad, torch.full((1, 4), -0.7 * s / 4), atol=1e-7)
    assert metrics["ratio_mean"] == pytest.approx(s) and metrics["clip_ratio_region"] == 0.0


def test_an_active_clip_stops_the_whole_sequence():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old_logp = logp.detach() - 0.5  # s = e^0.5 ≈ 1.65 > 1.2, with A > 0: clipped high
    loss, metrics = grpo_loss(logp, old_logp, None, torch.tensor([1.0]), torch.ones(1, 3), beta=0.0,
                              importance_sampling_level="sequence")
    (grad,) = torch.autograd.grad(loss, logp)
    assert not grad.any()
    assert loss.item() == pytest.approx(-1.2)
    assert metrics["clip_ratio_high"] == 1.0 and metrics["clip_ratio_low"] == 0.0
    # The token level on the same ratios clips every token too, but a 0.9 ratio token of a mixed row is not clipped.
    mixed_old = logp.detach() - torch.tensor([[0.5, -0.1, 0.5]])
    _, token_metrics = grpo_loss(logp, mixed_old, None, torch.tensor([1.0]), torch.ones(1, 3), beta=0.0)
    assert token_metrics["clip_ratio_high"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_two_sequences_with_a_mask_match_the_hand_formula_and_ignore_masked_nan(aggregation):
    generator = torch.Generator().manual_seed(0)
    logp = -3 * torch.rand(2, 5, generator=generator)
    old_logp = logp + 0.15 * torch.randn(2, 5, generator=generator)
    advantages = torch.tensor([0.8, -1.3])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    logp_nan = torch.where(mask == 0, math.nan, logp).requires_grad_()
    old_inf = torch.where(mask == 0, math.inf, old_logp)
    loss, metrics = grpo_loss(logp_nan, old_inf, None, advantages, mask, beta=0.0, aggregation=aggregation,
                              max_len=5, importance_sampling_level="sequence")
    (grad,) = torch.autograd.grad(loss, logp_nan)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and not grad[mask == 0].any()

    clean = logp.clone().requires_grad_()
    per_sequence = []
    for i in range(2):
        kept = mask[i] != 0
        s = torch.exp((clean[i][kept] - old_logp[i][kept]).mean())
        per_sequence.append(-torch.minimum(s * advantages[i], s.clamp(0.8, 1.2) * advantages[i]))
    lengths = mask.sum(1).float()
    if aggregation == "sequence":  # each completion's (identical) token losses averaged, then over completions
        expected = sum(per_sequence) / 2
    elif aggregation == "token":  # every token of the batch weighs the same: a completion by its length
        expected = sum(term * n for term, n in zip(per_sequence, lengths, strict=True)) / lengths.sum()
    else:
        expected = sum(term * n for term, n in zip(per_sequence, lengths, strict=True)) / (2 * 5)
    (expected_grad,) = torch.autograd.grad(expected, clean)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(grad, expected_grad, atol=1e-7)
    if aggregation == "sequence":
        assert loss.item() == pytest.approx(sequence_loss_by_hand(logp, old_logp, advantages, mask).item(), abs=1e-6)
    ratios = [math.exp((logp[i][mask[i] != 0] - old_logp[i][mask[i] != 0]).mean().item()) for i in range(2)]
    assert metrics["ratio_mean"] == pytest.approx(sum(ratios) / 2, abs=1e-6)


def test_sequence_level_with_one_update_gives_the_token_level_gradient():
    """μ = 1: s ≡ 1 and ∂s/∂logp_t = 1/|y|, so GSPO's gradient is GRPO's for every aggregation."""
    generator = torch.Generator().manual_seed(1)
    logp = (-3 * torch.rand(3, 4, generator=generator)).requires_grad_()
    advantages, mask = torch.tensor([1.0, -0.5, 0.2]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    grads = []
    for level in ("token", "sequence"):
        loss, _ = grpo_loss(logp, logp.detach(), None, advantages, mask, beta=0.0, importance_sampling_level=level)
        grads.append(torch.autograd.grad(loss, logp)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_token_level_is_the_default_and_unchanged():
    generator = torch.Generator().manual_seed(2)
    logp = (-3 * torch.rand(2, 4, generator=generator)).requires_grad_()
    old_logp = logp.detach() + 0.3 * torch.randn(2, 4, generator=generator)
    ref_logp = logp.detach() + 0.1
    advantages, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    default, default_metrics = grpo_loss(logp, old_logp, ref_logp, advantages, mask)
    token, token_metrics = grpo_loss(logp, old_logp, ref_logp, advantages, mask, importance_sampling_level="token")
    assert torch.equal(default, token) and default_metrics == token_metrics
    # The formula of step 1–4 at the token level, written out (aggregation "sequence", β = 0.04).
    ratio = torch.exp(logp - old_logp)
    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
    per_token = -torch.minimum(ratio * advantages[:, None], ratio.clamp(0.8, 1.2) * advantages[:, None]) + 0.04 * kl
    expected = ((per_token * mask).sum(1) / mask.sum(1)).mean()
    assert default.item() == pytest.approx(expected.item(), abs=1e-6)
    sequence, _ = grpo_loss(logp, old_logp, ref_logp, advantages, mask, importance_sampling_level="sequence")
    assert sequence.item() != pytest.approx(default.item(), abs=1e-4)


def test_the_level_is_checked():
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="unknown importance_sampling_level"):
        grpo_loss(logp, logp, None, torch.ones(1), torch.ones(1, 2), beta=0.0, importance_sampling_level="seq")
    with pytest.raises(AhaError, match="importance_sampling_level must be token or sequence"):
        GRPOConfig(model="m", dataset="addition", importance_sampling_level="sentence").validate()
    GRPOConfig(model="m", dataset="addition", importance_sampling_level="sequence").validate()


def test_a_sequence_level_run_trains_end_to_end_and_differs_from_the_token_level(tmp_path):
    """`aha grpo` with importance_sampling_level = "sequence" on the tiny char model: two updates per batch
    (num_iterations 2, so the second one's ratio is not 1), metrics logged, a finite final adapter that is not
    the token-level run's (same seed, same rollouts on the first update)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from engine.train.grpo import train
    from tests.support.char_model import make_char_model

    model = make_char_model(tmp_path / "char")
    reward = tmp_path / "reward.py"  # one the random model earns unevenly, so advantages are not all zero
    reward.write_text("def sevens(prompts, completions, **columns):\n"
                      "    return [completion.count('7') / 4 for completion in completions]\n")
    adapters = {}
    for level in ("token", "sequence"):
        config = GRPOConfig(model=str(model), dataset="addition", rewards=(f"{reward}:sevens",), prompts_per_step=2,
                            num_generations=4, max_completion_length=12, max_steps=2, learning_rate=1e-2, lora_r=4,
                            lora_alpha=8, seed=5, loss_type="grpo", num_iterations=2, lr_scheduler_type="constant",
                            importance_sampling_level=level, output_dir=str(tmp_path / level))
        result = train(config)
        assert result["status"] == "complete" and result["step"] == 2
        steps = [line for line in (tmp_path / level / "metrics.jsonl").read_text().splitlines()]
        assert len(steps) == 2
        adapters[level] = load_file(Path(result["adapter"]) / "adapter_model.safetensors")
    assert adapters["token"].keys() == adapters["sequence"].keys()
    assert all(torch.isfinite(tensor).all() for tensor in adapters["sequence"].values())
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapters["sequence"].items())
    assert any(not torch.equal(adapters["token"][name], adapters["sequence"][name]) for name in adapters["token"])
