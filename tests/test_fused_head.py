"""engine.train.fused_head: the output layer fused into the log-softmax, chunked over positions.

Against plain float64 autograd on the full logits: the log-probs, entropy, top-1 hits and the gradients
wrt hidden states, weight and bias, for every chunk size. Through a real transformers model: the same
log-probs and gradients as the unfused path, and no tensor of B·T·V elements is ever created (a torch
dispatch mode watches every op of forward and backward; the unfused path, watched the same way, does
create one, so the watch can fail). The same for logit distillation from two models' hidden states.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.distill.kd import kd_loss
from engine.train.fused_head import (
    CHUNK,
    fused_head_kd,
    fused_head_logp,
    head_outputs_hidden,
    output_layer,
    selective_log_softmax,
    token_logp,
)


def reference(hidden, weight, bias, ids, temperature):
    z = (hidden.double() @ weight.double().t() + (bias.double() if bias is not None else 0)) / temperature
    logp = z.log_softmax(-1)
    chosen = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy, z.argmax(-1) == ids


@pytest.mark.parametrize("chunk", [1, 3, 7, 512])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_autograd_on_the_full_logits(chunk, with_bias):
    generator = torch.Generator().manual_seed(chunk)
    hidden = torch.randn(2, 5, 8, generator=generator, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator, requires_grad=True)
    bias = torch.randn(50, generator=generator, requires_grad=True) if with_bias else None
    ids = torch.randint(0, 50, (2, 5), generator=generator)
    upstream = torch.randn(2, 5, generator=generator, dtype=torch.float64)

    logp, entropy, hits = fused_head_logp(hidden, weight, bias, ids, temperature=0.7, chunk=chunk)
    (logp.double() * upstream).sum().backward()
    fused_grads = [tensor.grad.clone() for tensor in (hidden, weight, bias) if tensor is not None]
    for tensor in (hidden, weight, bias):
        if tensor is not None:
            tensor.grad = None

    expected, expected_entropy, expected_hits = reference(hidden, weight, bias, ids, 0.7)
    (expected * upstream).sum().backward()
    assert logp.dtype == torch.float32 and not entropy.requires_grad
    assert torch.allclose(logp.double(), expected, atol=1e-5)
    assert torch.allclose(entropy.double(), expected_entropy, atol=1e-4)  # lse − Σ p·z: float32 cancellation
    assert torch.equal(hits, expected_hits)
    for fused, tensor in zip(fused_grads, [t for t in (hidden, weight, bias) if t is not None], strict=True):
        assert torch.allclose(fused.double(), tensor.grad.double(), atol=1e-5)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected hidden"):
        fused_head_logp(torch.zeros(2, 3, 4), torch.zeros(5, 6), None, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fused_head_logp(torch.zeros(1, 1, 4), torch.zeros(5, 4), None, torch.zeros(1, 1, dtype=torch.long), 0.0)


class LargestLogits(TorchDispatchMode):
    """The element count of the largest tensor over the vocabulary (last dimension V) that any op returns
    while active."""

    def __init__(self, vocabulary: int):
        super().__init__()
        self.vocabulary, self.largest = vocabulary, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dim() and tensor.shape[-1] == self.vocabulary:
                self.largest = max(self.largest, tensor.numel())
        return out


def test_a_real_model_never_holds_the_logits(checkpoint):
    """Tiny Qwen2, 4 completions of 300 tokens (more positions than one chunk): the fused step gives the
    unfused log-probs and gradients and never creates more than one chunk's logits (CHUNK × V); the
    unfused one creates all B·T·V of them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint("qwen2"), dtype=torch.float32, attn_implementation="eager")
    vocabulary = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocabulary, (4, 308), generator=generator)
    targets = ids[:, 8:]  # the last 300 positions are the "completion"
    batch, length = targets.shape
    assert batch * length > CHUNK

    def run(fused: bool):
        model.zero_grad()
        with LargestLogits(vocabulary) as watch:
            if fused:
                logp, _, _ = token_logp(model, targets, 0.9, input_ids=ids)
            else:
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=length + 1).logits[:, :-1]
                logp = selective_log_softmax(logits, targets, 0.9)
            logp.sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters()], watch.largest

    fused_logp, fused_grads, fused_largest = run(True)
    plain_logp, plain_grads, plain_largest = run(False)
    assert torch.allclose(fused_logp, plain_logp, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(fused_grads, plain_grads, strict=True))
    assert plain_largest >= batch * length * vocabulary  # the watch sees the logits when they exist
    assert fused_largest <= CHUNK * vocabulary < batch * length * vocabulary
    assert output_layer(model) is model.get_output_embeddings()  # and the head is its plain self again
    assert model(input_ids=ids[:, :4]).logits.shape[-1] == vocabulary


