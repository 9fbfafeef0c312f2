"""Render a model's chat template safely: jinja2's ImmutableSandboxedEnvironment, checked before use.

A GGUF's `tokenizer.chat_template` is untrusted input (CVE-2024-34359: code execution through
llama-cpp-python's unsandboxed Jinja). A template that reaches for private attributes (`__globals__`,
`__class__`, …), includes or imports other templates (reads files), or extends one is refused when it
is loaded, before anything renders; at render time the sandbox raises on any unsafe access.
Knows nothing of models or tokens: text in, text out.
"""

from __future__ import annotations

from datetime import datetime

from engine.errors import AhaError


def _raise_exception(message: str):
    raise AhaError(f"the chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class StrictSandbox(ImmutableSandboxedEnvironment):
        """Raises at the first unsafe attribute instead of rendering an empty string."""

        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is unsafe")

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env


def escape_attempts(source: str) -> list[str]:
    """What in a template's syntax tree tries to leave the sandbox: private attributes, file access."""
    from jinja2 import nodes

    tree = _environment().parse(source)
    found = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Include, nodes.Import, nodes.FromImport,
                               nodes.Extends, nodes.Filter)):
        if isinstance(node, nodes.Filter):
            if node.name == "attr" and any(isinstance(a, nodes.Const) and str(a.value).startswith("_")
                                           for a in node.args):
                found.append("attr filter on a private attribute")
        elif isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            found.append(f"{type(node).__name__.lower()} of another template (reads files)")
        elif isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            found.append(f"attribute {node.attr}")
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            found.append(f"item {node.arg.value!r}")
    return found


TRIAL_CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\n4"},
    {"role": "user", "content": "And 3+3?"},
]


class ChatTemplate:
    """A compiled, checked chat template. `render(messages)` → prompt text."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", origin: str = "the model"):
        from jinja2 import TemplateSyntaxError

        self.source, self.bos_token, self.eos_token, self.origin = source, bos_token, eos_token, origin
        try:
            attempts = escape_attempts(source)
            self._template = _environment().from_string(source)
        except TemplateSyntaxError as exc:
            raise AhaError(f"the chat template of {origin} is not valid Jinja ({exc.message}, line {exc.lineno}); "
                           "the model cannot be used for chat as it is.") from exc
        if attempts:
            raise AhaError(f"the chat template of {origin} tries to escape its sandbox ({attempts[0]}); refused, "
                           "nothing was run. Do not use this file.")
        self.render(TRIAL_CONVERSATION)  # the sandbox refuses unsafe operations on the common path up front

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **variables) -> str:
        """The prompt text; `variables` are extra template variables (Qwen3's `enable_thinking`)."""
        from jinja2 import TemplateError
        from jinja2.sandbox import SecurityError

        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token, **variables)
        except SecurityError as exc:
            raise AhaError(f"the chat template of {self.origin} tried an unsafe operation ({exc}); refused.") from exc
        except TemplateError as exc:
            raise AhaError(f"the chat template of {self.origin} failed to render: {exc}") from exc
