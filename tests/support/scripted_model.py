"""A tiny real model taught one reply: for a fixed question it writes a long thought, then an answer.

Built by the tests in a few seconds: the tiny Qwen2 checkpoint is fine-tuned (loss on the reply only)
until greedy decoding reproduces `REPLY` after the R1 prompt for `QUESTION`, then exported to GGUF with
our own exporter. Chat tests then stream a real llama.cpp generation whose thinking and answer are known.
"""

from __future__ import annotations

from pathlib import Path

QUESTION = "What is 2+2?"
THOUGHT = "".join(f"Step {i}: 2+2 is {4}.\n" for i in range(1, 9))
ANSWER = "The answer is \\boxed{4}."
REPLY = f"{THOUGHT}</think>\n\n{ANSWER}"


def train_scripted(base: Path, out: Path, steps: int = 400, lr: float = 3e-3) -> Path:
    """Fine-tune `base` until greedy decoding after the R1 prompt for QUESTION yields REPLY + EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                           add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    reply_ids = tokenizer(REPLY, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + reply_ids])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24:
            with torch.no_grad():
                predicted = model(ids).logits[0, len(prompt_ids) - 1 : -1].argmax(-1)
            if predicted.tolist() == reply_ids:
                break
    else:
        raise RuntimeError(f"the scripted model did not learn its reply in {steps} steps (loss {loss.item():.3f})")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
