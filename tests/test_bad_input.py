"""Bad input to every long command, in real child processes: whatever goes wrong (the input, the output
location, the network, a library underneath), the user sees exit 2 and one line `aha: error: …` that names
the problem, never a traceback or a library's warnings; with `--events jsonl` the stream is `start` then one
`error`; nothing is written (an existing output is left as it was, no folder is made, no `.partial`/`.work`/
`.incomplete` scratch file stays) and no run is recorded.

Each case is (id, job kind, words the line must hold, setup): the setup gets the shared inputs and the
case's empty output folder and returns the argv. Every refusal comes before a model is loaded (most before
torch is imported), so a case costs one interpreter start. Then the commands that are no job and argparse's
usage mistakes (the same one line), and a disk that fills while an export or trace generation writes
(in-process, the write made to fail).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.char_model import make_char_model
from tests.support.fake_hub import FakeHub
from tests.test_job_contract import REPO, check_stream

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there
SCRATCH = (".partial", ".work", ".incomplete")
TRACE_ROWS = [{"prompt": f"{a}+{b}=", "thinking": f"{a}+{b}={a + b}", "answer": str(a + b)}
              for a, b in ((12, 34), (5, 7), (40, 2), (9, 9))]
TINY = ["--device", "cpu", "--lora-r", "4", "--lora-alpha", "8"]


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, checkpoint) -> dict[str, Path]:
    """The bad (and the good) inputs every case picks from, made once."""
    from tests.tiny_models import make_lora_adapter

    folder = tmp_path_factory.mktemp("bad-input")
    good = checkpoint("qwen2")
    made: dict[str, Path] = {"checkpoint": good, "student": make_char_model(folder / "student")}

    def variant(name: str, change: Callable[[Path], None]) -> None:
        made[name] = folder / name
        shutil.copytree(good, made[name])
        change(made[name])

    def write(name: str, text: str | bytes) -> None:
        made[name] = folder / name
        made[name].write_bytes(text if isinstance(text, bytes) else text.encode())

    def unsupported(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"],
                                                      "model_type": "mistral"}))

    def truncated(path: Path) -> None:
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    def no_tokenizer(path: Path) -> None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                     "merges.txt", "chat_template.jinja"):
            (path / name).unlink(missing_ok=True)

    variant("no-config", lambda path: (path / "config.json").unlink())
    variant("corrupt-config", lambda path: (path / "config.json").write_text("{not json"))
    variant("unsupported", unsupported)
    variant("truncated", truncated)
    variant("garbage-weights", lambda path: (path / "model.safetensors").write_bytes(b"\x07" * 300))
    variant("no-tokenizer", no_tokenizer)
    variant("no-weights", lambda path: (path / "model.safetensors").unlink())
    variant("corrupt-tokenizer", lambda path: (path / "tokenizer.json").write_text('{"version": "1.0", "model":'))
    made["adapter-of-qwen3"] = make_lora_adapter(checkpoint("qwen3"), folder / "adapter-of-qwen3")
    made["corrupt-adapter"] = folder / "corrupt-adapter"
    shutil.copytree(made["adapter-of-qwen3"], made["corrupt-adapter"])
    (made["corrupt-adapter"] / "adapter_config.json").write_text("{\"r\": 8,")
    made["empty-folder"] = folder / "empty-folder"
    made["empty-folder"].mkdir()
    write("a-file", "not a folder\n")
    write("not-gguf.gguf", b"this is no GGUF file" * 10)
    write("traces.jsonl", jsonl(TRACE_ROWS))
    write("empty.jsonl", "")
    write("broken.jsonl", jsonl(TRACE_ROWS[:2]) + "{this is not JSON\n" + jsonl(TRACE_ROWS[2:]))
    write("no-prompt.jsonl", jsonl({"question": row["prompt"], "answer": row["answer"]} for row in TRACE_ROWS))
    write("no-answer.jsonl", jsonl({"prompt": row["prompt"]} for row in TRACE_ROWS))
    write("not-utf8.jsonl", b'{"prompt": "\xff\xfe"}\n')
    write("no-thinking.jsonl", jsonl({"prompt": row["prompt"], "answer": row["answer"]} for row in TRACE_ROWS))
    write("syntax_error.py", "def reward(completions, **kwargs)\n    return [0.0]\n")
    write("reward_ok.py", "def reward(completions, **kwargs):\n    return [0.0 for _ in completions]\n")
    write("bad.toml", "num_generations = = 4\n")
    write("unknown-key.toml", "num_generationz = 4\n")
    write("wrong-type.toml", 'beta = "high"\n')
    return made


@pytest.fixture(scope="module")
def hub():
    """The fake Hub with one repository holding one file (the 404 cases ask it for others)."""
    server = FakeHub()
    server.add("unsloth/Tiny-R1-GGUF", "tiny.gguf", b"GGUF" + bytes(60))
    with server as endpoint:
        yield endpoint


@dataclass(frozen=True)
class Case:
    id: str
    kind: str                                   # the job's kind in its `start` event
    words: tuple[str, ...]                      # what the one line must name
    argv: Callable[[dict, Path], list[str]]     # (inputs, the empty output folder) → the command's arguments
    env: Callable[[str], dict] = field(default=lambda hub: {})  # (the fake Hub's URL) → environment
    terminal: bool = False                      # also run without --events: the terminal's form
    without_gpu: bool = False                   # only where no CUDA GPU is (the error is that there is none)


def fill(arg: str, i: dict) -> str:
    """An argument with the inputs put in: `student` → its path, `gguf:{not-gguf.gguf}` → gguf:/…/not-gguf.gguf."""
    if arg in i:
        return str(i[arg])
    for name, path in i.items():
        arg = arg.replace("{" + name + "}", str(path))
    return arg


def export(src: str, *extra: str, out: str = "m.gguf") -> Callable[[dict, Path], list[str]]:
    return lambda i, o: ["export", fill(src, i), "-o", str(o / out), *(fill(arg, i) for arg in extra)]


def existing(name: str, then: Callable[[dict, Path], list[str]], folder: bool = False):
    """Setup that first puts the user's own file (or folder) `name` in the output folder."""
    def setup(i: dict, o: Path) -> list[str]:
        if folder:
            (o / name).mkdir()
        else:
            (o / name).write_text("the user's own file\n")
        return then(i, o)
    return setup


