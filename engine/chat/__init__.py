"""Chat with GGUF reasoning models: the in-process llama.cpp runtime, conversations into the store, the
two-model compare loop and the terminal chat."""
