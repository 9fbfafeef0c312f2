"""`aha demo`: the stages of the DeepSeek-R1 recipe in order, each a real run of the real command's engine
function (train_sft_on_traces, evaluate, grpo.train, export, Library.add, ChatModel.stream), on the tiny
model of engine.demo.model with the settings of engine.demo.recipe.

`run_demo` makes the demo's own run (kind "demo", its directory `out/`) and puts each stage's run beside it:
out/model, out/cold-start, out/eval-cold-start, out/grpo, out/eval-grpo, out/export/<name>.gguf. A stage's
events reach the job through `StageEvents`: the inner run's `start` becomes a `log` with `stage_run`, its
`progress` takes the demo stage's name (the inner stage moves to `phase`), and each stage ends with a `log`
carrying `stage_done` (its seconds and key numbers). The result is also out/demo.json. Knows the order of
the stages and what to carry from one to the next; nothing of how any of them trains, evaluates or exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from engine.demo.recipe import DEFAULT, SMOKE, DemoRecipe
from engine.errors import AhaError, Cancelled
from engine.jobs import CancelToken, OnEvent, Progress, format_seconds, ignore, make_event
from engine.pipeline.events import StageEvents, StageHeartbeat, StageTerminalView

STAGES = ("model", "cold-start", "eval-cold-start", "grpo", "eval-grpo", "export", "chat")
TITLES = {"model": "model", "cold-start": "cold start", "eval-cold-start": "evaluate the cold start",
          "grpo": "GRPO", "eval-grpo": "evaluate GRPO", "export": "export", "chat": "chat"}
RESULT_FILE = "demo.json"
EXPORT_TYPE = "q8_0"  # written directly (no llama.cpp quantizer), near-lossless for the agreement check


@dataclass(frozen=True)
class DemoConfig:
    """The demo run's settings as the store and config.json record them (the stages' own settings are in
    their runs' config.json; the whole recipe is in demo.json)."""

    seed: int = 0                   # the model's initial weights and every stage's sampling
    recipe: str = "default"         # default (the real demo), smoke (a few steps: the plumbing) or custom
    ollama: str | None = None       # register the GGUF with the local Ollama under this name
    output_dir: str | None = None   # the demo's folder; the stage runs are made inside it


def recipe_name(recipe: DemoRecipe) -> str:
    return "default" if recipe == DEFAULT else "smoke" if recipe == SMOKE else "custom"


def default_out(seed: int) -> Path:
    """<data dir>/demo/seed-S-<n>, the first n with no folder (or an empty one) there."""
    from engine.paths import subdir

    base, number = subdir("demo"), 1
    while (base / f"seed-{seed}-{number}").exists() and any((base / f"seed-{seed}-{number}").iterdir()):
        number += 1
    return base / f"seed-{seed}-{number}"


def check_out(out: Path) -> None:
    """The demo's folder must be new (or empty): its stage runs are made inside it."""
    if out.exists() and not out.is_dir():
        raise AhaError(f"--out {out} is a file; give a new folder for the demo (or leave --out out)")
    if out.is_dir() and any(out.iterdir()):
        raise AhaError(f"--out {out} is not empty; use another --out or remove it (leave --out out for a new "
                       "folder under the data directory)")


# The demo ------------------------------------------------------------------------------------------

def run_demo(out: Path | str, *, seed: int = 0, recipe: DemoRecipe = DEFAULT, ollama: str | None = None,
             on_event: OnEvent = ignore, cancel: CancelToken | None = None) -> dict:
    """Run the seven stages into `out` (a new or empty folder) and return the result (also out/demo.json):
    {"status", "run_id", "run_dir", "seed", "recipe", "stages": [{"name", "seconds", "run_id", "run_dir"}],
    "table": {"cold_start": {...}, "grpo": {...}}, "gain_points", "comparison_note", "gguf", "modelfile",
    "ollama", "agreement": {"problems", "same", "share"}, "chat": {"question", "thinking", "answer"},
    "seconds"}. A cancel ends the stage working (its run `cancelled`) and the demo with status cancelled."""
    from engine.train.runs import Run

    out = Path(out).expanduser()
    check_out(out)
    cancel = cancel or CancelToken()
    run = Run.create("demo", DemoConfig(seed=seed, recipe=recipe_name(recipe), ollama=ollama,
                                        output_dir=str(out)), on_event)
    run.set_status("running")
    demo = _Demo(run, out.resolve(), seed, recipe, ollama, cancel)
    try:
        demo.run_stages()
    except Cancelled as stopped:  # a stage that stops by raising (the export): what is written stays
        demo.result.update(status="cancelled", message=str(stopped))
    except BaseException as error:
        demo.result["status"] = "cancelled" if isinstance(error, KeyboardInterrupt) else "error"
        demo.finish()
        raise
    finally:
        demo.heartbeat.close()
    demo.finish()
    return demo.result