def unwritable(then: Callable[[dict, Path], list[str]]):
    """Setup whose output lies in out/locked, a folder nobody may write: chmod 0o500, or where permissions
    do not bind (root) a folder of /sys in its place, which refuses new files to root too."""
    def setup(i: dict, o: Path) -> list[str]:
        argv = then(i, o)
        locked = o / "locked"
        if os.geteuid() != 0:
            locked.mkdir()
            locked.chmod(0o500)
            return argv
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys: no folder refuses writes")
        return [arg.replace(str(locked), "/sys/kernel") for arg in argv]
    return setup


def grpo(*extra: str, model: str = "student", dataset: str = "addition", out: str = "run"):
    def setup(i: dict, o: Path) -> list[str]:
        data = ["--dataset", fill(dataset, i)] if dataset else []
        chosen = ["--model", fill(model, i)] if model else []
        return ["grpo", *chosen, *data, *TINY, "--max-steps", "1", "--num-generations", "2",
                "--prompts-per-step", "2", "--output-dir", str(o / out),
                *(fill(arg, i) for arg in extra)]
    return setup


def generate(teacher: str, *extra: str, dataset: str = "addition", out: str = "traces.jsonl"):
    def setup(i: dict, o: Path) -> list[str]:
        return ["distill", "generate", "--teacher", fill(teacher, i), "--dataset", fill(dataset, i),
                "--limit", "2", "-k", "1", "-o", str(o / out), *(fill(arg, i) for arg in extra)]
    return setup


