"""The output layer fused with the log-softmax, chunked over positions: log-probs of chosen tokens,
entropy and top-1 hits from the final hidden states without ever holding (B, T, V) logits.

A causal LM's last step is logits = h·Wᵀ + b, (B, T, H) → (B, T, V). For an R1 distill (V = 152,064)
16 completions of 4,096 tokens make 20 GB of bf16 logits, and autograd keeps them for the backward pass.
Here only `chunk` positions' logits exist at a time, forward and backward (the backward recomputes them),
so the memory of this step is O(chunk · V) whatever B·T is. `head_outputs_hidden` makes a transformers
model return its final hidden states in place of logits (through its own forward, so DDP, peft and
gradient checkpointing work unchanged); models whose head is not a plain Linear keep the unfused path.
torch is imported inside the functions, like every heavy library in `engine`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Positions per chunk: 512 × 152,064 fp32 logits are 311 MB.
CHUNK = 512


def fused_head_logp(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
                    temperature: float = 1.0, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, entropy, hits), each (B, T), from hidden (B, T, H), the output layer's weight (V, H) and bias
    (V,) or None, and the chosen ids (B, T):

        z      = (h·Wᵀ + b) / τ                       (computed in the weight's dtype, then float32)
        logp   = z[id] − logsumexp(z)                 differentiable wrt hidden, weight and bias
        entropy = logsumexp(z) − Σ softmax(z)·z        float32, no gradient
        hits   = argmax(z) == id                       bool

    Backward, per chunk: ∂logp/∂z = onehot(id) − softmax(z), so with g = upstream·(onehot − softmax)/τ,
    ∂h = g·W, ∂W = gᵀ·h, ∂b = Σ g. hidden[b, t] must be the state that predicted ids[b, t].
    """
    if hidden.dim() != 3 or ids.shape != hidden.shape[:2] or weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"fused_head_logp: expected hidden (B, T, H), weight (V, H), ids (B, T); got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(ids.shape)}")
    if temperature <= 0 or chunk < 1:
        raise ValueError(f"fused_head_logp: temperature must be > 0 and chunk >= 1, got {temperature} and {chunk}")
    batch, length, width = hidden.shape
    logp, entropy, hits = _fused_function().apply(hidden.reshape(batch * length, width), weight, bias,
                                                  ids.reshape(-1), float(temperature), int(chunk))
    return logp.view(batch, length), entropy.view(batch, length), hits.view(batch, length)


def _scaled_logits(hidden_rows, weight, bias, temperature: float):
    """z = (h·Wᵀ + b)/τ in float32 for a chunk: (C, H) → (C, V)."""
    import torch

    # In the head's dtype, as the model's own head computes them (QLoRA keeps the head in fp32).
    logits = torch.nn.functional.linear(hidden_rows.to(weight.dtype), weight, bias)  # (C, V)
    return logits.float().div_(temperature)  # (C, V)


