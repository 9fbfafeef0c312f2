"""Check an export: does the GGUF still think, would Ollama say so, and does it generate what the HF model does?

Three checks, each one line a person reads (users lose `<think>` after export: ollama#8965, unsloth#3899):
1. the GGUF's chat template, rendered (sandboxed) with a generation prompt, opens `<think>`, and llama.cpp
   reads `<think>`/`</think>` as single tokens;
2. Ollama would report the `thinking` capability: its rule is that the Modelfile's TEMPLATE holds both tags
   (and, when the export registered the model, /api/show lists `thinking`);
3. greedy tokens of a few prompts from transformers (f32, + the LoRA adapter when the export merged one) and
   from llama.cpp on the GGUF, from the same prompt ids: "identical for N tokens" or the first position where
   they diverge, with both tokens. f32/f16/bf16/q8_0 must agree (a divergence on a near tie, where the HF
   model itself barely prefers its token, is reported, not failed); a k-quant is expected to diverge, so its
   first divergence is a note, never a failure.
Knows nothing of how the GGUF was written or of Qt; loads both models in this process.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine import r1
from engine.errors import AhaError, Cancelled
from engine.jobs import CancelToken, OnEvent, Progress, ignore, make_event

STRICT_TYPES = ("f32", "f16", "bf16", "q8_0")  # no quantization error large enough to change a greedy token
CHECK_PROMPTS = ("What is 12 + 35?", "Write one sentence about the sea.",
                 f"How many legs do 3 spiders have? {r1.MATH_HINT}")
CHECK_TOKENS = 16
# Per strict type: (near tie: the HF logit of its own token minus that of the GGUF's token below which a
# divergence is rounding, not a wrong conversion; budget for the logits' NMSE). llama.cpp's own scripts grade
# a conversion's NMSE < 1e-4 "excellent". Measured on the tiny random checkpoints (f32 reference, 3 prompts ×
# 16 tokens): f32 ~2e-7 (float sums in another order), f16 ~1e-6, bf16 ~3e-5, q8_0 ~1e-3 (random weights
# quantize worse than trained ones); against the wrong weights (an adapter left out) it is ~1e-1 or more.
TOLERANCES = {"f32": (0.01, 1e-5), "f16": (0.01, 1e-4), "bf16": (0.05, 1e-3), "q8_0": (0.05, 1e-2)}
STATUSES = ("pass", "fail", "note")


@dataclass(frozen=True)
class CheckItem:
    """One line of the check: `status` pass | fail | note (a fact that is no failure, e.g. a k-quant diverging)."""

    name: str
    status: str
    message: str


@dataclass(frozen=True)
class TokenComparison:
    """Greedy tokens of one prompt, HF vs GGUF. `diverged_at` is the 0-based position of the first different
    token (None: identical for `compared` tokens); `hf_margin` the HF logit of its token minus that of the
    GGUF's token there; `prompt_diverged_at` the first prompt id where the two tokenizers differ (None: same);
    `logits_nmse` mean((GGUF − HF)²) / mean(HF²) of the logits over the steps both saw the same tokens."""

    prompt: str
    compared: int
    diverged_at: int | None = None
    hf_token: str | None = None
    gguf_token: str | None = None
    hf_margin: float | None = None
    prompt_diverged_at: int | None = None
    logits_nmse: float | None = None


@dataclass(frozen=True)
class ExportCheck:
    """The check of one GGUF: its lines in order, and the token comparisons behind the token lines."""

    gguf: str
    gguf_type: str
    items: list[CheckItem]
    comparisons: list[TokenComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(item.status != "fail" for item in self.items)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "gguf": self.gguf, "gguf_type": self.gguf_type,
                "items": [asdict(item) for item in self.items],
                "comparisons": [asdict(item) for item in self.comparisons]}


# -- 1. the chat template ---------------------------------------------------------------------------------

def template_item(source: str | None, bos_token: str = "", eos_token: str = "", origin: str = "the GGUF") -> CheckItem:
    """Does the generation prompt of this chat template open `<think>`? Rendered in the sandbox."""
    from engine.chat.reasoning import ends_inside_thinking
    from engine.chat_template import ChatTemplate

    name = "chat template"
    if not source:
        return CheckItem(name, "fail", f"{origin} carries no chat template: llama.cpp and chat apps guess one and "
                                       "lose <think>; export from a checkpoint whose tokenizer has the R1 template.")
    try:
        text = ChatTemplate(source, bos_token, eos_token, origin).render(
            [{"role": "user", "content": CHECK_PROMPTS[0]}], add_generation_prompt=True)
    except AhaError as error:
        return CheckItem(name, "fail", str(error))
    ending = repr(text[-24:])
    if ends_inside_thinking(text):
        return CheckItem(name, "pass", f"the generation prompt opens <think> (it ends with {ending}).")
    if r1.THINK_OPEN in source and r1.THINK_CLOSE in source:
        return CheckItem(name, "note", f"the generation prompt does not pre-fill <think> (it ends with {ending}): "
                                       "the model must open it itself, as R1 templates before February 2025 did.")
    return CheckItem(name, "fail", f"the chat template never writes <think> (the generation prompt ends with "
                                   f"{ending}): the reasoning will not be folded; export with the R1 chat template.")


def think_tokens_item(single: dict[str, bool]) -> CheckItem:
    """`single`: tag → whether llama.cpp tokenizes it (special tokens on) as one token."""
    split = [tag for tag, ok in single.items() if not ok]
    if not split:
        return CheckItem("think tokens", "pass", "<think> and </think> are single tokens in the GGUF's vocabulary.")
    return CheckItem("think tokens", "fail", f"{' and '.join(split)} is not a single token in the GGUF's vocabulary: "
                                             "the model never learned it as one; use the base model's tokenizer.")


# -- 2. what Ollama would report ---------------------------------------------------------------------------

_TEMPLATE_BLOCK = re.compile(r'^TEMPLATE\s+"""(.*?)"""', re.DOTALL | re.MULTILINE)


def modelfile_template(modelfile: str) -> str | None:
    """The TEMPLATE of a Modelfile (the triple-quoted form Aha writes), or None when it has none."""
    found = _TEMPLATE_BLOCK.search(modelfile)
    return found.group(1) if found else None


def ollama_thinking_item(template: str | None) -> CheckItem:
    """Ollama's rule: it reports `thinking` only when the TEMPLATE holds both the open and the close tag."""
    name = "Ollama thinking"
    if template is None:
        return CheckItem(name, "fail", "the Modelfile has no TEMPLATE: Ollama guesses one (it has no DeepSeek entry) "
                                       "and will not report `thinking`; export again to write the R1 template.")
    missing = [tag for tag in (r1.THINK_OPEN, r1.THINK_CLOSE) if tag not in template]
    if missing:
        return CheckItem(name, "fail", f"the Modelfile TEMPLATE lacks {' and '.join(missing)}: Ollama will not report "
                                       "`thinking` and `think: true` requests fail (ollama#8965).")
    return CheckItem(name, "pass", "Ollama will report the `thinking` capability (TEMPLATE has <think> and </think>).")


