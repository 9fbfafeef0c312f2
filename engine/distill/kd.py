"""Logit distillation (`aha distill kd`, GKD): the student matches the teacher's next-token distributions on the
assistant tokens of the traces, or on its own samples of the prompts (on-policy, with probability λ); the
same run, checkpoints and resume as `aha distill sft` (engine.distill.traces).

The losses (Agarwal et al. 2024) are pure functions on logits: forward KL, reverse KL and generalized JSD,
teacher and student logits in, a scalar loss out, computed in log space in fp32 from log-softmax so extreme
or −inf logits give finite values and gradients; they know nothing of models, tokenizers or data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.distill.traces import (
    TraceSFTConfig,
    TraceSFTStep,
    heldout_rows,
    read_traces,
    training_rows,
)
from engine.errors import AhaError
from engine.jobs import CancelToken, OnEvent, ignore
from engine.train.config import setting

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


# Logit distillation on traces ---------------------------------------------------------------------

@dataclass(frozen=True)
class KDConfig(TraceSFTConfig):
    """`aha distill kd` settings: TraceSFTConfig's, plus the teacher and kd_loss's settings (GKD's names)."""

    teacher: str = setting("", "the teacher: a Hugging Face checkpoint folder sharing the student's tokenizer",
                           "Model")
    kd_kind: str = setting("forward_kl", "the divergence to the teacher's next-token distribution: forward_kl, "
                                         "reverse_kl or jsd (GKD's generalized JSD)", "Loss", choices=KD_KINDS)
    beta: float = setting(0.5, "GKD's β: the JSD interpolation between the two distributions (kd_kind = jsd)",
                          "Loss")
    temperature: float = setting(1.0, "softens both distributions in the loss, and samples the student's "
                                      "on-policy sequences (as in TRL's GKD)", "Loss")
    lmbda: float = setting(0.0, "share of steps on the student's own samples of the prompts instead of the traces "
                                "(GKD's on-policy fraction λ, 0 to 1)", "Loss")

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise AhaError("no teacher given: pass --teacher HF_FOLDER (a model sharing the student's tokenizer)")
        if self.kd_kind not in KD_KINDS:
            raise AhaError(f"kd_kind must be one of {', '.join(KD_KINDS)}, got {self.kd_kind!r}")
        if not 0.0 <= self.lmbda <= 1.0:
            raise AhaError(f"lmbda is the fraction of on-policy steps, between 0 and 1; got {self.lmbda}")
        if not self.temperature > 0:
            raise AhaError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.beta <= 1.0:
            raise AhaError(f"beta is the JSD interpolation, between 0 and 1; got {self.beta}")


def check_same_tokenizer(student, teacher, student_name: str = "student", teacher_name: str = "teacher") -> None:
    """Refuse a teacher whose tokenizer differs from the student's, saying how (vocabulary or special ids)."""
    student_vocab, teacher_vocab = student.get_vocab(), teacher.get_vocab()
    if student_vocab != teacher_vocab:
        only = sorted(set(student_vocab) ^ set(teacher_vocab))
        what = (f"{len(student_vocab)} vs {len(teacher_vocab)} tokens" if only
                else "the same tokens with different ids")
        example = f", e.g. {only[0]!r}" if only else ""
        raise AhaError(f"the {teacher_name}'s tokenizer differs from the {student_name}'s ({what}{example}); logit "
                       "distillation needs a teacher with the same tokenizer")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(student, name) != getattr(teacher, name):
            raise AhaError(f"the {teacher_name}'s {name} ({getattr(teacher, name)}) differs from the {student_name}'s "
                           f"({getattr(student, name)}); logit distillation needs the same tokenizer")


class KDStep(TraceSFTStep):
    """One logit-distillation step: kd_loss between the student and the frozen teacher on assistant
    tokens (teacher logits under no_grad). With probability lmbda the step's sequences are the student's
    own samples of the prompts (on-policy, GKD) instead of the traces' completions."""

    def __init__(self, config: KDConfig, trainer, stream, heldout: list[dict]):
        import dataclasses

        from engine.train.core import load_model

        super().__init__(config, trainer, stream, heldout)
        # Frozen, in the student's precision (fp32 on CPU, bf16 on CUDA; NF4 when the student is QLoRA).
        self.teacher, _ = load_model(dataclasses.replace(config, model=config.teacher), trainer.device, trainable=False)
        self.vocabulary = shared_vocabulary(trainer.tokenizer, trainer.model, self.teacher)
        self.on_policy = False

    def batches(self, rows: list[dict], micro: int):
        import random

        self.on_policy = self.config.lmbda > 0 and random.random() < self.config.lmbda
        if not self.on_policy:
            return super().batches(rows, micro)
        return [self._student_batch(rows[start:start + micro]) for start in range(0, len(rows), micro)]

    def _student_batch(self, rows: list[dict]):
        """The student's samples of the rows' prompts (temperature, max_completion_length), the loss on
        every sampled token up to and including EOS."""
        from engine.train.core import StepAbandoned
        from engine.train.sampling import encode_prompts, eos_token_ids, pad_token_id, sample
        from engine.train.sft import pad_batch

        config, trainer = self.config, self.trainer
        prompts, _, _ = encode_prompts(trainer.tokenizer, [row["prompt"] for row in rows], config.system_prompt)
        pad = pad_token_id(trainer.tokenizer)
        with trainer.sampling():
            rollout = sample(trainer.model, prompts, max_new_tokens=config.max_completion_length,
                             eos_ids=eos_token_ids(trainer.tokenizer, trainer.model), pad_id=pad,
                             temperature=config.temperature, cancel=trainer.step_cancel)
        if rollout.cancelled:
            raise StepAbandoned
        sequences, targets = [], []
        for prompt, completion, length in zip(prompts, rollout.completion_ids.tolist(), rollout.lengths.tolist(),
                                              strict=True):
            sequence = (prompt + completion[:length])[:config.max_length] if config.max_length else prompt + completion[:length]
            sequences.append(sequence)
            targets.append([0] * len(prompt) + [1] * (len(sequence) - len(prompt)))
        return pad_batch(sequences, targets, pad, trainer.device)

    def loss(self, batch):
        """kd_loss on the batch's assistant tokens; from the two models' hidden states, chunk by chunk
        (fused_head_kd: no (B, L, V) logits), where both output layers allow it."""
        import torch

        from engine.train.fused_head import fused_head_kd, head_outputs_hidden
        from engine.train.sft import model_logits

        config, student = self.config, self.trainer.training_model
        mask = batch.loss_mask[:, 1:].float()  # (B, L−1)
        settings = dict(kind=config.kd_kind, beta=config.beta, temperature=config.temperature)
        with torch.no_grad(), head_outputs_hidden(self.teacher) as teacher_head:
            teacher_out = model_logits(self.teacher, batch)  # (B, L−1, Ht) or (B, L−1, V)
        with head_outputs_hidden(student) as student_head:
            student_out = model_logits(student, batch)  # (B, L−1, Hs) or (B, L−1, V)
        if teacher_head is not None and student_head is not None:
            loss = fused_head_kd(student_out, student_head, teacher_out, teacher_head, mask,
                                 vocabulary=self.vocabulary, **settings)
        else:
            with torch.no_grad():
                teacher_logits = _logits(teacher_out, teacher_head)[..., :self.vocabulary]  # (B, L−1, V)
            student_logits = _logits(student_out, student_head)[..., :self.vocabulary]  # (B, L−1, V)
            loss = kd_loss(student_logits.float(), teacher_logits.float(), mask, **settings)
        value = float(loss.detach())
        return loss, {"loss": value, "kd_loss": value, "on_policy": float(self.on_policy), "tokens": float(mask.sum())}


def _logits(output, head):
    """Logits from a forward's output: the output itself, or the head applied to the hidden states it is
    when head_outputs_hidden swapped that head out."""
    return output if head is None else head(output)


def shared_vocabulary(tokenizer, student, teacher) -> int:
    """The logit columns kd_loss compares: the tokenizer's tokens. Output layers are often padded past
    them (Qwen2.5-1.5B has 151,936 rows, -7B 152,064, for one 151,665-token tokenizer); those rows are
    never real tokens and are cut. A layer smaller than the tokenizer is refused."""
    size = len(tokenizer)
    for name, model in (("student", student), ("teacher", teacher)):
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < size:
            raise AhaError(f"the {name}'s output layer has {rows} rows but the tokenizer has {size} tokens; "
                           "logit distillation needs a model that covers the whole tokenizer")
    return size


def train_kd_on_traces(config: KDConfig | None = None, *, resume: str | Path | None = None,
                       overrides: dict | None = None, on_event: OnEvent = ignore,
                       cancel: CancelToken | None = None) -> dict:
    """Logit distillation of config.model from config.teacher on config.traces (`aha distill kd`); the same
    run, resume and result as train_sft_on_traces."""
    from engine.train.config import run_config
    from engine.train.core import check_model_folder, load_tokenizer
    from engine.train.sft import run_sft

    config = run_config(KDConfig, config, resume, overrides)
    student, teacher = check_model_folder(config.model), check_model_folder(config.teacher)
    traces = read_traces(config) if config.traces else None  # the file's problems first: transformers loads slowly
    tokenizer = load_tokenizer(student)
    check_same_tokenizer(tokenizer, load_tokenizer(teacher))
    rows = training_rows(config, tokenizer, traces)
    heldout = heldout_rows(config, tokenizer)
    return run_sft(config, rows, heldout, resume=resume, on_event=on_event, cancel=cancel, kind="distill-kd",
                   make_step=KDStep)
