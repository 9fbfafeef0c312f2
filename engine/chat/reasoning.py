"""Reasoning controls: the thinking budget's words and limits, and a template's thinking switch.

A thinking budget ends a thought that reaches N tokens the way llama.cpp's server does with
`--reasoning-budget N`: a closing sentence and `</think>` are put into the model's context, and the model
writes its answer from there (engine.chat.runtime does the decoding). `reasoning_effort` (OpenAI's field,
Ollama's `think` levels) maps to budgets.

Whether a model can be told not to think is read from its chat template, never from its name: a template
has a switch when rendering a question with a variable such as Qwen3's `enable_thinking` set to true and to
false gives two different prompts. R1 distills have none: their template opens a thought in every reply.
Knows nothing of llama.cpp: templates and text in, decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import r1
from engine.errors import AhaError

# llama.cpp's server's default budget message (tools/server, --reasoning-budget-message).
DEFAULT_BUDGET_MESSAGE = ("Considering the limited time, I have to give the solution based on the thinking "
                          "directly now.")
DEFAULT_BUDGET_CLOSE = f"\n{r1.THINK_CLOSE}\n\n"

# OpenAI's reasoning_effort, as thinking budgets in tokens. R1-Distill-Qwen-1.5B thinks ~2–6k tokens on a
# MATH-500 problem: "low" stops a long thought early, "high" leaves almost every one alone.
REASONING_EFFORT_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}

# Template variables that switch thinking, in the order they are tried: Qwen3's, then DeepSeek-V3.1's.
THINKING_VARIABLES = ("enable_thinking", "thinking")
_PROBE = [{"role": "user", "content": "What is 2+2?"}]


def effort_budget(effort: str) -> int:
    """The thinking budget of a reasoning_effort: low 1024, medium 4096, high 16384 tokens."""
    if effort not in REASONING_EFFORT_BUDGETS:
        raise AhaError(f"reasoning_effort {effort!r} is not one of {', '.join(REASONING_EFFORT_BUDGETS)}.")
    return REASONING_EFFORT_BUDGETS[effort]


def check_budget(budget) -> int | None:
    """A thinking budget as given (None: no budget): a whole number of tokens ≥ 0, or a one-line error."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise AhaError(f"the thinking budget must be a whole number of tokens, 0 or more (got {budget!r}).")
    return budget


def budget_text(message: str | None = None, close: str | None = None) -> str:
    """What the budget puts into the context when it ends a thought: the message, then the close."""
    return (message or DEFAULT_BUDGET_MESSAGE) + (close if close is not None else DEFAULT_BUDGET_CLOSE)


def ends_inside_thinking(prompt: str) -> bool:
    """Decide "prefilled" from the rendered prompt: does it end inside an unclosed <think>?"""
    opened, closed = prompt.rfind(r1.THINK_OPEN), prompt.rfind(r1.THINK_CLOSE)
    return opened != -1 and opened > closed and not prompt[opened + len(r1.THINK_OPEN):].strip()


@dataclass(frozen=True)
class ThinkingSwitch:
    """Whether a template can turn thinking on and off. `variable` is the template's name for it, `default`
    whether the template thinks when the variable is not given; `reason` says why there is no switch."""

    supported: bool
    variable: str | None = None
    default: bool | None = None
    reason: str = ""


ALWAYS_THINKS = ("this model always thinks: its chat template opens a thought in every reply, with no switch "
                 "to turn it off; bound it with a thinking budget instead.")
NO_SWITCH = "this model's chat template has no thinking switch (such as Qwen3's enable_thinking)."


def thinking_switch(template) -> ThinkingSwitch:
    """Detect the switch by rendering a question both ways with each known variable (a ChatTemplate in)."""
    plain = template.render(_PROBE)
    for variable in THINKING_VARIABLES:
        on, off = template.render(_PROBE, **{variable: True}), template.render(_PROBE, **{variable: False})
        if on != off:
            return ThinkingSwitch(True, variable, default=plain == on if plain in (on, off) else None)
    return ThinkingSwitch(False, reason=ALWAYS_THINKS if ends_inside_thinking(plain) else NO_SWITCH)