def ollama_show_item(name: str, shown: dict) -> CheckItem:
    """What the Ollama that the export registered with says: /api/show's capabilities."""
    capabilities = list(shown.get("capabilities") or [])
    if "thinking" in capabilities:
        return CheckItem("Ollama registered", "pass", f"Ollama lists `thinking` for {name}.")
    return CheckItem("Ollama registered", "fail", f"Ollama does not list `thinking` for {name} "
                                                  f"(capabilities: {', '.join(capabilities) or 'none'}).")


# -- 3. greedy tokens, HF vs GGUF --------------------------------------------------------------------------

def first_difference(left: list[int], right: list[int]) -> int | None:
    """The first index where two sequences differ (a length difference counts), or None when equal.

    Example:
    >>> first_difference([1, 2, 3], [1, 2, 4]), first_difference([1, 2], [1, 2]), first_difference([1], [1, 5])
    (2, None, 1)
    """
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return index
    return None if len(left) == len(right) else min(len(left), len(right))


def comparison_item(index: int, comparison: TokenComparison, gguf_type: str) -> CheckItem:
    """The line for one prompt's comparison: strict for f32/f16/bf16/q8_0, a note for a k-quant."""
    name = f"tokens, prompt {index}"
    if comparison.prompt_diverged_at is not None:
        return CheckItem(name, "fail", f"llama.cpp tokenizes prompt {index} differently from the HF tokenizer (first "
                                       f"difference at token {comparison.prompt_diverged_at}): the GGUF's "
                                       "pre-tokenizer (tokenizer.ggml.pre) or vocabulary is wrong.")
    error = f"logits NMSE {comparison.logits_nmse:.1g}" if comparison.logits_nmse is not None else ""
    tie, budget = TOLERANCES.get(gguf_type, (None, None))
    if budget is not None and comparison.logits_nmse is not None and comparison.logits_nmse > budget:
        return CheckItem(name, "fail", f"the {gguf_type} GGUF's logits differ from the HF model's ({error}, more than "
                                       f"{budget:g}): the conversion or the merge is wrong.")
    if comparison.diverged_at is None:
        return CheckItem(name, "pass", f"identical for {comparison.compared} tokens" + (f" ({error})." if error else "."))
    where = (f"first divergence at token {comparison.diverged_at}: HF {comparison.hf_token!r}, "
             f"GGUF {comparison.gguf_token!r}")
    if tie is None:
        return CheckItem(name, "note", f"{where} (expected for {gguf_type}: quantization changes the weights).")
    if comparison.hf_margin is not None and comparison.hf_margin < tie:
        return CheckItem(name, "note", f"{where}, on a near tie (the HF model prefers its token by "
                                       f"{comparison.hf_margin:.2g} logits; {error}).")
    margin = f" (the HF model prefers its token by {comparison.hf_margin:.3g} logits)" if comparison.hf_margin else ""
    return CheckItem(name, "fail", f"{where}{margin}: the {gguf_type} GGUF computes something else than the HF model; "
                                   "the conversion or the merge is wrong.")


