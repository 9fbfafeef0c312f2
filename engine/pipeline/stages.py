"""The stage kinds of `aha pipeline`: for each, the engine function its command runs (train_sft_on_traces,
train_kd_on_traces, grpo.train, run_generation, evaluate, export_as_run) called with the stage's resolved
settings in the stage's folder, as a new run or continuing the one there, and what it gives later stages
(its outputs), its key metric and its one-line summary. The order of the stages and the references are
engine.pipeline.runner's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import AhaError
from engine.pipeline.spec import StageSpec, config_class

if TYPE_CHECKING:
    from engine.pipeline.runner import _Pipeline, _StageEvents


@dataclass
class StageOutcome:
    """What a stage's run ended with, for the pipeline's state."""

    status: str                          # complete, cancelled
    outputs: dict[str, Any]
    metric: dict[str, Any] | None = None
    summary: str | None = None
    report: dict[str, Any] | None = None


# The stage kinds --------------------------------------------------------------------------------

def _training(pipeline: _Pipeline, stage: StageSpec, settings: dict, events: _StageEvents) -> StageOutcome:
    from engine.store import Store
    from engine.train.config import load_config

    train = _trainer(stage.kind)
    out = pipeline.dir / stage.name
    if (out / "run.json").is_file():
        info = json.loads((out / "run.json").read_text(encoding="utf-8"))
        finished = _final_output(info.get("store_id"))
        if finished is not None:  # it ended before the state said so: adopt it
            result = {"status": "complete", "run_dir": str(out), **finished}
            events.started(stage.run_kind, info.get("store_id"), str(out.resolve()))
        else:
            result = train(resume=str(out), on_event=events, cancel=pipeline.cancel)
    else:
        shutil.rmtree(out, ignore_errors=True)  # a folder with no run in it: killed before the run existed
        config = load_config(config_class(stage.kind), None, {**settings, "output_dir": str(out)})
        result = train(config, on_event=events, cancel=pipeline.cancel)
    base = json.loads((out / "config.json").read_text(encoding="utf-8")).get("model")
    outputs = {"model": result.get("model"), "adapter": result.get("adapter"), "base": base,
               "run_dir": str(out.resolve())}
    metric = None
    if events.run and events.run.get("run_id") is not None:
        with Store() as store:
            metric = _key_metric(store, events.run["run_id"])
    status = "complete" if result["status"] == "complete" else "cancelled"
    summary = f"{result.get('step', '?')} steps" + (f", {metric['label']} {metric['text']}" if metric else "")
    return StageOutcome(status, outputs, metric, summary if status == "complete" else f"{status} at step "
                                                                                       f"{result.get('step')}")


def _generate(pipeline: _Pipeline, stage: StageSpec, settings: dict, events: _StageEvents) -> StageOutcome:
    from engine.distill.generate import GenerateConfig, run_generation
    from engine.train.config import load_config

    out = pipeline.dir / stage.name
    out.mkdir(parents=True, exist_ok=True)
    traces = out / "traces.jsonl"
    config = load_config(GenerateConfig, None, {**settings, "output": str(traces)})
    stats = run_generation(config, on_event=events, cancel=pipeline.cancel,
                           command={"pipeline": pipeline.run.store_id, "stage": stage.name})
    if stats.status == "incomplete":
        raise AhaError(f"stage {stage.name!r}: the teacher stopped answering after {stats.prompts_done} prompts; "
                       f"`aha pipeline resume {pipeline.dir}` continues it")
    status = "complete" if stats.status == "complete" else "cancelled"
    if status == "complete" and not stats.kept:
        raise AhaError(f"stage {stage.name!r} kept none of {stats.samples} samples (see {traces.name.removesuffix('.jsonl')}"
                       f".rejected.jsonl for why): train the model it samples further, or loosen its rewards, "
                       "then start the pipeline again")
    share = stats.kept / stats.samples if stats.samples else None
    metric = {"label": "kept", "value": share, "text": f"{stats.kept} of {stats.samples}"}
    summary = (f"kept {stats.kept} of {stats.samples} samples ({stats.acceptance_rate:.0%} accepted)"
               + (f"; {stats.skipped} prompts were done before" if stats.skipped else ""))
    return StageOutcome(status, {"traces": str(traces), "run_dir": str(out.resolve())}, metric, summary)


def _eval(pipeline: _Pipeline, stage: StageSpec, settings: dict, events: _StageEvents) -> StageOutcome:
    from engine.eval.runner import EvalConfig, evaluate
    from engine.train.config import load_config

    out = pipeline.dir / stage.name
    settings = {**settings, "models": tuple(settings.get("models") or ())}
    config = load_config(EvalConfig, None, {**settings, "output_dir": str(out)})
    result = evaluate(config, on_event=events, cancel=pipeline.cancel)
    report = result["eval"]
    rows = report["models"]
    status = "complete" if result["status"] == "complete" else "cancelled"
    outputs = {"eval": str(out / "eval.json"), "run_dir": str(out.resolve())}
    if status != "complete" or not rows:
        return StageOutcome(status, outputs, None, status)
    last = rows[-1]
    metric = {"label": "pass@1", "value": last.get("pass@1"), "text": _percent(last.get("pass@1"))}
    if len(rows) == 1:
        return StageOutcome(status, outputs, metric, f"{last['label']}: pass@1 {_percent(last.get('pass@1'))}",
                            report={**report, "stage": stage.name})
    first = rows[0]
    comparison = (report.get("comparisons") or [{}])[-1]
    gain = round((last["pass@1"] - first["pass@1"]) * 100, 1)
    summary = (f"pass@1 {first['label']} {_percent(first['pass@1'])} → {last['label']} {_percent(last['pass@1'])} "
               f"({gain:+.1f} points; {comparison.get('note') or 'no note'})")
    return StageOutcome(status, outputs, {**metric, "gain_points": gain}, summary,
                        report={**report, "stage": stage.name, "baseline": first["label"], "gain_points": gain})


def _export(pipeline: _Pipeline, stage: StageSpec, settings: dict, events: _StageEvents) -> StageOutcome:
    from engine.export.pipeline import export_as_run

    if not settings.get("src"):
        raise AhaError(f"stage {stage.name!r}: an export needs src (e.g. src = \"@rl\")")
    out = Path(settings.get("output") or pipeline.dir / stage.name / f"{pipeline.spec.name}.gguf").expanduser()
    out_type = settings.get("type", "q8_0")
    result = export_as_run(settings["src"], out, out_type, settings={**settings, "output": str(out),
                                                                     "type": out_type},
                           started=lambda run_id: events.started("export", run_id, None), on_event=events,
                           cancel=pipeline.cancel, adapter=settings.get("adapter"), ollama=settings.get("ollama"),
                           num_ctx=settings.get("num_ctx"), force=True, check=bool(settings.get("check")))
    gguf = Path(result["gguf"])
    size = gguf.stat().st_size
    check = result.get("check") or {}
    checked = "" if not check else ", check passed" if check.get("passed") else ", check FAILED (see the log)"
    from engine.jobs import format_bytes

    return StageOutcome("complete", {"gguf": str(gguf), "modelfile": str(result["modelfile"]) if
                                     result.get("modelfile") else None},
                        {"label": "size", "value": size, "text": format_bytes(size)},
                        f"{gguf.name} ({out_type}, {format_bytes(size)}){checked}")


RUNNERS = {"sft": _training, "kd": _training, "grpo": _training, "generate": _generate, "eval": _eval,
           "export": _export}


def _trainer(kind: str):
    if kind == "sft":
        from engine.distill.traces import train_sft_on_traces

        return train_sft_on_traces
    if kind == "kd":
        from engine.distill.kd import train_kd_on_traces

        return train_kd_on_traces
    from engine.train.grpo import train

    return train


def _final_output(run_id: int | None) -> dict[str, str] | None:
    """The final adapter or model of a training run that saved one ({"adapter": path} or {"model": path}): the
    artifact is recorded after the files are written, so a save cut short is not taken for a final output."""
    from engine.store import Store

    if run_id is None:
        return None
    with Store() as store:
        for artifact in reversed(store.run_artifacts(run_id)):
            if artifact["kind"] in ("adapter", "model") and Path(artifact["path"]).parent.name == "final":
                return {artifact["kind"]: artifact["path"]}
    return None


def _key_metric(store, run_id: int) -> dict[str, Any] | None:
    from engine.run_index import key_metric, metric_text, summarize

    name, label, value = key_metric(store, summarize(store.get_run(run_id)))
    if name is None:
        return None
    return {"label": label, "value": value, "text": metric_text(name, value)}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"