def test_heads_that_cannot_be_fused_keep_the_plain_path(checkpoint):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint("qwen2"), dtype=torch.float32)
    lora_all = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    assert output_layer(lora_all) is lora_all.get_base_model().get_output_embeddings()  # all-linear skips the head
    model = AutoModelForCausalLM.from_pretrained(checkpoint("qwen2"), dtype=torch.float32)
    lora_head = get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    assert output_layer(lora_head) is None
    with head_outputs_hidden(lora_head) as head:
        assert head is None
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    logp, entropy, hits = token_logp(lora_head, ids[:, 2:], input_ids=ids)
    logits = lora_head(input_ids=ids).logits[:, 1:-1]
    assert torch.allclose(logp, logits.log_softmax(-1).gather(-1, ids[:, 2:, None]).squeeze(-1), atol=1e-5)
    assert entropy.shape == hits.shape == (1, 3)
    model.config.final_logit_softcapping = 30.0
    assert output_layer(model) is None


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_kd_from_hidden_states_equals_kd_loss_on_the_logits(kind):
    """Chunks of 3 masked positions, heads of different widths (student H = 6, teacher H = 10) padded
    past a 40-token vocabulary: the same loss and student gradients as kd_loss on the full logits."""
    generator = torch.Generator().manual_seed(len(kind))
    student = torch.randn(2, 7, 6, generator=generator, requires_grad=True)
    teacher = torch.randn(2, 7, 10, generator=generator)
    student_head, teacher_head = torch.nn.Linear(6, 44), torch.nn.Linear(10, 48, bias=False)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.float32)

    loss = fused_head_kd(student, student_head, teacher, teacher_head, mask, kind=kind, beta=0.3, temperature=2.0,
                         vocabulary=40, chunk=3)
    loss.backward()
    fused = [tensor.grad.clone() for tensor in (student, student_head.weight, student_head.bias)]
    for tensor in (student, student_head.weight, student_head.bias):
        tensor.grad = None
    expected = kd_loss(student_head(student)[..., :40], teacher_head(teacher)[..., :40].detach(), mask, kind=kind,
                       beta=0.3, temperature=2.0)
    expected.backward()
    assert torch.allclose(loss, expected, atol=1e-6)
    for grad, tensor in zip(fused, (student, student_head.weight, student_head.bias), strict=True):
        assert torch.allclose(grad, tensor.grad, atol=1e-6)
    assert teacher_head.weight.grad is None


def test_kd_from_hidden_states_never_holds_the_logits():
    hidden, vocabulary = 8, 300
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 600, hidden, generator=generator, requires_grad=True)
    teacher = torch.randn(4, 600, hidden, generator=generator)
    head = torch.nn.Linear(hidden, vocabulary)
    mask = torch.ones(4, 600)
    with LargestLogits(vocabulary) as watch:
        fused_head_kd(student, head, teacher, head, mask, kind="jsd").backward()
    # One chunk at a time; the JSD's mixture stacks the chunk's two distributions: (2, CHUNK, V).
    assert watch.largest <= 2 * CHUNK * vocabulary < mask.numel() * vocabulary


def test_bf16_hidden_states_with_an_fp32_head():
    """QLoRA keeps the output layer in fp32 while hidden states may be bf16: computed in the head's dtype,
    the gradient comes back in the hidden states' dtype."""
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 4, 8, generator=generator).bfloat16().requires_grad_()
    weight = torch.randn(30, 8, generator=generator)
    ids = torch.randint(0, 30, (2, 4), generator=generator)
    logp, _, _ = fused_head_logp(hidden, weight, None, ids)
    logp.sum().backward()
    expected, _, _ = reference(hidden.detach().float(), weight, None, ids, 1.0)
    assert torch.allclose(logp.double(), expected, atol=1e-5)
    assert hidden.grad.dtype == torch.bfloat16


def test_sft_loss_never_holds_the_logits(checkpoint):
    """engine.train.sft.sft_loss on a real batch from build_batch (tiny Qwen2's chat template, 4 traces of ~300
    tokens, right-padded: more positions than one chunk), forward and backward under the watch: no more than one chunk's
    logits (CHUNK × V) ever exist, and the loss and gradients are those of the unfused loss on
    engine.train.sft.model_logits — whose (B, L − 1, V) logits the same watch does see."""
    from transformers import AutoModelForCausalLM

    from engine.train.core import load_tokenizer
    from engine.train.sft import build_batch, model_logits, sft_loss

    folder = checkpoint("qwen2")
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    vocabulary = model.get_output_embeddings().weight.shape[0]
    rows = [{"prompt": f"What is {a}+{b}?",
             "completion": f"<think>\n{f'{a}+{b}: add the units, then the tens. ' * 12}\n</think>\n\n\\boxed{{{a + b}}}"}
            for a, b in ((12, 35), (7, 70), (345, 678), (999, 1))]
    batch = build_batch(tokenizer, rows)
    positions = batch.ids.shape[0] * (batch.ids.shape[1] - 1)
    assert positions > CHUNK and batch.attention is not None and 0 < batch.loss_mask.sum() < batch.attention.sum()

    def run(fused: bool):
        model.zero_grad()
        with LargestLogits(vocabulary) as watch:
            if fused:
                loss, _ = sft_loss(model, batch)
            else:
                logp = model_logits(model, batch).float().log_softmax(-1)  # (B, L − 1, V)
                chosen = logp.gather(-1, batch.ids[:, 1:, None]).squeeze(-1)
                mask = batch.loss_mask[:, 1:].float()
                loss = -(chosen * mask).sum() / mask.sum()
            loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters()], watch.largest

    fused_loss, fused_grads, fused_largest = run(True)
    plain_loss, plain_grads, plain_largest = run(False)
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(fused_grads, plain_grads, strict=True))
    assert plain_largest >= positions * vocabulary  # the watch sees the logits when they exist
    assert fused_largest <= CHUNK * vocabulary < positions * vocabulary