class _GGUFModel:
    """llama.cpp on the GGUF, for the check: its template's prompt ids and greedy decoding (all logits kept)."""

    def __init__(self, path: Path, n_ctx: int):
        from engine.chat.runtime import physical_cores
        from engine.llama_backend import load_llama
        from engine.models import read_gguf_info

        self.info = read_gguf_info(path)
        if self.info.kind == "adapter":
            raise AhaError(f"{path.name} is a LoRA adapter, not a model: check the model it is applied to.")
        threads = physical_cores()
        try:
            self.llm = load_llama(path, n_ctx=n_ctx, logits_all=True, verbose=False, n_gpu_layers=0,
                                  n_threads=threads, n_threads_batch=threads)
        except (ValueError, RuntimeError) as exc:
            raise AhaError(f"llama.cpp could not load {path.name} ({exc}); the export is broken.") from exc
        self.bos_text, self.eos_text = self.text([self.llm.token_bos()]), self.text([self.llm.token_eos()])

    def text(self, ids: list[int]) -> str:
        ids = [token for token in ids if token >= 0]
        return self.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")

    def single_token(self, text: str) -> bool:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True)) == 1

    def prompt_ids(self, rendered: str) -> list[int]:
        """As the chat runtime tokenizes: BOS from the tokenizer only when the template did not write it."""
        add_bos = not (self.bos_text and rendered.startswith(self.bos_text)) and self.info.add_bos is not False
        return self.llm.tokenize(rendered.encode("utf-8"), add_bos=add_bos, special=True)

    def text_ids(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def greedy(self, ids: list[int], count: int) -> tuple[list[int], list]:
        """(tokens, each step's logits (V,)) of greedy decoding."""
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        tokens, logits = [], []
        for _ in range(count):
            step = np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)  # (V,)
            tokens.append(int(np.argmax(step)))
            logits.append(step)
            self.llm.eval([tokens[-1]])
        return tokens, logits

    def close(self) -> None:
        self.llm.close()


