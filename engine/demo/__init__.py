"""`aha demo`: the DeepSeek-R1 recipe end to end on a model small enough to train in a minute on a CPU.

model.py builds the tiny Qwen2 and its llama.cpp-exportable tokenizer, recipe.py holds the settings of each
stage (as the configs of the real commands), pipeline.py runs the stages.
"""
