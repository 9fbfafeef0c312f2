"""The language-consistency reward, rewards limited to rows of some tasks (the `task` column), and the
RewardSet a GRPO config builds (engine.train.rewards.build_reward_set)."""

from __future__ import annotations

import math

import pytest

from engine.errors import AhaError
from engine.train.grpo import GRPOConfig
from engine.train.rewards import RewardSet, build_reward_set, language_reward, parse_reward_tasks

ENGLISH = "<think>First add the tens, then the ones, and the sum is the answer.</think>The answer is 57."
GERMAN = "<think>Zuerst addieren wir die Zehner, dann die Einer, und die Summe ist die Antwort.</think>57"
CHINESE = "<think>首先把十位相加，然后把个位相加，得到答案。</think>答案是57。"
MIXED = "<think>首先把十位相加，然后 we add the ones and carry the one to the tens place.</think>57"


def test_language_reward_is_the_share_of_the_thought_in_the_prompts_language():
    english_prompt, chinese_prompt = "What is 23 plus 34?", "二十三加三十四等于多少？"
    german_prompt = "Wie viel ist dreiundzwanzig plus vierunddreißig?"
    scores = language_reward([english_prompt, german_prompt, chinese_prompt, chinese_prompt, english_prompt],
                             [ENGLISH, GERMAN, CHINESE, MIXED, CHINESE])
    assert scores[:3] == [1.0, 1.0, 1.0]
    assert 0.2 < scores[3] < 0.8  # Chinese prompt, half the thought in English
    assert scores[4] == 0.0  # English prompt, thought all in Chinese


def test_language_reward_scores_the_thought_only_and_takes_a_target():
    answer_in_german = "<think>We add the tens and then the ones.</think>Die Antwort ist siebenundfünfzig."
    assert language_reward(["What is 23 plus 34?"], [answer_in_german]) == [1.0]
    assert language_reward(["What is 23 plus 34?"], [ENGLISH], language="de") == [0.0]
    # A prompt with no words: the thought's own majority language is the target, so mixing still costs.
    mixed_majority_english = "<think>We add the tens, then the ones, and carry: 十位.</think>57"
    score = language_reward(["23 + 34 = ?"], [mixed_majority_english])[0]
    assert 0.5 < score < 1.0


def test_rewards_limited_to_tasks_leave_other_rows_to_the_rest():
    def general(prompts, completions, **columns):
        return [0.5] * len(completions)

    calls = []

    def counting(prompts, completions, **columns):
        calls.append(list(columns["task"]))
        return [1.0] * len(completions)

    rewards = RewardSet(["format", general, counting], [1.0, 2.0, 1.0],
                        tasks={"general": frozenset({"general"}), "counting": frozenset({"math"})})
    scores = rewards.score(["a", "b", "c"], [ENGLISH, ENGLISH, "no think"], task=["math", "general", "math"],
                           answer=["57", None, "57"])
    assert calls == [["math", "math"]]  # not called for the general row
    assert scores.per_reward["general"] == [None, 0.5, None]
    assert scores.per_reward["counting"] == [1.0, None, 1.0]
    assert scores.totals == [2.0, 2.0, 1.0]  # format 1 + counting 1; format 1 + 2·0.5; format 0 + counting 1
    assert not any(math.isnan(total) for total in scores.totals)
    with pytest.raises(AhaError, match="no 'task' column"):
        rewards.score(["a"], [ENGLISH])


@pytest.mark.parametrize(("entries", "message"), [
    (["accuracy"], "should be reward=task"), (["accuracy="], "should be reward=task"),
    (["speed=math"], "not one of the rewards"), (["accuracy=math", "accuracy=general"], "twice")])
def test_bad_reward_tasks_are_one_line(entries, message):
    with pytest.raises(AhaError, match=message):
        parse_reward_tasks(entries, ["accuracy", "format"])
    with pytest.raises(AhaError, match=message):
        GRPOConfig(model="m", dataset="addition", reward_tasks=tuple(entries)).validate()


def test_build_reward_set_from_a_config():
    config = GRPOConfig(model="m", dataset="addition", rewards=("format", "language"), reward_weights=(1.0, 0.5),
                        language="de", reward_tasks=("language=chat",))
    rewards = build_reward_set(config)
    scores = rewards.score(["What is 23 plus 34?"] * 2, [GERMAN, ENGLISH], task=["chat", "chat"])
    assert scores.per_reward["language"] == [1.0, 0.0]  # the setting's target, not the prompt's
    assert scores.totals == [1.5, 1.0]


@pytest.mark.parametrize(("reward", "message"), [("reward_model", "reward_model \\(a Hugging Face"),
                                                 ("judge", "judge_url")])
def test_configured_rewards_need_their_settings(reward, message):
    with pytest.raises(AhaError, match=message):
        GRPOConfig(model="m", dataset="addition", rewards=("accuracy", reward)).validate()
    with pytest.raises(AhaError, match=message):
        RewardSet([reward])