class _Demo:
    """One demo's state as it goes from stage to stage (run_demo's; the steps are its methods)."""

    def __init__(self, run, out: Path, seed: int, recipe: DemoRecipe, ollama: str | None, cancel: CancelToken):
        self.run, self.out, self.seed, self.recipe, self.ollama, self.cancel = run, out, seed, recipe, ollama, cancel
        self.heartbeat = StageHeartbeat()
        self.started = time.monotonic()
        self.result: dict[str, Any] = {
            "status": "running", "run_id": run.store_id, "run_dir": str(out), "seed": seed,
            "recipe": {"name": recipe_name(recipe), **dataclasses.asdict(recipe)}, "stages": [], "table": {},
            "gain_points": None, "comparison_note": None, "gguf": None, "modelfile": None, "ollama": None,
            "agreement": None, "chat": None, "seconds": None}

    # the order of the stages
    def run_stages(self) -> None:
        model = self.stage("model", self.make_model)
        sft_model = self.stage("cold-start", self.cold_start, model)
        if sft_model is None or self.stopped():
            return
        self.stage("eval-cold-start", self.evaluate, (f"hf:{sft_model}",))
        if self.stopped():
            return
        trained = self.stage("grpo", self.grpo, sft_model)
        if trained is None or self.stopped():
            return
        self.stage("eval-grpo", self.evaluate, (f"hf:{sft_model}", _spec(sft_model, trained)))
        if self.stopped():
            return
        with llama_warnings(self.run.emit):
            gguf = self.stage("export", self.export, sft_model, trained)
            if gguf is None or self.stopped():
                return
            self.stage("chat", self.chat, gguf)
        if not self.stopped():
            self.result["status"] = "complete"

    def stopped(self) -> bool:
        if self.cancel.cancelled or self.result["status"] == "cancelled":
            self.result["status"] = "cancelled"
            return True
        return False

    def stage(self, name: str, work, *args):
        """Run one stage: its events through StageEvents, then its `stage_done` log and its line in the
        result (written to demo.json at once, so a window or a person sees how far the demo got)."""
        events = StageEvents(name, self.run.emit, self.heartbeat, TITLES[name])
        started = time.monotonic()
        value, numbers, summary = work(events, *args)
        seconds = round(time.monotonic() - started, 3)
        stage_run = events.run or {}
        self.result["stages"].append({"name": name, "seconds": seconds, "run_id": stage_run.get("run_id"),
                                      "run_dir": stage_run.get("run_dir"), "status": numbers.get("status", "complete")})
        if numbers.get("status") == "cancelled":
            self.result["status"] = "cancelled"
        index = STAGES.index(name) + 1
        command = f" · {numbers['command']}" if numbers.get("command") else ""
        message = f"[{index}/{len(STAGES)}] {TITLES[name]} {format_seconds(seconds)} — {summary}{command}"
        self.run.emit(make_event("log", message=message, stage=name,
                                 stage_done={"seconds": seconds, **numbers}))
        self.write()
        return value

    def write(self) -> None:
        from engine.train.runs import write_json

        self.result["seconds"] = round(time.monotonic() - self.started, 3)
        with contextlib.suppress(OSError):
            write_json(self.out / RESULT_FILE, self.result)

    def finish(self) -> None:
        if self.result["status"] == "running":
            self.result["status"] = "cancelled" if self.cancel.cancelled else "error"
        self.write()
        with contextlib.suppress(Exception):
            self.run.artifact("demo", self.out / RESULT_FILE)
            self.run.set_status(self.result["status"])
        self.run.close()

    # stage 1
    def make_model(self, events: StageEvents):
        from engine.demo.model import make_demo_model

        progress = Progress(events, "model", 2, unit="steps", label="loading torch and transformers")
        progress.update(0, force=True)
        started = time.monotonic()
        import torch  # noqa: F401 - the first stage pays the libraries' import: said apart below
        from transformers import Qwen2ForCausalLM  # noqa: F401

        libraries_s = round(time.monotonic() - started, 3)
        progress.label = "building the tiny model"
        progress.update(1, force=True)
        folder = make_demo_model(self.out / "model", seed=self.seed, spec=self.recipe.model)
        progress.update(2, force=True)
        parameters = parameter_count(folder)
        spec = self.recipe.model
        numbers = {"path": str(folder), "parameters": parameters, "layers": spec.layers, "hidden": spec.hidden,
                   "libraries_seconds": libraries_s}
        layers = f"{spec.layers} layer{'s' if spec.layers != 1 else ''}"
        return folder, numbers, (f"a random Qwen2, {parameters / 1e6:.2f}M parameters ({layers}, hidden "
                                 f"{spec.hidden}), byte-level BPE ({format_seconds(libraries_s)} of it loading "
                                 f"torch and transformers) · {folder}")

    # stage 2
    def cold_start(self, events: StageEvents, model: Path):
        from engine.demo.recipe import command_line, sft_config
        from engine.distill.traces import train_sft_on_traces

        config = sft_config(self.recipe, model, self.out / "cold-start", self.seed)
        result = train_sft_on_traces(config, on_event=events, cancel=self.cancel)
        accuracy = result.get("eval_accuracy")
        numbers = {"status": result["status"], "steps": result["step"], "heldout_accuracy": accuracy,
                   "model": result.get("model"), "command": command_line("distill-sft", config)}
        if result["status"] != "complete":
            return None, numbers, f"{result['status']} at step {result['step']}"
        if not result.get("model"):
            raise AhaError("the cold start saved an adapter, not a model: the demo recipe must train it fully "
                           "(use_peft false)")
        shown = f"held-out accuracy {accuracy * 100:.0f}% after " if accuracy is not None else ""
        return Path(result["model"]), numbers, f"{shown}{result['step']} steps"

    # stages 3 and 5
    def evaluate(self, events: StageEvents, models: tuple[str, ...]):
        from engine.demo.recipe import command_line, eval_config
        from engine.eval.runner import evaluate

        name = "eval-cold-start" if len(models) == 1 else "eval-grpo"
        config = eval_config(self.recipe, models, self.out / name, self.seed)
        result = evaluate(config, on_event=events, cancel=self.cancel)
        report = result["eval"]
        rows = [_table_row(entry) for entry in report["models"]]
        numbers: dict[str, Any] = {"status": result["status"], "k": report["k"], "problems": report["problems"],
                                   "models": rows, "command": command_line("eval", config)}
        if result["status"] != "complete":
            return None, numbers, result["status"]
        k = report["k"]
        if len(rows) == 1:
            row = rows[0]
            return report, numbers, (f"pass@1 {_percent(row['pass@1'])}, cons@{k} {_percent(row['cons@k'])}, "
                                     f"{row['thinking_tokens_mean']:.0f} think tokens ({report['problems']} "
                                     f"problems × {k})")
        comparison = (report.get("comparisons") or [{}])[0]
        gain = round((rows[1]["pass@1"] - rows[0]["pass@1"]) * 100, 1)
        self.result.update(table={"cold_start": rows[0], "grpo": rows[1]}, gain_points=gain,
                           comparison_note=comparison.get("note"))
        numbers.update(cold_start=rows[0], grpo=rows[1], gain_points=gain, comparison_note=comparison.get("note"))
        return report, numbers, (f"pass@1 {_percent(rows[0]['pass@1'])} → {_percent(rows[1]['pass@1'])} "
                                 f"({gain:+.1f} points), cons@{k} {_percent(rows[0]['cons@k'])} → "
                                 f"{_percent(rows[1]['cons@k'])}")

    # stage 4
    def grpo(self, events: StageEvents, sft_model: Path):
        from engine.demo.recipe import command_line, grpo_config
        from engine.train.grpo import train

        config = grpo_config(self.recipe, sft_model, self.out / "grpo", self.seed)
        result = train(config, on_event=events, cancel=self.cancel)
        last = events.last_metrics
        numbers = {"status": result["status"], "steps": result["step"], "reward": last.get("reward"),
                   "accuracy": last.get("accuracy"), "heldout_accuracy": result.get("eval_accuracy"),
                   "adapter": result.get("adapter"), "model": result.get("model"),
                   "command": command_line("grpo", config)}
        if result["status"] != "complete":
            return None, numbers, f"{result['status']} at step {result['step']}"
        reward = f", last reward {last['reward']:.3f}" if last.get("reward") is not None else ""
        accuracy = f", rollout accuracy {last['accuracy'] * 100:.0f}%" if last.get("accuracy") is not None else ""
        trained = Path(result["adapter"]) if result.get("adapter") else Path(result["model"])
        return trained, numbers, f"{result['step']} steps{reward}{accuracy}"

    # stage 6
    def export(self, events: StageEvents, sft_model: Path, trained: Path):
        from engine.export.pipeline import export_as_run
        from engine.models import Library

        adapter = trained if (trained / "adapter_config.json").is_file() else None
        source = sft_model if adapter is not None else trained
        name = self.out.name if "demo" in self.out.name else f"aha-demo-{self.out.name}"  # the library's name
        gguf = self.out / "export" / f"{name}.gguf"
        settings = {"src": str(source), "output": str(gguf), "type": EXPORT_TYPE,
                    "adapter": str(adapter) if adapter else None, "ollama": self.ollama, "check": True,
                    "demo_run": self.run.store_id}
        result = export_as_run(source, gguf, EXPORT_TYPE, settings=settings,
                               started=lambda run_id: events.started("export", run_id, None), on_event=events,
                               cancel=self.cancel, adapter=adapter, ollama=self.ollama, check=True)
        check = result.get("check") or {}
        Library().add(result["gguf"], origin="demo")
        agreement = self.check_agreement(events, source, adapter, Path(result["gguf"]))
        ollama = result.get("ollama")
        self.result.update(gguf=str(result["gguf"]), modelfile=str(result["modelfile"]) if result.get("modelfile")
                           else None, ollama=self.ollama if ollama else None, agreement=agreement)
        numbers = {"gguf": str(result["gguf"]), "modelfile": self.result["modelfile"], "type": EXPORT_TYPE,
                   "size": Path(result["gguf"]).stat().st_size, "check_passed": check.get("passed"),
                   "agreement": agreement, "ollama": self.result["ollama"],
                   "command": f"aha export {source} -o {gguf} --type {EXPORT_TYPE}"
                              + (f" --adapter {adapter}" if adapter else "") + " --check"}
        if agreement is None:
            return None, {**numbers, "status": "cancelled"}, "cancelled during the agreement check"
        checked = "check passed" if check.get("passed") else "check FAILED (see the log)" if check else "unchecked"
        return Path(result["gguf"]), numbers, (
            f"{Path(result['gguf']).name} ({EXPORT_TYPE}, {_size(numbers['size'])}), {checked}, greedy answers "
            f"agree with the HF model on {agreement['same']} of {agreement['problems']} held-out problems, "
            "in the model library" + (f", in Ollama as {self.ollama}" if self.result["ollama"] else ""))

    def check_agreement(self, events: StageEvents, source: Path, adapter: Path | None, gguf: Path) -> dict | None:
        """Greedy answers of the HF model (+ adapter) and of the GGUF on the evaluation's held-out problems."""
        from engine.demo.recipe import eval_config
        from engine.eval.datasets import eval_rows

        config = eval_config(self.recipe, ("hf:" + str(source),), self.out / "eval-grpo", self.seed)
        rows = eval_rows(config.dataset, limit=config.limit, prompt_column=config.prompt_column,
                         answer_column=config.answer_column, template=config.template, seed=0)
        progress = Progress(events, "agreement", 2 * len(rows), unit="answers", label="greedy HF vs GGUF answers")
        hf = greedy_answers(_spec(source, adapter), [row["prompt"] for row in rows], config.max_tokens, progress,
                            self.cancel)
        if hf is None:
            return None
        llama = greedy_answers(f"gguf:{gguf}", [row["prompt"] for row in rows], config.max_tokens, progress,
                               self.cancel)
        if llama is None:
            return None
        return agreement(hf, llama)

    # stage 7
    def chat(self, events: StageEvents, gguf: Path):
        from engine.chat.runtime import ChatModel

        question = self.recipe.chat_question
        progress = Progress(events, "chat", 1, unit="answers", label=f"asking {gguf.name}")
        progress.update(0, force=True)
        parts: dict[str, list[str]] = {"thinking": [], "answer": []}
        stats: dict = {}
        with ChatModel(gguf, n_ctx=self.recipe.model.max_positions) as model:
            for event in model.stream([{"role": "user", "content": question}], max_tokens=self.recipe.eval_max_tokens,
                                      seed=self.seed, cancel=self.cancel):
                if event.kind == "done":
                    stats = event.stats or {}
                else:
                    parts[event.kind].append(event.text)
        progress.update(1, force=True)
        chat = {"question": question, "thinking": "".join(parts["thinking"]).strip(),
                "answer": "".join(parts["answer"]).strip(), "stop_reason": stats.get("stop_reason"),
                "tokens_per_s": stats.get("tokens_per_s")}
        self.result["chat"] = chat
        status = "cancelled" if stats.get("stop_reason") == "cancelled" else "complete"
        return chat, {**chat, "status": status, "command": f"aha chat {gguf} -p {json.dumps(question)}"}, (
            f"{question} → thought {len(chat['thinking'].splitlines())} lines, answered {chat['answer'] or '(nothing)'}")