@functools.cache
def _fused_function():
    """The autograd function behind `fused_head_logp` (built on first use: torch loads lazily)."""
    import torch
    from torch.autograd.function import once_differentiable

    class FusedHeadLogSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, ids, temperature, chunk):  # hidden (N, H), ids (N,)
            count = hidden.shape[0]
            logp = torch.empty(count, dtype=torch.float32, device=hidden.device)  # (N,)
            entropy = torch.empty_like(logp)  # (N,)
            hits = torch.empty(count, dtype=torch.bool, device=hidden.device)  # (N,)
            for start in range(0, count, chunk):
                rows = slice(start, start + chunk)
                z = _scaled_logits(hidden[rows], weight, bias, temperature)  # (C, V)
                normalizer = z.logsumexp(1)  # (C,)
                chosen = z.gather(1, ids[rows].unsqueeze(1)).squeeze(1)  # (C,)
                logp[rows] = chosen - normalizer
                hits[rows] = z.argmax(1) == ids[rows]
                entropy[rows] = normalizer - (z - normalizer.unsqueeze(1)).exp_().mul_(z).sum(1)
            ctx.save_for_backward(hidden, weight, bias, ids)
            ctx.temperature, ctx.chunk = temperature, chunk
            ctx.mark_non_differentiable(entropy, hits)
            return logp, entropy, hits

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_logp, grad_entropy, grad_hits):  # grad_logp (N,)
            hidden, weight, bias, ids = ctx.saved_tensors
            need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
            grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H)
            # Summed over chunks in float32, as one matmul over all positions would.
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
            for start in range(0, hidden.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                z = _scaled_logits(hidden[rows], weight, bias, ctx.temperature)  # (C, V)
                g = z.softmax(1).neg_()  # (C, V)  −softmax(z)
                g.scatter_add_(1, ids[rows].unsqueeze(1), torch.ones_like(g[:, :1]))  # onehot − softmax
                g.mul_(grad_logp[rows].float().unsqueeze(1) / ctx.temperature)  # (C, V)
                if need_hidden:
                    grad_hidden[rows] = g.to(weight.dtype) @ weight  # (C, H)
                if need_weight:
                    grad_weight += g.t() @ hidden[rows].float()  # (V, H)
                if need_bias:
                    grad_bias += g.sum(0)  # (V,)
            return (grad_hidden,
                    grad_weight.to(weight.dtype) if need_weight else None,
                    grad_bias.to(bias.dtype) if need_bias else None,
                    None, None, None)

    return FusedHeadLogSoftmax


def output_layer(model):
    """The model's output layer when it can be fused: a plain nn.Linear whose logits the model uses as they
    are. None for a head under LoRA or quantized, and for models that scale or cap their logits (Gemma 2's
    final_logit_softcapping, Cohere's logit_scale). Looks through DDP and peft wrappers."""
    import torch

    inner = model
    while isinstance(inner, torch.nn.parallel.DistributedDataParallel):
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    config = getattr(inner, "config", None)
    if any(getattr(config, name, None) not in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale")):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return head if type(head) is torch.nn.Linear else None


def _identity(hidden):
    return hidden


@contextlib.contextmanager
def head_outputs_hidden(model) -> Iterator[torch.nn.Linear | None]:
    """While inside, `model(...).logits` are the final hidden states (B, T, H): the output layer's forward
    is the identity. Yields that layer (for fused_head_logp), or None with nothing changed when the head
    cannot be fused (output_layer)."""
    head = output_layer(model)
    if head is None:
        yield None
        return
    head.forward = _identity
    try:
        yield head
    finally:
        del head.forward


def fused_head_kd(student_hidden: torch.Tensor, student_head, teacher_hidden: torch.Tensor, teacher_head,
                  mask: torch.Tensor, *, kind: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0,
                  vocabulary: int | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """kd_loss (engine.distill.kd) from the two models' final hidden states (B, T, Hs) and (B, T, Ht) and
    output layers, `chunk` masked positions at a time:

        loss = τ² · Σ_chunks Σ_{t ∈ chunk} D(student_t, teacher_t) / (masked positions)

    with D the per-position divergence of `kind` over the first `vocabulary` logits (the tokenizer's; the
    rest of a padded head is cut). Each chunk runs under activation checkpointing, so its (C, V) logits
    exist only while that chunk is computed, in the forward pass and again in the backward pass; the
    teacher's side never needs a gradient. Equal to kd_loss on the full logits."""
    import functools

    import torch
    from torch.utils.checkpoint import checkpoint

    selected = mask.bool()  # (B, T)
    student = student_hidden[selected]  # (N, Hs)
    teacher = teacher_hidden[selected].detach()  # (N, Ht)
    count = selected.sum().clamp(min=1)  # ()
    piece = functools.partial(_kd_chunk, kind=kind, beta=beta, temperature=temperature, vocabulary=vocabulary)
    loss = student_hidden.new_zeros((), dtype=torch.float32)  # ()
    for start in range(0, student.shape[0], chunk):
        rows = slice(start, start + chunk)
        loss = loss + checkpoint(piece, student[rows], teacher[rows], student_head.weight, student_head.bias,
                                 teacher_head.weight, teacher_head.bias, use_reentrant=False)
    return loss / count * temperature ** 2


def _kd_chunk(student, teacher, student_weight, student_bias, teacher_weight, teacher_bias, *, kind: str,
              beta: float, temperature: float, vocabulary: int | None):
    """Σ of the per-position divergences of one chunk: hidden (C, Hs) and (C, Ht) → ()."""
    import torch

    from engine.distill.kd import token_divergence

    student_logits = torch.nn.functional.linear(student, student_weight, student_bias)[:, :vocabulary]  # (C, V)
    with torch.no_grad():
        teacher_logits = torch.nn.functional.linear(teacher, teacher_weight, teacher_bias)[:, :vocabulary]  # (C, V)
    return token_divergence(student_logits, teacher_logits, kind, beta, temperature).sum()  # ()


def token_logp(model, targets: torch.Tensor, temperature: float = 1.0, **inputs: torch.Tensor):
    """(logp, entropy, hits), each (B, T), of `targets` (B, T), the model's tokens after position P − 1 of
    its inputs (input_ids (B, P + T), attention_mask, position_ids): the last T + 1 positions predict them.
    Fused and chunked (fused_head_logp) where the head allows; otherwise from the logits of the last T + 1
    positions through the row-chunked selective_log_softmax."""
    import torch


    keep = targets.shape[1] + 1
    with head_outputs_hidden(model) as head:
        output = model(**inputs, use_cache=False, logits_to_keep=keep).logits[:, :-1]  # (B, T, H) or (B, T, V)
    if head is not None:
        return fused_head_logp(output, head.weight, head.bias, targets, temperature)
    logp = selective_log_softmax(output, targets, temperature)  # (B, T)
    with torch.no_grad():
        entropy = _entropy(output, temperature)  # (B, T)
        hits = output.argmax(-1) == targets  # (B, T)
    return logp, entropy, hits


def _entropy(logits, temperature: float, chunk: int = CHUNK):
    """Entropy of softmax(logits/τ) per position, chunked in fp32: (B, T, V) → (B, T).
    H = logsumexp(z) − Σ softmax(z)·z, z = logits/τ."""
    import torch

    out = torch.empty(logits.shape[:2], dtype=torch.float32, device=logits.device)  # (B, T)
    for row in range(logits.shape[0]):
        for start in range(0, logits.shape[1], chunk):
            z = logits[row, start:start + chunk].float() / temperature  # (C, V)
            out[row, start:start + chunk] = z.logsumexp(-1) - (z.softmax(-1) * z).sum(-1)  # (C,)
    return out


# Log-probs of chosen tokens from logits, chunked ----------------------------------------------------

CHUNK_ROWS = 256  # rows of one sequence per float32 softmax chunk


def selective_log_softmax(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                          chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """log softmax(logits / temperature)[id] for each position: logits (B, T, V), ids (B, T) → (B, T) float32.

    logits[b, t] must be the distribution that sampled ids[b, t] (the caller shifts by one). Divide by
    the sampling temperature so the log-probs match the sampler (as GRPO's ratio assumes). Computed in float32
    `chunk_rows` rows at a time, forward and backward (a custom autograd function recomputes each chunk's
    softmax), so no (B, T, V) float32 tensor ever exists — Unsloth's main memory trick. The gradient
    wrt the logits, (onehot(id) − softmax(logits/τ)) / τ per row, is written in the logits' dtype.
    Slices such as `logits[:, prompt_len - 1 : -1]` are read in place, not copied.
    """
    if logits.dim() != 3 or ids.shape != logits.shape[:2]:
        raise ValueError(f"selective_log_softmax: expected logits (B, T, V) and ids (B, T), got "
                         f"{tuple(logits.shape)} and {tuple(ids.shape)}")
    if temperature <= 0 or chunk_rows < 1:
        raise ValueError(f"selective_log_softmax: temperature must be > 0 and chunk_rows >= 1, "
                         f"got {temperature} and {chunk_rows}")
    return _chunked_log_softmax_function().apply(logits, ids, float(temperature), int(chunk_rows))


@functools.cache
def _chunked_log_softmax_function():
    """The autograd function behind `selective_log_softmax` (built on first use: torch loads lazily)."""
    import torch
    from torch.autograd.function import once_differentiable

    def chunks(logits: torch.Tensor, chunk_rows: int):
        """(b, slice) covering every row of logits (B, T, V), at most chunk_rows rows of one sequence each."""
        for b in range(logits.shape[0]):
            for start in range(0, logits.shape[1], chunk_rows):
                yield b, slice(start, start + chunk_rows)

    class ChunkedSelectiveLogSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, ids, temperature, chunk_rows):
            out = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)  # (B, T)
            for b, rows in chunks(logits, chunk_rows):
                scaled = logits[b, rows].float() / temperature  # (C, V)  a new tensor, never a view
                chosen = scaled.gather(1, ids[b, rows].unsqueeze(1)).squeeze(1)  # (C,)
                out[b, rows] = chosen - scaled.logsumexp(1)  # (C,)
            ctx.save_for_backward(logits, ids)
            ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
            return out

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_out):  # grad_out (B, T)
            logits, ids = ctx.saved_tensors
            grad = torch.empty_like(logits)  # (B, T, V)  in the logits' dtype
            for b, rows in chunks(logits, ctx.chunk_rows):
                probs = (logits[b, rows].float() / ctx.temperature).softmax(1)  # (C, V)
                onehot_minus_probs = probs.neg_().scatter_add_(
                    1, ids[b, rows].unsqueeze(1), torch.ones_like(probs[:, :1]))  # (C, V)
                upstream = grad_out[b, rows].float().unsqueeze(1) / ctx.temperature  # (C, 1)
                grad[b, rows] = onehot_minus_probs.mul_(upstream)  # (C, V)
            return grad, None, None, None

    return ChunkedSelectiveLogSoftmax
