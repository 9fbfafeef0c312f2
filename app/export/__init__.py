"""The Export pane: HF checkpoint (+ a run's LoRA adapter) → GGUF → Ollama, checked."""
