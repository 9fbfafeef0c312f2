"""`aha pipeline`: a multi-stage recipe (DeepSeek-R1's four stages, or any chain of sft, grpo, generate, kd, eval
and export stages) as one resumable run whose children are the stage runs."""
