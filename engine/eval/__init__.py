"""Evaluation as the DeepSeek-R1 paper reports it: k samples per problem, pass@1 averaged over them,
cons@k (majority vote), pass@k (unbiased estimator), thinking length, and paired base-vs-trained comparisons.

`metrics` is pure math over per-problem results; `datasets` turns a task or a file into evaluation rows;
`batched` decodes a GGUF's samples together in llama.cpp; `models` opens a model spec as a teacher and
`runner` is `aha eval`'s resumable run. Nothing here knows GUIs.
"""
