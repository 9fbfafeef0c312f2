"""Evaluation as the DeepSeek-R1 paper does it."""
