"""What GRPO and distillation share, and GRPO and SFT themselves: config, the trainer core, the training
session, run directories, processes, data, rewards, sampling, the fused output head."""
