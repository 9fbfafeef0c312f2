"""Export: HF checkpoint (+ LoRA) → GGUF → Ollama. `pipeline.export` is `aha export`; the modules beside
it do one step each."""
