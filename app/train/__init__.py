"""The Train pane: a GRPO or distillation job set up, checked and started as a child process."""
