"""GRPO's pure math: group advantages, the clipped surrogate loss with its KL penalty, and the completion mask.

Tensors in, (value, metrics) out. Knows nothing of models, tokenizers, rewards or logging; the training
loop in `engine.train.grpo` decides what to record. Formulas: DeepSeekMath (arXiv 2402.03300) eq. 1–3, with
DAPO's token-level (arXiv 2503.14476) and Dr. GRPO's constant (arXiv 2503.20783) aggregation, and GSPO's
sequence-level importance ratio (arXiv 2507.18071).
torch is imported inside the functions, like every heavy library in `engine`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("sequence", "token", "constant")
IMPORTANCE_LEVELS = ("token", "sequence")
# Rows of a (rows, V) float32 block per step of `selective_log_softmax`: 256 rows of the R1 distills'
# 152064-token vocabulary are 156 MB, where (B, T, V) for 16 completions of 4096 tokens would be 40 GB.


def group_advantages(rewards: torch.Tensor | Sequence[float | None], group_size: int,
                     scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Advantage of each completion relative to the others sampled for the same prompt (eq. 3).

    1. r (N,) is reshaped to (N/G, G): each group is G *consecutive* completions of one prompt.
    2. Per group, over its scored samples: mean(r) and the unbiased std (as `torch.std`).
    3. scale="group": A_i = (r_i − mean) / (std + eps)              (DeepSeekMath eq. 3, TRL's default)
       scale="batch": A_i = (r_i − mean) / (std_batch + eps)        (std over all scored rewards; TRL)
       scale="none":  A_i = r_i − mean                             (Dr. GRPO: no std, no difficulty bias)
    4. Unscored samples — NaN (or None) where a reward function failed — are left out of their group's
       mean and std and get A = 0, so they neither move the policy nor shift the baseline of the others.
       A group whose scored rewards are all equal (or with fewer than two scored) gives A = 0 throughout.

    Returns A (N,) in the rewards' float dtype (float32 for lists and integer tensors).
    """
    import torch

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    grouped = _grouped(rewards, group_size)  # (N/G, G)
    scored = ~torch.isnan(grouped)  # (N/G, G)
    count = scored.sum(1, keepdim=True)  # (N/G, 1)
    mean = torch.where(scored, grouped, 0).sum(1, keepdim=True) / count.clamp(min=1)  # (N/G, 1)
    centered = torch.where(scored, grouped - mean, 0)  # (N/G, G)  unscored → 0
    if scale == "group":
        std = (centered.square().sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # (N/G, 1)
        centered = centered / (std + eps)  # (N/G, G)
    elif scale == "batch":
        scored_rewards = grouped[scored]  # (S,)
        std = scored_rewards.std() if scored_rewards.numel() > 1 else grouped.new_zeros(())  # ()
        centered = centered / (std + eps)  # (N/G, G)
    return centered.reshape(-1)  # (N,)


def frac_reward_zero_std(rewards: torch.Tensor | Sequence[float | None], group_size: int) -> float:
    """Fraction of groups that give no learning signal: their scored rewards are all equal (a group with
    fewer than two scored samples counts too). Logged as TRL's `frac_reward_zero_std`; near 1.0 the
    task is too easy or too hard for the model and GRPO learns nothing."""
    import torch

    grouped = _grouped(rewards, group_size)  # (N/G, G)
    scored = ~torch.isnan(grouped)  # (N/G, G)
    highest = torch.where(scored, grouped, -math.inf).amax(1)  # (N/G,)
    lowest = torch.where(scored, grouped, math.inf).amin(1)  # (N/G,)  no scored: -inf <= inf
    return (highest <= lowest).float().mean().item()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, epsilon_low: float = 0.2,
              epsilon_high: float = 0.2, beta: float = 0.04, aggregation: str = "sequence",
              max_len: int | None = None,
              importance_sampling_level: str = "token") -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective as a loss to minimize, and its diagnostics.

    Inputs are per completion token: logp, old_logp, ref_logp, mask (B, T); advantages (B,).
    old_logp and ref_logp are constants (detached here). With one update per batch (μ = 1) pass
    old_logp = logp.detach(): then ρ ≡ 1 and the loss is REINFORCE with the group baseline.

    1. importance_sampling_level="token":    ρ_it = exp(logp_it − old_logp_it)     (PPO/GRPO, per token)
       importance_sampling_level="sequence": ρ_it = s_i = exp( (1/|y_i|) Σ_t m_it (logp_it − old_logp_it) )
         with |y_i| = max(Σ_t m_it, 1): GSPO's length-normalized sequence ratio (arXiv 2507.18071 eq. 7,
         TRL's importance_sampling_level="sequence"), the same for every token of completion i; the clip in
         3. then keeps or drops a whole completion. Inside the clip range ∂ℓ_i/∂logp_it = −A_i·s_i/|y_i|
         for each unmasked t (with aggregation="sequence", the paper's objective).
    2. D_t = exp(ref_t − logp_t) − (ref_t − logp_t) − 1 ≥ 0             (k3 estimator of KL(π‖π_ref), eq. 2)
    3. ℓ_t = −( min(ρ_t·A, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A) − β·D_t )  (eq. 1; ε_high > ε_low is DAPO's clip-higher)
    4. aggregate over the unmasked tokens (m_t = mask):
       "sequence": (1/B) Σ_i (Σ_t ℓ_it m_it) / (Σ_t m_it)   (eq. 1: per completion, then over completions;
                   a long completion's tokens weigh less — the length bias Dr. GRPO points out)
       "token":    Σ ℓ·m / Σ m                             (DAPO: every token of the batch weighs the same)
       "constant": Σ ℓ·m / (B · max_len)                    (Dr. GRPO: max_len = the generation limit)
    With gradient accumulation, "token" normalizes per call; the caller scales the micro-batches.

    ref_logp may be None when β = 0 (no reference forward pass). Masked positions have no effect on
    the loss or the gradients, whatever values they hold (NaN and inf included).
    Metrics (floats, means over unmasked tokens): "ratio_mean" (ρ); "clip_ratio_low" (ρ < 1 − ε_low
    with A < 0: the clip stops a push down), "clip_ratio_high" (ρ > 1 + ε_high with A > 0),
    "clip_ratio_region" (either); "kl" (D) when ref_logp is given. At the "sequence" level, ratio_mean
    and the clip ratios are means over the completions that have tokens (the share of completions
    clipped, as TRL logs them); kl stays a token mean.
    """
    import torch

    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}")
    if importance_sampling_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; expected one of "
                         f"{', '.join(IMPORTANCE_LEVELS)}")
    if ref_logp is None and beta != 0:
        raise ValueError(f"grpo_loss: beta={beta} needs ref_logp (pass beta=0 to train without a reference)")
    if aggregation == "constant" and max_len is None:
        raise ValueError("grpo_loss: aggregation='constant' needs max_len (the generation's token limit)")
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"grpo_loss: logp, old_logp and mask must share one (B, T) shape, got "
                         f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(mask.shape)}")
    if ref_logp is not None and ref_logp.shape != logp.shape:
        raise ValueError(f"grpo_loss: ref_logp must be {tuple(logp.shape)} like logp, got {tuple(ref_logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"grpo_loss: advantages must be (B,) = {tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")

    keep = mask != 0  # (B, T)
    # Masked values are replaced, not multiplied by 0: 0 · inf is NaN, also in the backward pass.
    logp = torch.where(keep, logp, 0.0)  # (B, T)
    old_logp = torch.where(keep, old_logp.detach(), 0.0)  # (B, T)
    advantages = advantages.detach().to(logp.dtype).unsqueeze(1)  # (B, 1)

    log_ratio = logp - old_logp  # (B, T)  0 at masked positions
    if importance_sampling_level == "sequence":
        lengths = keep.sum(1, keepdim=True).clamp(min=1)  # (B, 1)  |y_i|
        log_ratio = (log_ratio.sum(1, keepdim=True) / lengths).expand_as(logp)  # (B, T)  log s_i on every t
    ratio = torch.exp(log_ratio)  # (B, T)  1. ρ
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)  # (B, T)
    surrogate = torch.minimum(ratio * advantages, clipped_ratio * advantages)  # (B, T)
    per_token = -surrogate  # (B, T)  3. ℓ without the KL term
    kl = None
    if ref_logp is not None:
        kl = kl_penalty(logp, torch.where(keep, ref_logp.detach(), 0.0))  # (B, T)  2. D ≥ 0
        if beta != 0:
            per_token = per_token + beta * kl  # (B, T)  3. ℓ

    weights = _aggregation_weights(keep, aggregation, max_len)  # (B, T)  4., float32
    loss = (per_token.float() * weights).sum()  # ()  summed in float32 whatever the logp dtype

    with torch.no_grad():
        tokens = keep.sum().clamp(min=1)  # ()

        def token_mean(values: torch.Tensor) -> float:  # (B, T) → mean over unmasked tokens
            return (torch.where(keep, values.float(), 0.0).sum() / tokens).item()

        def ratio_mean(values: torch.Tensor) -> float:  # (B, T) → per token, or per completion with tokens
            if importance_sampling_level == "token":
                return token_mean(values)
            has_tokens = keep.any(1)  # (B,)
            return (values[:, 0].float()[has_tokens].sum() / has_tokens.sum().clamp(min=1)).item()

        clipped_low = (ratio < 1 - epsilon_low) & (advantages < 0)  # (B, T)
        clipped_high = (ratio > 1 + epsilon_high) & (advantages > 0)  # (B, T)
        metrics = {
            "ratio_mean": ratio_mean(ratio),
            "clip_ratio_low": ratio_mean(clipped_low),
            "clip_ratio_high": ratio_mean(clipped_high),
            "clip_ratio_region": ratio_mean(clipped_low | clipped_high),
        }
        if kl is not None:
            metrics["kl"] = token_mean(kl)
    return loss, metrics


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π‖π_ref) (Schulman's estimator, DeepSeekMath eq. 2), same shape in and out:
    D = exp(ref − logp) − (ref − logp) − 1, which is ≥ 0 everywhere (e^x ≥ 1 + x) and 0 where ref = logp."""
    import torch

    log_ref_ratio = ref_logp - logp  # (B, T)
    return torch.exp(log_ref_ratio) - log_ref_ratio - 1  # (B, T)


def completion_mask(ids: torch.Tensor, eos_id: int | Sequence[int]) -> torch.Tensor:
    """1 for completion tokens up to and including the first EOS, 0 after it: ids (B, T) → (B, T) int64.

    Built from the first EOS, never as `ids != pad`: the R1 distills pad with their EOS token, so that
    test would also drop the EOS the model chose to emit. eos_id may list several stop tokens.
    """
    import torch

    eos = torch.as_tensor(eos_id, device=ids.device).reshape(-1)  # (E,)
    is_eos = torch.isin(ids, eos).long()  # (B, T)
    eos_before = is_eos.cumsum(1) - is_eos  # (B, T)  EOS tokens strictly before t
    return (eos_before == 0).long()  # (B, T)


def _grouped(rewards: torch.Tensor | Sequence[float | None], group_size: int) -> torch.Tensor:
    """Rewards (N,) as float (N/G, G); None becomes NaN."""
    import torch

    if not isinstance(rewards, torch.Tensor):
        rewards = torch.tensor([math.nan if value is None else value for value in rewards], dtype=torch.float32)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (N,) with N a multiple of group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    return rewards.view(-1, group_size)  # (N/G, G)


def _aggregation_weights(keep: torch.Tensor, aggregation: str, max_len: int | None) -> torch.Tensor:
    """Weight of each token in the loss (step 4 of `grpo_loss`): keep (B, T) bool → (B, T) float32."""
    kept = keep.float()  # (B, T)
    batch = keep.shape[0]
    if aggregation == "sequence":
        return kept / kept.sum(1, keepdim=True).clamp(min=1) / batch  # (B, T)
    if aggregation == "token":
        return kept / kept.sum().clamp(min=1)  # (B, T)
    return kept / (batch * max_len)  # (B, T)  "constant"