@contextlib.contextmanager
def llama_warnings(emit: OnEvent):
    """llama.cpp's warnings and errors as `log` warnings (after the block) instead of lines on stderr, less
    the one this model always gets: its 256 positions are fewer than the contexts the export check and the
    batched decoding make ("n_ctx_seq (768) > n_ctx_train (256)"), which no reply of the demo comes near."""
    from engine.export.quantize import log_line, quiet_llama_log

    with quiet_llama_log() as kept:
        try:
            yield
        finally:
            for message in kept["warnings"] + kept["errors"]:
                if "n_ctx_train" not in message:
                    emit(make_event("log", level="warning", message=f"llama.cpp: {log_line(message)}"))


def _spec(base: Path, trained: Path | None) -> str:
    """The hf: spec of a model: the trained full model, or the base with a LoRA adapter."""
    if trained is None:
        return f"hf:{base}"
    return f"hf:{base}+{trained}" if (Path(trained) / "adapter_config.json").is_file() else f"hf:{trained}"


# The agreement check -------------------------------------------------------------------------------

def greedy_answers(spec: str, prompts: Sequence[str], max_tokens: int, progress: Progress | None = None,
                   cancel: CancelToken | None = None) -> list[str | None] | None:
    """The final answer (as the verifier extracts it; None: none, or the thought never closed) of each
    prompt's greedy reply from a model spec (hf:… or gguf:…, engine.eval.models); None when cancelled."""
    from engine.distill.teachers import Sampling
    from engine.eval.models import open_model
    from engine.eval.runner import thought_unclosed
    from engine.train.answers import extract_final_answer

    answers: list[str | None] = [None] * len(prompts)
    done = 0
    teacher = open_model(spec, n_ctx=max_tokens + 256)
    try:
        for index, samples in teacher.generate(list(prompts), 1, Sampling(0.0, 1.0, max_tokens, 0), cancel):
            sample = samples[0]
            answers[index] = None if thought_unclosed(sample) else extract_final_answer(sample.raw, sample.prefilled)
            done += 1
            if progress is not None:
                progress.advance(1, phase=spec.partition(":")[0])
    finally:
        teacher.close()
    if done < len(prompts):
        return None
    return answers


