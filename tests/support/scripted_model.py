"""A tiny real model taught one reply: for a fixed question it writes a long thought, then an answer.

Built by the tests in a few seconds: the tiny Qwen2 checkpoint is fine-tuned (loss on the reply only)
until greedy decoding reproduces `REPLY` after the R1 prompt for `QUESTION`, then exported to GGUF with
our own exporter. Chat tests then stream a real llama.cpp generation whose thinking and answer are known.

`train_scripted` can teach other lessons too (`lessons=[(question, reply), ...]`, each reply being
"thought</think>\\n\\nanswer"): `make screenshots` uses it to build the models its pictures show.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

QUESTION = "What is 2+2?"
THOUGHT = "".join(f"Step {i}: 2+2 is {4}.\n" for i in range(1, 9))
ANSWER = "The answer is \\boxed{4}."
REPLY = f"{THOUGHT}</think>\n\n{ANSWER}"


def reply_text(thought: str, answer: str) -> str:
    """What the model writes after the R1 prompt (which already ends in "<think>\\n")."""
    return f"{thought}</think>\n\n{answer}"


def train_scripted(base: Path, out: Path, steps: int = 400, lr: float = 3e-3,
                   lessons: Sequence[tuple[str, ...]] | None = None, settle_steps: int = 0, seed: int = 0) -> Path:
    """Fine-tune `base` until greedy decoding after the R1 prompt for each question yields its reply + EOS.

    lessons: (question, reply) pairs; by default the one lesson QUESTION → REPLY. A lesson may be
    (question, reply, given): `given` is text the model finds after the prompt, in its context but not learned
    (a thought a thinking budget cut, with the budget's closing text), and the reply follows it. Training stops as soon
    as every reply is reproduced (checked every 25 steps), then runs `settle_steps` more so that the
    margins survive quantization (q8_0). The seed fixes the start; the caller checks the result."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lessons = list(lessons) if lessons is not None else [(QUESTION, REPLY)]
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = []  # (ids, number of prompt tokens)
    for question, reply, *given in lessons:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        prompt_ids += tokenizer("".join(given), add_special_tokens=False).input_ids if given else []
        reply_ids = tokenizer(reply, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append((prompt_ids + reply_ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([row + [pad] * (width - len(row)) for row, _ in rows])
    padded = any(len(row) < width for row, _ in rows)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row, _ in rows]) if padded else None
    labels = ids.clone()
    for index, (row, prompt_len) in enumerate(rows):
        labels[index, :prompt_len] = -100
        labels[index, len(row):] = -100
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def learned() -> bool:
        with torch.no_grad():
            predicted = model(ids, attention_mask=mask).logits.argmax(-1)
        return all(predicted[i, prompt_len - 1 : len(row) - 1].tolist() == row[prompt_len:]
                   for i, (row, prompt_len) in enumerate(rows))

    def step() -> float:
        loss = model(ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    for index in range(steps):
        loss = step()
        if index % 25 == 24 and learned():
            break
    else:
        raise RuntimeError(f"the scripted model did not learn its reply in {steps} steps (loss {loss:.3f})")
    if settle_steps:
        for _ in range(settle_steps):
            step()
        if not learned():
            raise RuntimeError("the scripted model forgot its reply while settling")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
