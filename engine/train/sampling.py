"""Batched sampling from a Hugging Face causal LM with a KV cache, and the held-out evaluation of training runs
(greedy, or pass@1/cons@k/pass@k over k samples per prompt).

A plain loop over `model(…, past_key_values=cache)`: left-padded prompts with an attention mask and
position ids, temperature and top-p, stop once every row has produced EOS. At the sizes Aha trains on a
CPU it is several times faster than `model.generate` (3–40× on the char model; tests/test_sampling.py
measures both, bench/sampling.py reports it). Token ids in, token ids out: chat templates and decoding
live in `encode_prompts`/`decode`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from engine.think import OPEN_TAG
from engine.train.grpo_math import completion_mask

if TYPE_CHECKING:
    import torch

    from engine.jobs import CancelToken


@dataclass(frozen=True)
class Rollout:
    """Completions of one `sample` call; every tensor is on the model's device."""

    prompt_ids: torch.Tensor  # (B, P) int64, left-padded
    prompt_mask: torch.Tensor  # (B, P) int64, 0 on the padding
    completion_ids: torch.Tensor  # (B, T) int64, pad after the first EOS
    mask: torch.Tensor  # (B, T) int64, 1 up to and including the first EOS (grpo_math.completion_mask)
    terminated: torch.Tensor  # (B,) bool, the row produced an EOS (else it was clipped at the limit)
    seconds: float  # wall time of the call
    cancelled: bool = False  # stopped early by the cancel token; the completions are incomplete

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)  # (B,)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, P), mask (B, P)): sequences right-aligned, pad_id and mask 0 on the left."""
    import torch

    width = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, P)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence):] = torch.as_tensor(list(sequence), dtype=torch.long)
            mask[row, width - len(sequence):] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the real tokens only, so a left-padded row starts at 0: (B, L) → (B, L)."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def sample(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: int | Sequence[int],
           pad_id: int, temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None,
           cancel: CancelToken | None = None, compact: bool = True) -> Rollout:
    """Sample up to `max_new_tokens` after each prompt (token-id lists), all rows in one batch.

    temperature 0 is greedy. top_p < 1 keeps the smallest set of tokens whose probability reaches top_p
    (nucleus sampling). Randomness comes from `generator` (else torch's global RNG). The model is put in
    eval mode for the call (no dropout) and given back in its previous mode. `cancel` is checked every
    token; a cancelled rollout is marked and must be thrown away. With `compact`, rows that finished
    leave the forward batch (and the KV cache) once they are a quarter of it, so the long tail of a few
    long completions does not pay for the finished ones; the random draws stay those of the full batch.
    """
    import torch

    started = time.perf_counter()
    device = next(model.parameters()).device
    eos = torch.as_tensor([eos_ids] if isinstance(eos_ids, int) else list(eos_ids), device=device)  # (E,)
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)  # (B, P)
    batch = prompt_ids.shape[0]
    was_training = model.training
    model.eval()
    completion = torch.full((batch, max(max_new_tokens, 0)), pad_id, dtype=torch.long, device=device)  # (B, T)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
    active = torch.arange(batch, device=device)  # (A,) the rows still in the forward batch
    produced, cancelled = 0, False
    try:
        with torch.no_grad():
            cache = _new_cache(model)
            past = {_cache_argument(model): cache}
            attention = prompt_mask  # (A, L)
            positions = position_ids(attention)  # (B, P)
            logits = model(input_ids=prompt_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **past).logits[:, -1]  # (A, V)
            next_position = positions[:, -1:] + 1  # (A, 1)
            for step in range(max_new_tokens):
                chosen = _pick(_rows_of(logits, active, batch), temperature, top_p, generator)[active]  # (A,)
                chosen = torch.where(finished[active], pad_id, chosen)  # (A,)
                completion[active, step] = chosen
                finished[active] = finished[active] | torch.isin(chosen, eos)
                produced = step + 1
                if bool(finished.all()) or step == max_new_tokens - 1:
                    break
                if cancel is not None and cancel.cancelled:
                    cancelled = True
                    break
                if compact and _worth_compacting(finished[active]) and _can_select_rows(cache):
                    keep = (~finished[active]).nonzero().squeeze(1)  # (K,) positions in the active batch
                    for layer in cache.layers:
                        layer.batch_select_indices(keep)
                    active, attention, next_position, chosen = (active[keep], attention[keep], next_position[keep],
                                                                chosen[keep])
                attention = torch.cat([attention, torch.ones_like(attention[:, :1])], 1)  # (A, L + 1)
                logits = model(input_ids=chosen[:, None], attention_mask=attention, position_ids=next_position,
                               use_cache=True, **past).logits[:, -1]  # (A, V)
                next_position = next_position + 1  # (A, 1)
    finally:
        model.train(was_training)
    completion_ids = completion[:, :produced]  # (B, T)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask(completion_ids, eos.tolist()),
                   finished.clone(), time.perf_counter() - started, cancelled)


