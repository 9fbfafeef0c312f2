"""Logit distillation losses (GKD, Agarwal et al. 2024): forward KL, reverse KL and generalized JSD.

Pure functions on logits: teacher and student logits in, a scalar loss out. Computed in log space in
fp32 from log-softmax, so extreme or −inf logits give finite values and gradients. Knows nothing of
models, tokenizers or data: the caller aligns the two vocabularies and builds the mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            kind: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Distillation loss between two models' next-token distributions, as a scalar tensor.

    Logits (B, T, V), mask (B, T) (1/True where the position counts). With τ the temperature,
    P = softmax(teacher / τ) and Q = softmax(student / τ), per position:

        forward_kl  KL(P‖Q) = Σ_v P_v (log P_v − log Q_v)        (mode-covering, Hinton et al. 2015)
        reverse_kl  KL(Q‖P) = Σ_v Q_v (log Q_v − log P_v)        (mode-seeking)
        jsd         β·KL(P‖M) + (1−β)·KL(Q‖M),  M = β·P + (1−β)·Q   (generalized JSD of GKD)

    loss = τ² · mean over masked positions of the per-position divergence (τ² keeps gradient sizes
    comparable across temperatures, Hinton et al.). log M = logsumexp(log β + log P, log(1−β) + log Q).

    β edge cases of jsd: at β = 0 the mixture is M = Q and at β = 1 it is M = P, so the formula above is
    identically 0 there. As in TRL's GKDTrainer, the endpoints take the limits of the normalized
    divergence instead: β = 0 gives lim JSD_β/β = KL(P‖Q) (forward_kl), β = 1 gives
    lim JSD_β/(1−β) = KL(Q‖P) (reverse_kl). In between, 0 ≤ JSD_β ≤ −β log β − (1−β) log(1−β), and
    JSD_0.5 is the symmetric Jensen–Shannon divergence (≤ log 2 before the τ² factor).

    Masked-out positions are never computed (their logits may hold anything, even NaN) and receive a
    zero gradient. No masked position at all gives a zero loss that still has a gradient of zeros.
    """

    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; the two models must share a vocabulary")
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the logits' positions {tuple(student_logits.shape[:-1])}")
    selected = mask.bool()                                               # (B, T)
    student = student_logits[selected]                                   # (N, V)
    teacher = teacher_logits[selected]                                   # (N, V)
    per_position = token_divergence(student, teacher, kind, beta, temperature)  # (N,)
    count = selected.sum().clamp(min=1)                                  # ()
    return per_position.sum() / count * temperature ** 2                 # ()


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "forward_kl",
                     beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """The per-position divergence of `kd_loss` (without the τ² factor): logits (..., V) → (...)."""
    import torch

    if kind not in KD_KINDS:
        raise ValueError(f"unknown distillation loss {kind!r}; expected one of {', '.join(KD_KINDS)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_q = _log_probs(student_logits, temperature)                      # (..., V)
    log_p = _log_probs(teacher_logits, temperature)                      # (..., V)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl(log_p, log_q)                                         # (...)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl(log_q, log_p)                                         # (...)
    log_beta = torch.log(torch.tensor(beta, dtype=log_p.dtype, device=log_p.device))
    log_one_minus_beta = torch.log1p(torch.tensor(-beta, dtype=log_p.dtype, device=log_p.device))
    log_m = torch.logsumexp(torch.stack([log_p + log_beta, log_q + log_one_minus_beta]), dim=0)  # (..., V)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)     # (...)


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log-softmax of logits / τ in fp32, with −inf (a banned token) clamped to the lowest finite float,
    so that 0 · (log 0 − x) is 0 rather than NaN in the sums and in their gradients."""
    import torch

    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)  # (..., V)
    return log_probs.clamp(min=torch.finfo(torch.float32).min)           # (..., V)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(A‖B) = Σ_v A_v (log A_v − log B_v) from log-probabilities (..., V) → (...)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)                       # (...)
