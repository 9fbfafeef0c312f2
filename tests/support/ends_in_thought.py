"""A tiny real model whose reply ends inside its thought: for `QUESTION` it writes the one line `THOUGHT` and
then EOS, with no </think>. Nobody stops it and no budget cuts it: "the model ended inside its thought".

Built like the scripted model (tests/support/scripted_model.py), once per test session under `tiny_dir`.
"""

from __future__ import annotations

from pathlib import Path

QUESTION = "Is 7 prime?"
THOUGHT = "7 has no divisors but 1 and 7.\n"


def ends_in_thought_gguf(tiny_dir: Path, base: Path) -> Path:
    """The GGUF of `base` taught to answer QUESTION with THOUGHT and EOS (cached in tiny_dir)."""
    from engine.export.pipeline import export
    from tests.support.scripted_model import train_scripted

    path = tiny_dir / "ends-in-thought.gguf"
    if not path.exists():
        folder = train_scripted(base, tiny_dir / "ends-in-thought", lessons=[(QUESTION, THOUGHT)])
        export(folder, path, "f16")
    return path