def distill(action: str, *extra: str, traces: str = "traces.jsonl", student: str = "student", out: str = "run"):
    def setup(i: dict, o: Path) -> list[str]:
        given = ["--traces", fill(traces, i)] if traces else []
        return ["distill", action, "--student", fill(student, i), *given, *TINY, "--max-steps", "1",
                "--output-dir", str(o / out), *(fill(arg, i) for arg in extra)]
    return setup


OPENAI_TEACHER = f"openai:{UNREACHABLE}/v1"

CASES = [
    # aha export ------------------------------------------------------------------------------------
    Case("export-missing-source", "export", ("nowhere", "does not exist"), export("/nowhere/model"), terminal=True),
    Case("export-source-is-a-file", "export", ("a-file", "not a folder"), export("a-file")),
    Case("export-no-config", "export", ("config.json",), export("no-config")),
    Case("export-corrupt-config", "export", ("config.json",), export("corrupt-config"), terminal=True),
    Case("export-unsupported-architecture", "export", ("unsupported architecture MistralForCausalLM",),
         export("unsupported", out="new/m.gguf")),
    Case("export-truncated-safetensors", "export", ("model.safetensors", "truncated"), export("truncated", out="new/deeper/m.gguf")),
    Case("export-garbage-safetensors", "export", ("model.safetensors", "not a valid safetensors"),
         export("garbage-weights")),
    Case("export-no-weights", "export", ("model.safetensors",), export("no-weights")),
    Case("export-missing-tokenizer", "export", ("tokenizer",), export("no-tokenizer", out="new/m.gguf")),
    Case("export-output-is-a-folder", "export", ("m.gguf", "is a folder"),
         existing("m.gguf", export("checkpoint", "--force"), folder=True)),
    Case("export-output-folder-without-force", "export", ("m.gguf", "is a folder"),
         existing("m.gguf", export("checkpoint"), folder=True)),
    Case("export-k-quant-missing-tokenizer", "export", ("tokenizer",),
         export("no-tokenizer", "--type", "q4_k_m", out="new/m.gguf")),
    Case("export-output-exists", "export", ("m.gguf", "already exists", "--force"),
         existing("m.gguf", export("checkpoint")), terminal=True),
    Case("export-output-under-a-file", "export", ("a-file", "not a folder"),
         existing("a-file", export("checkpoint", out="a-file/m.gguf"))),
    Case("export-output-not-writable", "export", ("cannot write",),
         unwritable(export("checkpoint", out="locked/m.gguf"))),
    Case("export-unknown-type", "export", ("unknown GGUF type", "q9_z"), export("checkpoint", "--type", "q9_z")),
    Case("export-imatrix-type", "export", ("iq2_xs", "importance matrix"), export("checkpoint", "--type", "iq2_xs")),
    Case("export-adapter-missing", "export", ("no-adapter", "does not exist"),
         export("checkpoint", "--adapter", "/nowhere/no-adapter")),
    Case("export-adapter-is-a-checkpoint", "export", ("adapter_config.json",),
         export("checkpoint", "--adapter", "checkpoint")),
    Case("export-adapter-corrupt-config", "export", ("adapter_config.json", "not valid JSON"),
         export("checkpoint", "--adapter", "corrupt-adapter")),
    Case("export-adapter-of-another-model", "export", ("another base model",),
         export("checkpoint", "--adapter", "adapter-of-qwen3")),
    Case("export-adapter-only-without-adapter", "export", ("--adapter-only", "--adapter"),
         export("checkpoint", "--adapter-only")),
    Case("export-adapter-only-k-quant", "export", ("q4_k_m", "GGUF LoRA"),
         export("checkpoint", "--adapter", "adapter-of-qwen3", "--adapter-only", "--type", "q4_k_m")),
    Case("export-ollama-unreachable", "export", ("cannot reach Ollama", "127.0.0.1:9"),
         export("checkpoint", "--ollama", "aha-r1:test"), env=lambda hub: {"OLLAMA_HOST": UNREACHABLE}),
    Case("export-ollama-bad-name", "export", ("my model!", "not an Ollama model name"),
         export("checkpoint", "--ollama", "my model!"), env=lambda hub: {"OLLAMA_HOST": UNREACHABLE}),
    Case("export-negative-num-ctx", "export", ("--num-ctx", "-5"), export("checkpoint", "--num-ctx", "-5")),
    # aha models pull -------------------------------------------------------------------------------
    Case("pull-bad-repo-name", "pull", ("not a Hugging Face repository id",),
         lambda i, o: ["models", "pull", "no such/repo!", "tiny.gguf"], terminal=True),
    Case("pull-not-a-gguf", "pull", ("tiny.bin", ".gguf"), lambda i, o: ["models", "pull", "unsloth/Tiny-R1-GGUF",
                                                                           "tiny.bin"]),
    Case("pull-path-escape", "pull", ("../tiny.gguf",), lambda i, o: ["models", "pull", "unsloth/Tiny-R1-GGUF",
                                                                        "../tiny.gguf"]),
    Case("pull-hub-unreachable", "pull", ("cannot reach", "127.0.0.1:9"),
         lambda i, o: ["models", "pull", "unsloth/Tiny-R1-GGUF", "tiny.gguf"],
         env=lambda hub: {"HF_ENDPOINT": UNREACHABLE}, terminal=True),
    Case("pull-malformed-endpoint", "pull", ("HF_ENDPOINT", "not a URL"),
         lambda i, o: ["models", "pull", "unsloth/Tiny-R1-GGUF", "tiny.gguf"],
         env=lambda hub: {"HF_ENDPOINT": "http://[::1"}, terminal=True),
    Case("pull-endpoint-not-http", "pull", ("HF_ENDPOINT", "ftp://hub"),
         lambda i, o: ["models", "pull", "unsloth/Tiny-R1-GGUF", "tiny.gguf"], env=lambda hub: {"HF_ENDPOINT": "ftp://hub"}),
    Case("pull-file-not-on-the-hub", "pull", ("no file", "other.gguf"),
         lambda i, o: ["models", "pull", "unsloth/Tiny-R1-GGUF", "other.gguf"], env=lambda hub: {"HF_ENDPOINT": hub}),
    Case("pull-repo-not-on-the-hub", "pull", ("no repository", "unsloth/Nothing-GGUF"),
         lambda i, o: ["models", "pull", "unsloth/Nothing-GGUF", "tiny.gguf"], env=lambda hub: {"HF_ENDPOINT": hub}),
    # aha grpo --------------------------------------------------------------------------------------
    Case("grpo-missing-model", "grpo", ("/nowhere/model", "not found"), grpo(model="/nowhere/model"), terminal=True),
    Case("grpo-model-without-weights", "grpo", ("no-weights", "safetensors"), grpo(model="no-weights")),
    Case("grpo-corrupt-config", "grpo", ("config.json",), grpo(model="corrupt-config")),
    Case("grpo-model-with-truncated-weights", "grpo", ("model.safetensors", "truncated"), grpo(model="truncated")),
    Case("grpo-model-without-tokenizer", "grpo", ("no-tokenizer", "tokenizer"), grpo(model="no-tokenizer")),
    Case("grpo-model-with-corrupt-tokenizer", "grpo", ("tokenizer.json", "not valid JSON"),
         grpo(model="corrupt-tokenizer")),
    Case("grpo-model-is-a-file", "grpo", ("a-file",), grpo(model="a-file")),
    Case("grpo-no-model", "grpo", ("model",), grpo(model="")),
    Case("grpo-no-dataset", "grpo", ("dataset",), grpo(dataset="")),
    Case("grpo-missing-dataset", "grpo", ("nowhere.jsonl",), grpo(dataset="/nowhere/nowhere.jsonl")),
    Case("grpo-empty-dataset", "grpo", ("empty.jsonl",), grpo(dataset="empty.jsonl")),
    Case("grpo-dataset-with-a-broken-line", "grpo", ("broken.jsonl", "line 3"), grpo(dataset="broken.jsonl")),
    Case("grpo-dataset-is-a-folder", "grpo", ("empty-folder", "is a folder"), grpo(dataset="empty-folder")),
    Case("grpo-dataset-not-utf8", "grpo", ("not-utf8.jsonl", "UTF-8"), grpo(dataset="not-utf8.jsonl")),
    Case("grpo-dataset-without-answers", "grpo", ("answer", "--answer-column"), grpo(dataset="no-answer.jsonl")),
    Case("grpo-eval-without-held-out-rows", "grpo", ("eval_steps", "eval_dataset"),
         grpo("--eval-steps", "1", dataset="traces.jsonl")),
    Case("grpo-dataset-without-the-prompt-column", "grpo", ("prompt",), grpo(dataset="no-prompt.jsonl")),
    Case("grpo-unknown-reward", "grpo", ("nonsense",), grpo("--rewards", "nonsense")),
    Case("grpo-missing-reward-file", "grpo", ("nowhere.py",), grpo("--rewards", "/nowhere/nowhere.py:reward")),
    Case("grpo-reward-file-syntax-error", "grpo", ("syntax_error.py", "line 1"),
         grpo("--rewards", "{syntax_error.py}:reward")),
    Case("grpo-reward-function-missing", "grpo", ("reward_ok.py", "missing_function"),
         grpo("--rewards", "{reward_ok.py}:missing_function")),
    Case("grpo-reward-weights-mismatch", "grpo", ("reward_weights",), grpo("--reward-weights", "1", "2", "3")),
    Case("grpo-bad-toml", "grpo", ("bad.toml", "not valid TOML"), grpo("--config", "bad.toml")),
    Case("grpo-unknown-toml-key", "grpo", ("num_generationz",), grpo("--config", "unknown-key.toml")),
    Case("grpo-wrong-toml-type", "grpo", ("beta", "a number"), grpo("--config", "wrong-type.toml")),
    Case("grpo-missing-config", "grpo", ("nowhere.toml", "not found"), grpo("--config", "/nowhere/nowhere.toml")),
    Case("grpo-one-generation", "grpo", ("num_generations",), grpo("--num-generations", "1")),
    Case("grpo-negative-learning-rate", "grpo", ("learning_rate",), grpo("--learning-rate", "-1")),
    Case("grpo-zero-max-steps", "grpo", ("max_steps",), grpo("--max-steps", "0")),
    Case("grpo-top-p-above-1", "grpo", ("top_p",), grpo("--top-p", "2")),
    Case("grpo-unknown-device", "grpo", ("device", "tpu"), grpo("--device", "tpu")),
    Case("grpo-cuda-without-a-gpu", "grpo", ("cuda", "no CUDA GPU"), grpo("--device", "cuda"), without_gpu=True),
    Case("grpo-zero-temperature", "grpo", ("temperature",), grpo("--temperature", "0")),
    Case("grpo-resume-not-a-run", "grpo", ("empty-folder", "not a run directory"),
         lambda i, o: ["grpo", "--resume", str(i["empty-folder"])]),
    Case("grpo-resume-missing", "grpo", ("/nowhere/run", "not a run directory"),
         lambda i, o: ["grpo", "--resume", "/nowhere/run"]),
    Case("grpo-output-dir-holds-a-run", "grpo", ("already holds a run", "--resume"),
         lambda i, o: [*_earlier_run(o), *grpo()(i, o)]),
    Case("grpo-output-dir-is-a-file", "grpo", ("run", "not a folder"), existing("run", grpo())),
    Case("grpo-output-dir-not-writable", "grpo", ("cannot write",), unwritable(grpo(out="locked/run"))),
    Case("grpo-4bit-on-cpu", "grpo", ("4-bit", "CUDA"), grpo("--load-in-4bit")),
    # aha distill generate -------------------------------------------------------------------------
    Case("generate-teacher-without-kind", "generate", ("somewhere", "gguf:"), generate("somewhere"), terminal=True),
    Case("generate-unknown-teacher-kind", "generate", ("ftp",), generate("ftp:somewhere")),
    Case("generate-hf-teacher-missing", "generate", ("/nowhere/teacher",), generate("hf:/nowhere/teacher")),
    Case("generate-api-key-variable-unset", "generate", ("AHA_TEST_NO_SUCH_KEY",),
         generate(OPENAI_TEACHER, "--api-key-env", "AHA_TEST_NO_SUCH_KEY")),
    Case("generate-gguf-teacher-missing", "generate", ("nowhere.gguf",), generate("gguf:/nowhere/nowhere.gguf")),
    Case("generate-gguf-teacher-not-a-gguf", "generate", ("not-gguf.gguf", "GGUF"), generate("gguf:{not-gguf.gguf}")),
    Case("generate-openai-unreachable", "generate", ("cannot reach", "127.0.0.1:9"), generate(OPENAI_TEACHER)),
    Case("generate-missing-dataset", "generate", ("nowhere.jsonl",),
         generate(OPENAI_TEACHER, dataset="/nowhere/nowhere.jsonl")),
    Case("generate-dataset-without-the-prompt-column", "generate", ("prompt",),
         generate(OPENAI_TEACHER, dataset="no-prompt.jsonl")),
    Case("generate-zero-k", "generate", ("k",), lambda i, o: [*generate(OPENAI_TEACHER)(i, o), "-k", "0"]),
    Case("generate-zero-limit", "generate", ("limit",), lambda i, o: [*generate(OPENAI_TEACHER)(i, o), "--limit", "0"]),
    Case("generate-top-p-above-1", "generate", ("top_p",), generate(OPENAI_TEACHER, "--top-p", "2")),
    Case("generate-reward-file-syntax-error", "generate", ("syntax_error.py",),
         generate(OPENAI_TEACHER, "--reward", "{syntax_error.py}:reward")),
    Case("generate-output-not-writable", "generate", ("cannot write",),
         unwritable(generate(OPENAI_TEACHER, out="locked/traces.jsonl"))),
    Case("generate-unknown-reward", "generate", ("nonsense",), generate(OPENAI_TEACHER, "--reward", "nonsense")),
    Case("generate-output-is-a-folder", "generate", ("traces.jsonl", "is a folder"),
         existing("traces.jsonl", generate(OPENAI_TEACHER), folder=True)),
    Case("generate-foreign-output", "generate", ("traces.jsonl", "--force"),
         existing("traces.jsonl", generate(OPENAI_TEACHER))),
    Case("generate-output-under-a-file", "generate", ("a-file", "not a folder"),
         existing("a-file", generate(OPENAI_TEACHER, out="a-file/traces.jsonl"))),
    # aha distill sft / kd -------------------------------------------------------------------------
    Case("sft-missing-traces", "distill-sft", ("nowhere.jsonl",), distill("sft", traces="/nowhere/nowhere.jsonl"),
         terminal=True),
    Case("sft-traces-with-a-broken-line", "distill-sft", ("broken.jsonl", "line 3"), distill("sft", traces="broken.jsonl")),
    Case("sft-traces-without-thinking", "distill-sft", ("thinking",), distill("sft", traces="no-thinking.jsonl")),
    Case("sft-traces-is-a-folder", "distill-sft", ("empty-folder", "is a folder"), distill("sft", traces="empty-folder")),
    Case("sft-traces-not-utf8", "distill-sft", ("not-utf8.jsonl", "UTF-8"), distill("sft", traces="not-utf8.jsonl")),
    Case("sft-student-without-weights", "distill-sft", ("no-weights", "no weights"), distill("sft", student="no-weights")),
    Case("sft-zero-batch-size", "distill-sft", ("per_device_train_batch_size",),
         distill("sft", "--per-device-train-batch-size", "0")),
    Case("sft-output-dir-holds-a-run", "distill-sft", ("already holds a run",),
         lambda i, o: [*_earlier_run(o), *distill("sft")(i, o)]),
    Case("sft-empty-traces", "distill-sft", ("empty.jsonl",), distill("sft", traces="empty.jsonl")),
    Case("sft-no-traces", "distill-sft", ("--traces",), distill("sft", traces="")),
    Case("sft-missing-student", "distill-sft", ("/nowhere/student", "not found"), distill("sft", student="/nowhere/student")),
    Case("sft-resume-not-a-run", "distill-sft", ("empty-folder", "not a run directory"),
         lambda i, o: ["distill", "sft", "--resume", str(i["empty-folder"])]),
    Case("kd-missing-teacher", "distill-kd", ("/nowhere/teacher",), distill("kd", "--teacher", "/nowhere/teacher")),
    Case("kd-lmbda-above-1", "distill-kd", ("lmbda",), distill("kd", "--teacher", "student", "--lmbda", "2")),
    Case("kd-no-teacher", "distill-kd", ("teacher",), distill("kd")),
    Case("kd-teacher-with-another-tokenizer", "distill-kd", ("tokenizer",), distill("kd", "--teacher", "checkpoint")),
]


