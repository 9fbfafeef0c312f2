"""A teacher without a model, for the distillation tests: every prompt gets the same k replies, from a list.

It has the teacher interface of engine.distill.teachers (describe, generate, close) and nothing else: the
replies are split as an endpoint's would be (`split_reply`), so verification, keep rules and files run for real.
"""

from __future__ import annotations

from engine.distill.teachers import TeacherSample, split_reply


class ListTeacher:
    """Sample i of every prompt is replies[i mod len(replies)]; `prompts_asked` counts the prompts generated for."""

    kind, name = "list", "replies"

    def __init__(self, replies: list[str]):
        self.replies, self.prompts_asked = replies, 0

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name}

    def generate(self, prompts, k, sampling, cancel=None):
        for index, _ in enumerate(prompts):
            self.prompts_asked += 1
            samples = []
            for sample_index in range(k):
                thinking, answer, raw, prefilled = split_reply(self.replies[sample_index % len(self.replies)])
                samples.append(TeacherSample(thinking, answer, raw, prefilled, "stop", sampling.for_sample(sample_index)))
            yield index, samples

    def close(self) -> None:
        pass