class _HFModel:
    """transformers in f32 on the CPU (+ the PEFT adapter, unmerged: an independent reference for the merge)."""

    def __init__(self, folder: Path, adapter: Path | None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        self.model = model.eval()

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def greedy(self, ids: list[int], count: int) -> tuple[list[int], list]:
        """(tokens, each step's logits (V,)) of greedy decoding. The whole sequence is run again at each step:
        no KV cache, whose calling convention transformers keeps renaming; a check decodes a few tokens."""
        torch = self.torch
        tokens, logits = [], []
        with torch.no_grad():
            for _ in range(count):
                step = self.model(torch.tensor([ids + tokens])).logits[0, -1].float()  # (V,)
                tokens.append(int(step.argmax()))
                logits.append(step.double().numpy())
        return tokens, logits


def compare_prompt(hf: _HFModel, gguf: _GGUFModel, prompt: str, count: int) -> TokenComparison:
    """Greedy `count` tokens from both models on the same prompt ids (llama.cpp's, as the chat runtime makes
    them; the HF tokenizer must give the same ids for the rendered text); the first divergence with both
    tokens and the HF margin there."""
    from engine.chat_template import ChatTemplate

    messages = [{"role": "user", "content": prompt}]
    template = ChatTemplate(gguf.info.chat_template or r1.CHAT_TEMPLATE, gguf.bos_text, gguf.eos_text)
    text = template.render(messages, add_generation_prompt=True)
    ids = gguf.prompt_ids(text)
    # The tokenizers are compared on the text alone: whether a BOS is added is the runtime's decision.
    prompt_difference = first_difference(hf.text_ids(text), gguf.text_ids(text))
    import numpy as np

    hf_tokens, hf_logits = hf.greedy(ids, count)
    gguf_tokens, gguf_logits = gguf.greedy(ids, count)
    at = first_difference(hf_tokens, gguf_tokens)
    shared = count if at is None else at + 1       # steps whose context was the same in both: 0..at
    reference, actual = np.stack(hf_logits[:shared]), np.stack(gguf_logits[:shared])  # (S, V)
    vocab = min(reference.shape[1], actual.shape[1])  # config.vocab_size may pad past the tokenizer
    nmse = float(((actual[:, :vocab] - reference[:, :vocab]) ** 2).mean() / (reference[:, :vocab] ** 2).mean())
    if at is None:
        return TokenComparison(prompt, count, prompt_diverged_at=prompt_difference, logits_nmse=nmse)
    step = hf_logits[at]
    margin = float(step[hf_tokens[at]] - step[gguf_tokens[at]])
    return TokenComparison(prompt, count, at, gguf.text([hf_tokens[at]]), gguf.text([gguf_tokens[at]]),
                           round(margin, 6), prompt_difference, nmse)


# -- the whole check ---------------------------------------------------------------------------------------

def check_export(gguf: Path | str, hf: Path | str | None = None, *, adapter: Path | str | None = None,
                 modelfile: Path | str | None = None, ollama: tuple[str, dict] | None = None,
                 prompts: tuple[str, ...] = CHECK_PROMPTS, max_tokens: int = CHECK_TOKENS,
                 on_event: OnEvent = ignore, cancel: CancelToken | None = None) -> ExportCheck:
    """Check a written GGUF: template, think tokens, Ollama's `thinking` (from `modelfile`, by default
    `<stem>.Modelfile` beside the GGUF; and `ollama` = (name, /api/show) when it was registered), and the
    greedy tokens against the HF checkpoint `hf` (+ `adapter`), when one is given. A `check` stage's
    progress events, one per check; a cancel stops between prompts with Cancelled."""
    gguf = Path(gguf).expanduser()
    steps = 2 + (len(prompts) if hf is not None else 0)
    progress = Progress(on_event, "check", steps, unit="checks", label=f"checking {gguf.name}")
    progress.update(0, force=True)
    model = _GGUFModel(gguf, n_ctx=512 + max_tokens)
    try:
        gguf_type = model.info.quantization.lower()
        items = [template_item(model.info.chat_template, model.bos_text, model.eos_text, gguf.name),
                 think_tokens_item({tag: model.single_token(tag) for tag in (r1.THINK_OPEN, r1.THINK_CLOSE)})]
        progress.advance()
        modelfile = Path(modelfile) if modelfile else gguf.with_name(f"{gguf.stem}.Modelfile")
        if modelfile.is_file():
            items.append(ollama_thinking_item(modelfile_template(modelfile.read_text(encoding="utf-8"))))
        else:
            items.append(CheckItem("Ollama thinking", "fail", f"no Modelfile beside the GGUF ({modelfile.name}): "
                                                              "export again to write one with the R1 template."))
        if ollama is not None:
            items.append(ollama_show_item(*ollama))
        progress.advance()
        comparisons = []
        if hf is not None:
            reference = _HFModel(Path(hf).expanduser(), Path(adapter).expanduser() if adapter else None)
            for index, prompt in enumerate(prompts, start=1):
                if cancel is not None and cancel.cancelled:
                    raise Cancelled(f"check cancelled; the export {gguf.name} is complete.")
                comparison = compare_prompt(reference, model, prompt, max_tokens)
                comparisons.append(comparison)
                items.append(comparison_item(index, comparison, gguf_type))
                progress.advance()
    finally:
        model.close()
    result = ExportCheck(str(gguf), gguf_type, items, comparisons)
    for item in items:
        on_event(make_event("log", level="warning" if item.status == "fail" else "info",
                            message=f"check {item.status}: {item.name}: {item.message}"))
    return result
