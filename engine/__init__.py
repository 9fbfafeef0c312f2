"""Aha's GUI-free core: chat, training, distillation and export for DeepSeek-R1-style models.

Importable and fully usable without Qt (a test enforces that `engine` never imports PySide6).
Heavy libraries (torch, transformers, peft, bitsandbytes, llama_cpp) are imported inside the
functions that need them, so `import engine` and `aha --help` stay fast.
"""

__version__ = "0.1.0"