def agreement(reference: Sequence[str | None], other: Sequence[str | None]) -> dict:
    """How many problems two models answer the same (both with no answer counts as the same).

    Example:
    >>> agreement(["12", "7", None, "3"], ["12", "8", None, "3"])
    {'problems': 4, 'same': 3, 'share': 0.75}
    """
    same = sum(left == right for left, right in zip(reference, other, strict=True))
    return {"problems": len(reference), "same": same, "share": round(same / len(reference), 4) if reference else None}


# Numbers and text ----------------------------------------------------------------------------------

def parameter_count(folder: Path) -> int:
    """Parameters in a checkpoint's safetensors files, read from their headers (tied weights once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = weights.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def _table_row(entry: Mapping[str, Any]) -> dict:
    return {"label": entry.get("label"), "pass@1": entry.get("pass@1"), "cons@k": entry.get("cons@k"),
            "thinking_tokens_mean": entry.get("thinking_tokens_mean")}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _size(size: int) -> str:
    from engine.jobs import format_bytes

    return format_bytes(size)


def table_text(result: Mapping[str, Any]) -> str:
    """The demo's end on a terminal: the before/after table, the agreement, the chat and where everything is.

                  pass@1  cons@4  think tokens
    cold start     23.8%   30.0%            31
    GRPO           44.5%   52.0%            30
    gain: +20.7 points of held-out pass@1 (p < 0.001)
    """
    lines: list[str] = []
    table = result.get("table") or {}
    recipe = result.get("recipe") or {}
    k = recipe.get("eval_k", "k")
    if table:
        rows = [("", "pass@1", f"cons@{k}", "think tokens")]
        for name, key in (("cold start", "cold_start"), ("GRPO", "grpo")):
            row = table.get(key)
            if row:
                think = row.get("thinking_tokens_mean")
                rows.append((name, _percent(row.get("pass@1")), _percent(row.get("cons@k")),
                             "–" if think is None else f"{think:.0f}"))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        lines += ["  ".join(cell.ljust(widths[0]) if column == 0 else cell.rjust(widths[column])
                            for column, cell in enumerate(row)).rstrip() for row in rows]
        if result.get("gain_points") is not None:
            gain = f"{result['gain_points']:+.1f} points"
            note = (result.get("comparison_note") or "").removeprefix(f"{gain}, ")  # "p < 0.001", or "within noise (…)"
            lines.append(f"gain: {gain} of held-out pass@1" + (f" ({note})" if note else ""))
    agreement_numbers = result.get("agreement")
    if agreement_numbers:
        lines.append(f"the GGUF's greedy answers agree with the HF model's on {agreement_numbers['same']} of "
                     f"{agreement_numbers['problems']} held-out problems ({agreement_numbers['share'] * 100:.0f}%)")
    chat = result.get("chat")
    if chat:
        lines += ["", f"chat: {chat['question']}", "  <think>"]
        lines += [f"  {line}" for line in (chat.get("thinking") or "").splitlines()]
        lines += ["  </think>", f"  {chat.get('answer') or '(no answer)'}"]
    where = [("demo run", result.get("run_dir"))]
    where += [(stage["name"], stage.get("run_dir")) for stage in result.get("stages", []) if stage.get("run_dir")]
    where += [("GGUF", result.get("gguf")), ("Modelfile", result.get("modelfile"))]
    where = [(name, path) for name, path in where if path]
    if where:
        width = max(len(name) for name, _ in where)
        lines += ["", "written:"] + [f"  {name:{width}}  {path}" for name, path in where]
    if result.get("gguf"):
        lines.append(f"chat with it: aha chat {result['gguf']}")
    if result.get("seconds") is not None:
        lines.append(f"{result.get('status', 'complete')} in {format_seconds(result['seconds'])}")
    return "\n".join(lines)


class TerminalView(StageTerminalView):
    """The demo on a terminal (StageTerminalView with the demo's stage titles)."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream, TITLES)
