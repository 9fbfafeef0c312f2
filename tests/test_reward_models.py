"""Model-based rewards (engine.train.reward_models): a tiny random reward model built here, and the judge
against a scripted OpenAI-compatible server on a loopback port."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.errors import AhaError
from engine.train.reward_models import (
    JUDGE_TEMPLATE,
    make_judge_reward,
    make_reward_model_reward,
    parse_rating,
    rating_score,
)
from tests import tiny_models

# Reward model -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A random Qwen2ForSequenceClassification (1 output, hidden 32, 2 layers) with the tiny byte-level
    BPE tokenizer and the R1 chat template."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    folder = tmp_path_factory.mktemp("reward-model")
    ids = tiny_models.save_tokenizer(folder)
    config = Qwen2Config(vocab_size=ids["size"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         num_labels=1, pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"])
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain_reward_model_dir(reward_model_dir, tmp_path_factory):
    """The same reward model with no chat template: pairs are joined as prompt + blank line + answer
    (and the R1 template's own cut at </think> cannot hide a thought left in)."""
    folder = tmp_path_factory.mktemp("plain-reward-model")
    for file in reward_model_dir.iterdir():
        shutil.copy(file, folder / file.name)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return folder


PROMPTS = ["What is 2 + 3?", "Name a colour.", "Say hello.", "What is 2 + 3?", "Why is the sky blue?"]
COMPLETIONS = ["<think>add them</think>The answer is 5.", "<think>hmm</think>Blue",
               "<think>easy</think>Hello there, how are you today?", "<think>x</think>It is 6.",
               "<think>light</think>Rayleigh scattering of sunlight by the air's molecules."]


@pytest.mark.parametrize("templated", [True, False])
def test_reward_model_scores_the_answer_not_the_thought(reward_model_dir, plain_reward_model_dir, templated):
    folder = reward_model_dir if templated else plain_reward_model_dir
    reward = make_reward_model_reward(str(folder), device="cpu", batch_size=8)
    five, six = reward(["What is 2 + 3?"] * 2, ["<think>add</think>The answer is 5.", "<think>add</think>It is 6."])
    assert abs(five - six) > 1e-4
    thoughts = reward(["What is 2 + 3?"] * 3, ["<think>add them up</think>The answer is 5.",
                                               "<think>a much longer and different thought, 2 and 3</think>The answer is 5.",
                                               "opened by the prompt</think>The answer is 5."],
                      prefilled=[False, False, True])
    assert thoughts[1] == pytest.approx(thoughts[0], abs=1e-6) and thoughts[2] == pytest.approx(thoughts[0], abs=1e-6)
    assert thoughts[0] == pytest.approx(five, abs=1e-5)


def test_reward_model_applies_the_chat_template(reward_model_dir, plain_reward_model_dir):
    pair = (["What is 2 + 3?"], ["<think>add</think>The answer is 5."])
    templated = make_reward_model_reward(str(reward_model_dir), device="cpu")(*pair)[0]
    plain = make_reward_model_reward(str(plain_reward_model_dir), device="cpu")(*pair)[0]
    assert abs(templated - plain) > 1e-4


def test_reward_model_batches_score_as_one_by_one(reward_model_dir):
    batched = make_reward_model_reward(str(reward_model_dir), device="cpu", batch_size=4)(PROMPTS, COMPLETIONS)
    single = make_reward_model_reward(str(reward_model_dir), device="cpu", batch_size=1)
    alone = [single([prompt], [completion])[0] for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert len(set(round(value, 4) for value in alone)) == len(alone)  # the rows differ, so the check can fail
    assert batched == pytest.approx(alone, abs=1e-5)


def test_reward_model_missing_folder_is_one_line(tmp_path):
    reward = make_reward_model_reward(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(AhaError, match="nowhere") as caught:
        reward(["q"], ["a"])
    assert "\n" not in str(caught.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(AhaError, match="broken"):
        make_reward_model_reward(str(broken), device="cpu")(["q"], ["a"])


# Judge --------------------------------------------------------------------------------------------

class ScriptedJudge:
    """A loopback /v1/chat/completions whose reply depends on a keyword in the judged answer."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.flaky_calls = 0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, payload: dict):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (the timeout case)
                    pass

            def do_GET(self):  # noqa: N802 - http.server's name
                self._reply(200, {"data": [{"id": "judge-1"}]})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.bodies.append(body)
                    judge.in_flight += 1
                    judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
                try:
                    self._script(body["messages"][-1]["content"])
                finally:
                    with judge.lock:
                        judge.in_flight -= 1

            def _script(self, prompt: str):
                if "SLOW" in prompt:
                    time.sleep(1.0)
                if "WAIT" in prompt:
                    time.sleep(0.3)
                if "REFUSE" in prompt:
                    return self._reply(401, {"error": {"message": "bad key"}})
                if "FLAKY" in prompt:
                    with judge.lock:
                        judge.flaky_calls += 1
                        first = judge.flaky_calls == 1
                    if first:
                        return self._reply(500, {"error": {"message": "overloaded"}})
                    text = "Fine. [[10]]"
                elif "GARBAGE" in prompt:
                    text = "no rating here"
                elif "PLAIN" in prompt:
                    text = "Decent. Rating: 4"
                else:
                    text = "Mostly right, though [[3]] was a typo. Rating: [[7]]"
                self._reply(200, {"choices": [{"message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge_server():
    server = ScriptedJudge()
    yield server
    server.close()


def test_parse_rating_takes_the_last_rating():
    assert parse_rating("[[3]] then Rating: [[7]]") == 7
    assert parse_rating("Rating: 8.5") == 8.5
    assert parse_rating("no rating here") is None
    assert parse_rating("[[11]]") is None
    assert rating_score(1) == 0 and rating_score(10) == 1


def test_judge_scores_answers_only(judge_server):
    reward = make_judge_reward(judge_server.url, retries=0)
    scores = reward(["What is 2 + 3?", "Q2", "Q3"],
                    ["<think>SECRET THOUGHT</think>It is 5.", "<think>t</think>GARBAGE", "thought on</think>PLAIN answer"],
                    prefilled=[False, False, True])
    assert scores[0] == pytest.approx(6 / 9) and round(scores[0], 3) == 0.667
    assert scores[1] is None
    assert scores[2] == pytest.approx(3 / 9)
    first = next(body for body in judge_server.bodies if "It is 5." in body["messages"][-1]["content"])
    assert first["model"] == "judge-1" and first["temperature"] == 0
    assert first["messages"][-1]["content"] == JUDGE_TEMPLATE.replace("{question}", "What is 2 + 3?").replace(
        "{answer}", "It is 5.")
    assert not any("SECRET" in json.dumps(body) for body in judge_server.bodies)


def test_judge_timeout_leaves_the_sample_unscored(judge_server):
    reward = make_judge_reward(judge_server.url, model="m", timeout_s=0.3, retries=1)
    assert reward(["q", "q"], ["SLOW", "fine"]) == [None, pytest.approx(6 / 9)]
    assert sum("SLOW" in body["messages"][-1]["content"] for body in judge_server.bodies) == 2  # retried once


def test_judge_retries_a_server_error(judge_server):
    assert make_judge_reward(judge_server.url, model="m", retries=1)(["q"], ["FLAKY"]) == [1.0]
    assert judge_server.flaky_calls == 2
    judge_server.flaky_calls = 0
    assert make_judge_reward(judge_server.url, model="m", retries=0)(["q"], ["FLAKY"]) == [None]


def test_judge_refusal_is_one_line(judge_server):
    with pytest.raises(AhaError, match="HTTP 401"):
        make_judge_reward(judge_server.url, model="m")(["q"], ["REFUSE"])


def test_judge_keeps_requests_in_flight(judge_server):
    reward = make_judge_reward(judge_server.url, model="m", concurrency=4)
    started = time.monotonic()
    assert reward(["q"] * 4, ["WAIT"] * 4) == [pytest.approx(6 / 9)] * 4
    assert judge_server.max_in_flight == 4
    assert time.monotonic() - started < 1.0  # 4 × 0.3 s one after another would be 1.2 s


def test_judge_template_file(judge_server, tmp_path):
    template = tmp_path / "judge.txt"
    template.write_text("Grade {answer} for {question} {braces}", encoding="utf-8")
    assert make_judge_reward(judge_server.url, model="m", template=str(template))(["Q?"], ["A."]) == [
        pytest.approx(6 / 9)]
    assert judge_server.bodies[-1]["messages"][-1]["content"] == "Grade A. for Q? {braces}"
    template.write_text("no placeholders", encoding="utf-8")
    with pytest.raises(AhaError, match="lacks"):
        make_judge_reward(judge_server.url, model="m", template=str(template))


def test_reward_model_4bit_without_bitsandbytes_is_one_line(reward_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(AhaError, match="pip install bitsandbytes"):
        make_reward_model_reward(str(reward_model_dir), device="cpu", load_in_4bit=True)(["q"], ["a"])


def test_a_config_builds_the_reward_model_and_the_judge(reward_model_dir, judge_server):
    """build_reward_set wires the configured rewards: the reward model scores the general row only and the
    judge's rating is its share of the total."""
    from engine.train.grpo import GRPOConfig
    from engine.train.rewards import build_reward_set

    config = GRPOConfig(model="m", dataset="addition", rewards=("format", "reward_model", "judge"),
                        reward_model=str(reward_model_dir), reward_model_device="cpu", judge_url=judge_server.url,
                        judge_retries=0, reward_tasks=("reward_model=general", "judge=general"))
    config.validate()
    scores = build_reward_set(config).score(["What is 2 + 3?", "Say hello."],
                                            ["<think>x</think>5", "<think>y</think>Hello there!"],
                                            task=["math", "general"])
    direct = make_reward_model_reward(str(reward_model_dir), device="cpu")(["Say hello."], ["<think>y</think>Hello there!"])
    assert scores.per_reward["reward_model"][0] is None and scores.per_reward["judge"][0] is None
    assert scores.per_reward["reward_model"][1] == pytest.approx(direct[0], abs=1e-6)
    assert scores.totals[0] == 1.0  # format only
    assert scores.totals[1] == pytest.approx(1.0 + direct[0] + 6 / 9, abs=1e-5)


def test_reward_model_in_4_bits_on_the_cpu_scores_near_the_full_model(tmp_path):
    """load_in_4bit: bitsandbytes NF4 weights (on this CPU, as on a GPU), the same scores as the float32 model
    within NF4's error, in the same order of answers. A model wide enough to quantize (bitsandbytes leaves
    layers narrower than its blocks alone)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    ids = tiny_models.save_tokenizer(tmp_path)
    config = Qwen2Config(vocab_size=ids["size"], hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"])
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(tmp_path)
    full = make_reward_model_reward(str(tmp_path), device="cpu")(PROMPTS, COMPLETIONS)
    scores = make_reward_model_reward(str(tmp_path), device="cpu", load_in_4bit=True)(PROMPTS, COMPLETIONS)
    from engine.train.reward_models import _load_reward_model

    loaded = _load_reward_model(str(tmp_path), "cpu", True)["model"]
    assert any(type(module).__name__ == "Linear4bit" for module in loaded.modules())  # really in 4 bits
    assert scores != full  # quantization changed the numbers, so the next check can fail
    spread = max(full) - min(full)
    assert max(abs(a - b) for a, b in zip(scores, full, strict=True)) < 0.2 * spread
