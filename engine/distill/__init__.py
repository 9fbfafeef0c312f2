"""Distillation: teachers (GGUF, HF, OpenAI-compatible endpoints), verified trace generation, SFT on traces
and logit distillation."""