def _earlier_run(o: Path) -> list[str]:
    """Make out/run hold a run (its run.json) before the command runs; adds no argument."""
    (o / "run").mkdir()
    (o / "run" / "run.json").write_text(json.dumps({"kind": "grpo", "store_id": 99, "created_at": 0}))
    (o / "run" / "config.json").write_text("{}")
    return []


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under folder with its bytes (None for a folder)."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
            for path in sorted(folder.rglob("*"))}


def child(argv: list[str], env: dict, events: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *argv, *(["--events", "jsonl"] if events else [])],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def check_refused(case: Case, result: subprocess.CompletedProcess) -> str:
    """Exit 2 and one line on stderr naming the problem; returns the line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("aha: error: "), result.stderr[-3000:]
    line = result.stderr.strip()
    for word in case.words:
        assert word in line, (word, line)
    return line


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, inputs, hub, tmp_path):
    if case.without_gpu and Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has an NVIDIA GPU")
    out = tmp_path / "out"
    out.mkdir()
    argv = case.argv(inputs, out)
    before = snapshot(out)
    env = {"HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_DISABLE_TELEMETRY": "1", **case.env(hub)}
    forms = [True, False] if case.terminal else [True]
    for events in forms:
        result = child(argv, env, events)
        line = check_refused(case, result)
        if events:
            stream = [json.loads(text) for text in result.stdout.splitlines()]
            final = check_stream(stream, case.kind, run=False)
            assert [event["type"] for event in stream] == ["start", "error"], stream
            assert stream[0]["run_id"] is None, "a job refused at its checks is no run"
            assert final["exception"] is None and f"aha: error: {final['message']}" == line
        else:
            assert result.stdout == ""
        after = snapshot(out)
        assert after == before, f"the output folder changed: {sorted(set(after) ^ set(before))}"
        home = tmp_path / "aha-home"
        assert not [path for path in home.rglob("*") if path.is_file() and path.parent.name != "aha-home"], \
            "nothing under the data directory's runs/ or models/"
        if (home / "aha.db").exists():
            from engine.store import Store

            with Store() as store:
                assert store.list_runs() == [], "no run recorded"
    leftovers = [path for path in tmp_path.rglob("*") if any(mark in path.name for mark in SCRATCH)]
    assert leftovers == []


# Commands that are no job, and usage mistakes (argparse's): the same one line and exit 2, no events --------------

@dataclass(frozen=True)
class Mistake:
    id: str
    words: tuple[str, ...]
    argv: Callable[[dict], list[str]]


MISTAKES = [
    Mistake("usage-bad-number", ("--max-steps", "invalid int value", "aha grpo --help"),
            lambda i: ["grpo", "--max-steps", "abc", "--events", "jsonl"]),
    Mistake("usage-missing-arguments", ("required", "src", "-o/--output"), lambda i: ["export"]),
    Mistake("usage-unknown-command", ("nosuch", "invalid choice"), lambda i: ["nosuch"]),
    Mistake("usage-bad-choice", ("--keep", "invalid choice"),
            lambda i: ["distill", "generate", "--keep", "most", "--events", "jsonl"]),
    Mistake("usage-config-and-resume", ("--resume", "not allowed with", "--config"),
            lambda i: ["grpo", "--config", "a.toml", "--resume", "runs/x"]),
    Mistake("usage-pull-without-file", ("FILE",), lambda i: ["models", "pull", "unsloth/Tiny-R1-GGUF"]),
    Mistake("runs-show-unknown", ("999", "aha runs list"), lambda i: ["runs", "show", "999"]),
    Mistake("runs-resume-unknown", ("999", "aha runs list"), lambda i: ["runs", "resume", "999"]),
    Mistake("runs-rm-unknown", ("999",), lambda i: ["runs", "rm", "999", "--yes"]),
    Mistake("models-info-missing-file", ("/nowhere/m.gguf", "does not exist"),
            lambda i: ["models", "info", "/nowhere/m.gguf"]),
    Mistake("models-info-not-a-gguf", ("not-gguf.gguf", "not a GGUF file"),
            lambda i: ["models", "info", str(i["not-gguf.gguf"])]),
    Mistake("models-add-missing", ("/nowhere", "does not exist"), lambda i: ["models", "add", "/nowhere"]),
    Mistake("models-remove-unknown", ("nothing-like-it",), lambda i: ["models", "remove", "nothing-like-it"]),
    Mistake("chat-folder", ("empty-folder", "is a folder"), lambda i: ["chat", str(i["empty-folder"]), "-p", "hi"]),
    Mistake("chat-not-a-gguf", ("not-gguf.gguf", "not a GGUF file"),
            lambda i: ["chat", str(i["not-gguf.gguf"]), "-p", "hi"]),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[mistake.id for mistake in MISTAKES])
def test_a_mistake_outside_a_job_is_one_line_too(mistake, inputs, tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine.cli", *mistake.argv(inputs)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "HF_ENDPOINT": UNREACHABLE})
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("aha: error: "), result.stderr[-3000:]
    for word in mistake.words:
        assert word in result.stderr, (word, result.stderr)
    assert result.stdout == ""
    home = tmp_path / "aha-home"
    assert not [path for path in home.rglob("*") if path.is_file() and path.parent.name != "aha-home"]


# A disk that fills while the job writes (the free-space checks passed) -----------------------------------------

def test_a_disk_that_fills_during_an_export_is_one_line_and_leaves_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    import errno

    from engine import cli

    def full(fout, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    src = checkpoint("qwen2")
    monkeypatch.setattr("engine.export.gguf_writer.write_block", full)
    out = tmp_path / "out" / "m.gguf"
    capsys.readouterr()  # what building the fixture printed
    assert cli.main(["export", str(src), "-o", str(out), "--events", "jsonl"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"aha: error: cannot write {out}: the disk is full; free some space or write elsewhere.\n"
    final = check_stream([json.loads(line) for line in captured.out.splitlines()], "export", run=True)
    assert final["type"] == "error" and final["exception"] is None
    assert not out.parent.exists()


def test_a_disk_that_fills_during_trace_generation_is_one_line(adder, tmp_path, monkeypatch, capsys):
    import errno

    from engine import cli

    def full(stream, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("engine.distill.generate._append_line", full)
    out = tmp_path / "traces.jsonl"
    assert cli.main(["distill", "generate", "--teacher", adder, "--model", "adder", "--dataset", "addition",
                     "--limit", "2", "-k", "1", "-o", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"aha: error: cannot write {out}: the disk is full; free some space or write elsewhere."
    assert not any("Traceback" in line for line in err)