def _rows_of(logits: torch.Tensor, active: torch.Tensor, batch: int) -> torch.Tensor:
    """The active rows' logits (A, V) placed in a (B, V) block (zeros for the finished rows), so every call
    of _pick draws for all B rows and a row's samples never depend on when the others finished."""
    if active.numel() == batch:
        return logits
    rows = logits.new_zeros((batch, logits.shape[-1]))  # (B, V)
    rows[active] = logits
    return rows


def _worth_compacting(done: torch.Tensor) -> bool:
    """Drop finished rows from the forward batch once they are a quarter of it: done (A,) bool."""
    return int(done.sum()) * 4 >= done.numel() > 0 and not bool(done.all())


def _can_select_rows(cache) -> bool:
    """Whether every layer of the cache is a plain dynamic layer, whose rows can be selected."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(isinstance(layer, DynamicLayer) for layer in layers)


def _cache_argument(model) -> str:
    """The forward argument that takes the KV cache: `cache` since transformers 5.2x (`past_key_values`
    is deprecated there), `past_key_values` before. A wrong name would be swallowed by **kwargs and
    every step would silently run without its past."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _new_cache(model):
    """An empty DynamicCache for the model (transformers ≥ 4.56 takes the config)."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    try:
        return DynamicCache(config=config)
    except TypeError:
        return DynamicCache()


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row: logits (B, V) → ids (B,)."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)  # (B,)
    probs = torch.softmax(logits.float() / temperature, -1)  # (B, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)  # (B, V)
        before = sorted_probs.cumsum(-1) - sorted_probs  # (B, V)  mass of the tokens ranked above
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # (B, V)  the top token always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)


# Text in, text out --------------------------------------------------------------------------------

def render_prompt(tokenizer, prompt: str | Sequence[dict], system_prompt: str | None = None) -> str:
    """The prompt as the model sees it: its chat template applied to one user turn (or the given
    messages), with the generation prompt; no system prompt unless one is given (DeepSeek's advice).
    A tokenizer without a chat template gets the text as is."""
    if isinstance(prompt, str):  # a batch renders each prompt twice or more (its trace, then its tokens)
        return _render_text(tokenizer, prompt, system_prompt)
    return _render(tokenizer, list(prompt), system_prompt)


RENDERED_KEPT = 4096  # rendered one-turn prompts remembered per tokenizer


def _render_text(tokenizer, prompt: str, system_prompt: str | None) -> str:
    """render_prompt of one user turn: a plain prompt written into its template's frame, any other remembered
    on the tokenizer itself (so the memory goes with it), keyed with the template too: a tokenizer whose
    template changes renders afresh."""
    template = getattr(tokenizer, "chat_template", None)
    frame = _frame(tokenizer, template, system_prompt) if _PLAIN_PROMPT.fullmatch(prompt) else None
    if frame is not None:
        return frame[0] + prompt + frame[1]
    kept = _memory(tokenizer, "_aha_rendered")
    key = (template, prompt, system_prompt)
    if key not in kept:
        if len(kept) >= RENDERED_KEPT:
            kept.clear()
        kept[key] = _render(tokenizer, [{"role": "user", "content": prompt}], system_prompt)
    return kept[key]


def _memory(tokenizer, name: str) -> dict:
    """A dict kept on the tokenizer under name; a fresh one for an object without a __dict__ (no memory)."""
    try:
        return tokenizer.__dict__.setdefault(name, {})
    except AttributeError:
        return {}


# A prompt templates have no reason to look inside: no markup a template tests for (`<think>`, `[INST]`,
# `{`…), no edge whitespace a template trims. Problems of the programmatic tasks ("358+467=") are such prompts.
_PLAIN_PROMPT = re.compile(r"[^\s<>\[\]{}%]([^<>\[\]{}%]*[^\s<>\[\]{}%])?")
_PROBES = ("Aha probe 1: 7+5=", "aha PROBE two\n(x - 3) / 4 ?")


def _frame(tokenizer, template: str | None, system_prompt: str | None) -> tuple[str, str] | None:
    """(before, after) such that the template renders a plain one-turn prompt P as before + P + after, or
    None when it does not (no template, or one that changes or tests the content). Found once per template
    and system prompt (kept on the tokenizer) by rendering two different probes, each of which must come out
    verbatim, once, in the same frame. Rendering through transformers' apply_chat_template costs ~0.2 ms a
    prompt, a fifth of an SFT step of the demo model on 2 cores, for text that differs from the last one's
    only in the prompt."""
    frames = _memory(tokenizer, "_aha_frames")
    key = (template, system_prompt)
    if key not in frames:
        found = [] if template else [None]
        for probe in _PROBES if template else ():
            text = _render(tokenizer, [{"role": "user", "content": probe}], system_prompt)
            found.append(tuple(text.split(probe)) if text.count(probe) == 1 else None)
        frames[key] = found[0] if all(frame == found[0] for frame in found) else None
    return frames[key]


def _render(tokenizer, messages: list[dict], system_prompt: str | None) -> str:
    """The chat template applied to messages (a system turn first when one is given and none is there)."""
    if system_prompt and not any(message.get("role") == "system" for message in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(str(message["content"]) for message in messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def is_prefilled(rendered_prompt: str) -> bool:
    """Whether the rendered prompt already opened the thought (R1 templates since Feb 2025 end in `<think>\\n`)."""
    return rendered_prompt.rstrip().endswith(OPEN_TAG)


def encode_prompts(tokenizer, prompts: Sequence[str | Sequence[dict]],
                   system_prompt: str | None = None) -> tuple[list[list[int]], list[str], list[bool]]:
    """(token ids, rendered texts, prefilled flags) of each prompt. The rendered text already holds the
    template's BOS, so the tokenizer adds no special tokens of its own."""
    rendered = [render_prompt(tokenizer, prompt, system_prompt) for prompt in prompts]
    ids = tokenizer(rendered, add_special_tokens=False).input_ids if rendered else []  # one batched call
    return ids, rendered, [is_prefilled(text) for text in rendered]


def decode(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor, eos_ids: int | Sequence[int]) -> list[str]:
    """Text of each completion up to its first EOS (the EOS itself left out): (B, T) → B strings."""
    stop = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
    texts = []
    for ids, keep in zip(completion_ids.tolist(), mask.tolist(), strict=True):
        kept = [token for token, flag in zip(ids, keep, strict=True) if flag and token not in stop]
        texts.append(tokenizer.decode(kept, skip_special_tokens=False))
    return texts


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Every stop token: the tokenizer's EOS and the model's generation_config/config eos ids."""
    ids = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                   getattr(getattr(model, "config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else source)
    if not ids:
        raise ValueError("the tokenizer has no EOS token: sampling would never stop")
    return sorted(ids)


def pad_token_id(tokenizer) -> int:
    """The pad id, falling back to EOS (as the R1 distills do)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# Held-out evaluation ------------------------------------------------------------------------------

# Nucleus of the held-out samples when num_generations_eval > 1: with eval_temperature 0.6 it is how the
# R1 paper samples the k responses its pass@1 averages over.
EVAL_TOP_P = 0.95


class HeldoutSamples(NamedTuple):
    """What `sample_heldout` drew and how the accuracy reward scored it: one list per held-out row, with
    one entry per sample (k of them)."""

    correct: list[list[bool]]            # the accuracy reward gave 1.0 (a row without an answer: never)
    extracted: list[list[str | None]]    # answers.extract_final_answer of each sample (None: no answer)
    formatted: list[list[bool]]          # the format reward gave 1.0
    lengths: list[list[int]]             # completion tokens, EOS included
    seconds: float                       # wall time of the sampling and scoring


def sample_heldout(model, tokenizer, rows: Sequence[dict], k: int = 1, *, max_new_tokens: int,
                   temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 256,
                   system_prompt: str | None = None) -> HeldoutSamples:
    """k completions per held-out row (prompt, answer), scored by the `accuracy` and `format` rewards.

    Rows go to `sample` in batches of max(1, batch_size // k) prompts, each prompt's k samples next to each
    other (rows × k sequences per batch); at temperature > 0 every draw comes from one torch.Generator on
    the model's device seeded `seed` for the call, so an evaluation is reproducible and never touches the
    global RNG a training run checkpoints. temperature 0 is greedy (then k = 1 is all that is useful).
    """
    import torch

    from engine.train.answers import extract_final_answer
    from engine.train.rewards import accuracy_reward, format_reward

    started = time.perf_counter()
    eos, pad = eos_token_ids(tokenizer, model), pad_token_id(tokenizer)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    result = HeldoutSamples([], [], [], [], 0.0)
    per_batch = max(1, batch_size // k)
    for start in range(0, len(rows), per_batch):
        chunk = rows[start:start + per_batch]
        ids, rendered, prefilled = encode_prompts(tokenizer, [row["prompt"] for row in chunk], system_prompt)
        repeat = [index for index in range(len(chunk)) for _ in range(k)]  # k consecutive samples per prompt
        rollout = sample(model, [ids[index] for index in repeat], max_new_tokens=max_new_tokens, eos_ids=eos,
                         pad_id=pad, temperature=temperature, top_p=top_p, generator=generator)
        texts = decode(tokenizer, rollout.completion_ids, rollout.mask, eos)
        flags = [prefilled[index] for index in repeat]
        correct = accuracy_reward([rendered[index] for index in repeat], texts,
                                  answer=[chunk[index]["answer"] for index in repeat], prefilled=flags)
        formatted = format_reward([rendered[index] for index in repeat], texts, prefilled=flags)
        lengths = rollout.lengths.tolist()
        for index in range(len(chunk)):
            mine = range(index * k, (index + 1) * k)
            result.correct.append([bool(correct[sample_index]) for sample_index in mine])  # None: no answer
            result.extracted.append([extract_final_answer(texts[sample_index], flags[sample_index])
                                     for sample_index in mine])
            result.formatted.append([bool(formatted[sample_index]) for sample_index in mine])
            result.lengths.append([lengths[sample_index] for sample_index in mine])
    return result._replace(seconds=time.perf_counter() - started)


def heldout_metrics(samples: HeldoutSamples) -> dict[str, float]:
    """The evaluation's numbers over n rows of k samples each (engine.eval.metrics' estimators):

        pass@1 = 1/n · Σ_i c_i / k         (pass1_mean: the R1 paper's pass@1, the mean over the k samples)
        cons@k = 1/n · Σ_i [the majority answer of row i is correct]   (cons_at_k: lighteval's maj@k vote)
        pass@k = 1/n · Σ_i (1 − C(k − c_i, k) / C(k, k))   (pass_at_k with n = k: 1 once c_i ≥ 1, so the
                 share of rows with a correct sample)
        format = the share of well-formed samples;  mean_length = mean completion tokens per sample

    with c_i the correct samples of row i. No rows: every rate 0.
    """
    from engine.eval.metrics import cons_at_k, pass1_mean, pass_at_k

    rows = len(samples.correct)
    every = [flag for row in samples.formatted for flag in row]
    lengths = [length for row in samples.lengths for length in row]
    if not rows:
        return {"pass@1": 0.0, "cons@k": 0.0, "pass@k": 0.0, "format": 0.0, "mean_length": 0.0,
                "seconds": samples.seconds}
    return {
        "pass@1": sum(pass1_mean(correct) for correct in samples.correct) / rows,
        "cons@k": sum(cons_at_k(answers, correct)
                      for answers, correct in zip(samples.extracted, samples.correct, strict=True)) / rows,
        "pass@k": sum(pass_at_k(len(correct), sum(correct), len(correct)) for correct in samples.correct) / rows,
        "format": sum(every) / len(every),
        "mean_length": sum(lengths) / len(lengths),
        "seconds": samples.seconds,
    }


def sampled_accuracy(model, tokenizer, rows: Sequence[dict], k: int, *, max_new_tokens: int,
                     temperature: float = 0.6, top_p: float = EVAL_TOP_P, seed: int = 0, batch_size: int = 256,
                     system_prompt: str | None = None) -> tuple[float, dict[str, float]]:
    """Held-out pass@1 over k samples per row (sample_heldout, heldout_metrics). Returns (pass@1 in [0, 1],
    metrics: pass@1, cons@k, pass@k, format rate, mean completion length, seconds)."""
    metrics = heldout_metrics(sample_heldout(model, tokenizer, rows, k, max_new_tokens=max_new_tokens,
                                             temperature=temperature, top_p=top_p, seed=seed,
                                             batch_size=batch_size, system_prompt=system_prompt))
    return metrics["pass@1"], metrics


def greedy_accuracy(model, tokenizer, rows: Sequence[dict], *, max_new_tokens: int, batch_size: int = 256,
                    system_prompt: str | None = None) -> tuple[float, dict[str, float]]:
    """Held-out accuracy with greedy decoding (one completion per row), verified by the `accuracy` reward
    against each row's `answer`. Returns (accuracy in [0, 1], metrics: format rate, mean completion
    length, seconds)."""
    samples = sample_heldout(model, tokenizer, rows, 1, max_new_tokens=max_new_tokens, temperature=0.0,
                             batch_size=batch_size, system_prompt=system_prompt)
    count = max(len(rows), 1)
    return (sum(row[0] for row in samples.correct) / count,
            {"format": sum(row[0] for row in samples.formatted) / count,
             "mean_length": sum(row[0] for row in samples.lengths) / count, "seconds": samples.seconds})


def check_eval_settings(config) -> None:
    """num_generations_eval and eval_temperature values no evaluation can use, as one AhaError line."""
    from engine.errors import AhaError

    if config.num_generations_eval < 1:
        raise AhaError(f"num_generations_eval must be at least 1 (1: greedy), got {config.num_generations_eval}")
    if not config.eval_temperature >= 0:
        raise AhaError(f"eval_temperature must be 0 or more, got {config.eval_temperature}")
    if config.num_generations_eval > 1 and config.eval_temperature == 0:
        raise AhaError(f"eval_temperature 0 is greedy: the {config.num_generations_eval} held-out samples of a prompt "
                       "would all be the same; set eval_temperature (0.6 as in the R1 paper) or num_generations_eval = 1")


def evaluate_heldout(model, tokenizer, rows: Sequence[dict], config) -> dict[str, float]:
    """The held-out metrics a training step logs, from a GRPO or SFT config: greedy with
    num_generations_eval = 1 (eval/accuracy, eval/format, eval/seconds, as always); with k > 1, k samples
    per prompt at eval_temperature and top-p EVAL_TOP_P seeded with the run's seed (the same draws at every
    evaluation), adding eval/pass@1, eval/cons@k and eval/pass@k, and eval/accuracy = eval/pass@1."""
    k = config.num_generations_eval
    if k == 1:
        accuracy, details = greedy_accuracy(model, tokenizer, rows, max_new_tokens=config.max_completion_length,
                                            system_prompt=config.system_prompt)
        return {"eval/accuracy": accuracy, "eval/format": details["format"], "eval/seconds": details["seconds"]}
    accuracy, details = sampled_accuracy(model, tokenizer, rows, k, max_new_tokens=config.max_completion_length,
                                         temperature=config.eval_temperature, top_p=EVAL_TOP_P, seed=config.seed,
                                         system_prompt=config.system_prompt)
    return {"eval/accuracy": accuracy, "eval/pass@1": details["pass@1"], "eval/cons@k": details["cons@k"],
            "eval/pass@k": details["pass@k"], "eval/format": details["format"], "eval/seconds": details["seconds"]}
