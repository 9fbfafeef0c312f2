"""`aha pipeline run` and `aha pipeline resume`: the stages of a pipeline file in order, each a real run of its
command's engine function (train_sft_on_traces, train_kd_on_traces, grpo.train, run_generation, evaluate,
export), made a child of the pipeline's own run (kind "pipeline") in the store.

The pipeline's directory holds pipeline.toml (the file as started), config.json (with the --set overrides),
pipeline.json (engine.pipeline.state) and one folder per stage, named after it, which is that stage's run
directory. A stage's references are resolved when it starts, from the outputs earlier stages recorded; a
training stage's model input that is a LoRA run is first merged into a full checkpoint (<stage>/merged).

Resume: a stage whose state is complete is never redone; one whose run finished but whose state was not
written (killed in between) is adopted from its run; one that was working continues as its command resumes:
a training run from its last checkpoint (`resume=`), a trace generation skipping the prompts it wrote, an
evaluation skipping the problems done, an export written again (its output is atomic). A stage killed before
its run existed starts afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import AhaError, Cancelled
from engine.jobs import CancelToken, OnEvent, format_seconds, ignore, make_event
from engine.pipeline.events import StageEvents, StageHeartbeat
from engine.pipeline.spec import (
    DEMO_MODEL,
    FIELDS,
    TRAINING,
    PipelineSpec,
    Reference,
    StageSpec,
    apply_sets,
    load_pipeline,
    parse_pipeline,
    parse_reference,
    parse_set,
    read_toml,
)
from engine.pipeline.stages import RUNNERS
from engine.pipeline.state import FORMAT, new_stage, read_state, write_state

PIPELINE_FILE = "pipeline.toml"
BASE_DIR = "base"  # where a "demo" base model is built


@dataclass(frozen=True)
class PipelineConfig:
    """The pipeline run's settings as the store and config.json record them (each stage's are in its run)."""

    file: str = ""                  # the pipeline file it was started from
    name: str = ""
    model: str | None = None        # --model: the base model, instead of the file's
    sets: tuple[str, ...] = ()      # --set overrides, in order
    output_dir: str | None = None   # the pipeline's folder (unset: <data dir>/runs/pipeline-<id>)


def saved_spec(target: str) -> PipelineSpec:
    """The pipeline the run `target` (its id or directory) runs: its saved file with its saved overrides."""
    return _saved_spec(_pipeline_dir(target))[0]


def run_pipeline(file: str, *, sets: Sequence[str] = (), model: str | None = None, output_dir: str | None = None,
                 on_event: OnEvent = ignore, cancel: CancelToken | None = None) -> dict:
    """Start the pipeline in `file` (a path or a bundled name) and run its stages; returns the final state
    (pipeline.json's content) with "seconds". A user-facing problem in the file is raised before any run exists."""
    from engine.train.runs import Run

    spec, text = load_pipeline(file, sets, model)
    if spec.model != DEMO_MODEL:  # a missing base is one line, before the pipeline is a run
        from engine.train.core import check_model_folder

        check_model_folder(spec.model)
    config = PipelineConfig(file=str(Path(file).expanduser()), name=spec.name, model=model, sets=tuple(sets),
                            output_dir=output_dir)
    run = Run.create("pipeline", config, on_event)
    (run.dir / PIPELINE_FILE).write_text(text, encoding="utf-8")
    return _Pipeline(run, spec, _initial_state(spec, run), cancel or CancelToken()).go()


def _initial_state(spec: PipelineSpec, run) -> dict:
    """pipeline.json before the first stage: every stage pending."""
    return {"format": FORMAT, "version": 1, "name": spec.name, "description": spec.description,
            "status": "running", "run_id": run.store_id, "run_dir": str(run.dir.resolve()), "base_model": None,
            "file": str((run.dir / PIPELINE_FILE).resolve()),
            "stages": [new_stage(stage.name, stage.kind, stage.title) for stage in spec.stages], "report": None}


def _refuse_if_running(directory: Path) -> None:
    """A pipeline whose process is still alive is not resumed beside it (one line, with how to stop it)."""
    from engine.run_index import refuse_if_running
    from engine.store import Store

    store_id = json.loads((directory / "run.json").read_text(encoding="utf-8")).get("store_id") \
        if (directory / "run.json").is_file() else None
    if store_id is None:
        return
    with Store() as store:
        try:
            run = store.get_run(store_id)
        except AhaError:  # a pipeline folder copied from elsewhere: not running here
            return
        refuse_if_running(run, "resuming")


def resume_pipeline(target: str, *, sets: Sequence[str] = (), on_event: OnEvent = ignore,
                    cancel: CancelToken | None = None) -> dict:
    """Continue the pipeline run `target` (its id or directory) at the stage it stopped in. `sets` change the
    settings of stages that have not finished (a finished stage's are what it ran with: a one-line error), and
    are kept with the pipeline's own."""
    from engine.train.runs import Run, write_json

    directory = _pipeline_dir(target)
    _refuse_if_running(directory)
    spec, config = _saved_spec(directory)
    state = read_state(directory)
    if state is not None and state.get("status") == "complete":
        raise AhaError(f"the pipeline in {directory} is complete; start it again with `aha pipeline run` to "
                       "train anew")
    if sets:
        stages = (state or {}).get("stages", [])
        finished = {stage["name"] for stage in stages if stage.get("status") == "complete"}
        for text in sets:
            key = parse_set(text)[0]
            if key in ("model", "seed", "name") and any(stage.get("status") != "pending" for stage in stages):
                raise AhaError(f"--set {key}: the pipeline has started, so its {key} is fixed; start a new one with "
                               "`aha pipeline run` to change it")
            if "." in key and key.partition(".")[0] in finished:
                raise AhaError(f"--set {key}: stage {key.partition('.')[0]!r} is complete and is not run again; "
                               "its settings stay what it ran with")
        config = dataclasses.replace(config, sets=(*config.sets, *sets))
        spec = _spec_of(directory, config)  # checked before it is kept
        write_json(directory / "config.json", dataclasses.asdict(config))
    run = Run.open(directory, on_event)
    state = state or _initial_state(spec, run)  # killed before its first state was written: nothing ran
    state.update(status="running", run_id=run.store_id)
    return _Pipeline(run, spec, state, cancel or CancelToken()).go()


def _pipeline_dir(target: str) -> Path:
    directory = Path(target).expanduser()
    if target.isdigit() and not directory.exists():
        from engine.run_index import find_run
        from engine.store import Store

        with Store() as store:
            run = find_run(store, target)
        if run["kind"] != "pipeline":
            raise AhaError(f"run {target} is a {run['kind']} run, not a pipeline; resume it with `aha runs resume "
                           f"{target}`")
        directory = Path(run["dir"])
    if not (directory / PIPELINE_FILE).is_file() or not (directory / "config.json").is_file():
        raise AhaError(f"{directory} is not a pipeline run (no {PIPELINE_FILE}); give the folder `aha pipeline run` "
                       "made, or its run id from `aha runs list --kind pipeline`")
    return directory


def _saved_spec(directory: Path) -> tuple[PipelineSpec, PipelineConfig]:
    config = PipelineConfig(**{key: tuple(value) if key == "sets" else value for key, value in
                               json.loads((directory / "config.json").read_text(encoding="utf-8")).items()
                               if key in {field.name for field in dataclasses.fields(PipelineConfig)}})
    return _spec_of(directory, config), config


def _spec_of(directory: Path, config: PipelineConfig) -> PipelineSpec:
    source = str(directory / PIPELINE_FILE)
    data = read_toml((directory / PIPELINE_FILE).read_text(encoding="utf-8"), source)
    if config.model is not None:
        data["model"] = config.model
    return parse_pipeline(apply_sets(data, config.sets), source)


class _StageEvents(StageEvents):
    """A pipeline stage's events: its run becomes the pipeline run's child, and the state says which run it is."""

    def __init__(self, pipeline: _Pipeline, entry: dict, title: str):
        super().__init__(entry["name"], pipeline.run.emit, pipeline.heartbeat, title)
        self.pipeline, self.entry = pipeline, entry

    def started(self, kind: str, run_id: int | None, run_dir: str | None) -> None:
        from engine.store import Store

        super().started(kind, run_id, run_dir)
        if run_id is not None and self.pipeline.run.store_id is not None:
            with contextlib.suppress(Exception), Store() as store:
                store.set_run_parent(run_id, self.pipeline.run.store_id)
        self.entry.update(run_id=run_id, run_kind=kind, run_dir=run_dir or self.entry.get("run_dir"))
        self.pipeline.write()


class _Pipeline:
    """One pipeline's state as it goes from stage to stage (the steps are its methods)."""

    def __init__(self, run, spec: PipelineSpec, state: dict, cancel: CancelToken):
        self.run, self.spec, self.state, self.cancel = run, spec, state, cancel
        self.dir = Path(run.dir).resolve()
        self.heartbeat = StageHeartbeat()
        self.started = time.monotonic()

    def go(self) -> dict:
        self.run.set_status("running")
        self.write()
        try:
            self.base_model()
            for stage, entry in zip(self.spec.stages, self.state["stages"], strict=True):
                if entry["status"] == "complete":
                    continue
                if self.cancel.cancelled:
                    break
                self.run_stage(stage, entry)
                if entry["status"] != "complete":
                    break
            statuses = [entry["status"] for entry in self.state["stages"]]
            self.state["status"] = ("complete" if all(status == "complete" for status in statuses)
                                    else "cancelled" if self.cancel.cancelled or "cancelled" in statuses else "error")
        except Cancelled:
            self.state["status"] = "cancelled"
        except BaseException as error:
            self.state["status"] = "cancelled" if isinstance(error, KeyboardInterrupt) else "error"
            self.finish()
            raise
        finally:
            self.heartbeat.close()
        self.finish()
        return {**self.state, "seconds": round(time.monotonic() - self.started, 3)}

    def write(self) -> None:
        with contextlib.suppress(OSError):
            write_state(self.dir, self.state)

    def finish(self) -> None:
        self.write()
        with contextlib.suppress(Exception):
            self.run.artifact("pipeline", self.dir / "pipeline.json")
            self.run.set_status(self.state["status"])
        self.run.close()

    # the base model

    def base_model(self) -> str:
        """The pipeline's model: a checkpoint folder, or the demo's tiny model built in <dir>/base."""
        if self.state.get("base_model"):
            return self.state["base_model"]
        if self.spec.model == DEMO_MODEL:
            from engine.demo.model import make_demo_model
            from engine.demo.recipe import DEFAULT

            folder = self.dir / BASE_DIR
            if not (folder / "config.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)  # half built when killed: built again, the same
                self.run.emit(make_event("log", message=f"building the demo's tiny model (seed {self.spec.seed}) in "
                                                        f"{folder}"))
                make_demo_model(folder, seed=self.spec.seed, spec=DEFAULT.model)
            base = str(folder)
        else:
            from engine.train.core import check_model_folder

            base = str(check_model_folder(self.spec.model))
        self.state["base_model"] = base
        self.write()
        return base

    # one stage

    def run_stage(self, stage: StageSpec, entry: dict) -> None:
        events = _StageEvents(self, entry, stage.title)
        entry.update(status="running", run_dir=str(self.dir / stage.name))
        self.write()
        started = time.monotonic()
        try:
            settings = self.resolve(stage, entry)
            outcome = RUNNERS[stage.kind](self, stage, settings, events)
        except Cancelled:
            entry.update(status="cancelled", seconds=_add(entry.get("seconds"), time.monotonic() - started))
            self.write()
            raise
        except BaseException as error:
            entry.update(status="error", seconds=_add(entry.get("seconds"), time.monotonic() - started))
            self.write()
            if isinstance(error, AhaError) and not str(error).startswith(f"stage {stage.name!r}"):
                raise AhaError(f"stage {stage.name!r}: {error}; then `aha pipeline resume {self.dir}` (with --set "
                               f"{stage.name}.SETTING=VALUE to change a setting)") from None
            raise
        entry.update(status=outcome.status, outputs=outcome.outputs, metric=outcome.metric, summary=outcome.summary,
                     seconds=_add(entry.get("seconds"), time.monotonic() - started))
        if outcome.report is not None:
            self.state["report"] = outcome.report
        index = self.spec.stages.index(stage) + 1
        message = (f"[{index}/{len(self.spec.stages)}] {stage.title} {format_seconds(entry['seconds'])} — "
                   f"{outcome.summary or outcome.status}")
        self.run.emit(make_event("log", message=message, stage=stage.name,
                                 stage_done={"seconds": entry["seconds"], "status": outcome.status,
                                             "metric": outcome.metric, "outputs": outcome.outputs}))
        self.write()

    def resolve(self, stage: StageSpec, entry: dict) -> dict[str, Any]:
        """The stage's settings with each reference replaced by the output it names (recorded in the state's
        inputs: the lineage), the pipeline's seed where the stage sets none."""
        settings: dict[str, Any] = {}
        inputs: dict[str, Any] = {}
        for key, value in stage.settings.items():
            if isinstance(value, list) and any(parse_reference(item) for item in value):
                settings[key] = [self.output(parse_reference(item), stage, key) if parse_reference(item) else item
                                 for item in value]
                inputs[key] = {"ref": value, "value": settings[key]}
            elif (reference := parse_reference(value)) is not None:
                settings[key] = self.output(reference, stage, key)
                inputs[key] = {"ref": value, "value": settings[key]}
            else:
                settings[key] = value
        if stage.kind == "export" and isinstance(settings.get("src"), tuple):  # a LoRA run: its base + adapter
            base, adapter = settings["src"]
            settings["src"] = base
            settings.setdefault("adapter", adapter)
            inputs["src"]["value"] = base
            if adapter is not None:
                inputs["adapter"] = {"ref": stage.settings["src"], "value": settings["adapter"]}
        if stage.kind != "export" and "seed" in _fields(stage.kind) and "seed" not in settings:
            settings["seed"] = self.spec.seed
        entry["inputs"] = inputs
        return settings

    def output(self, reference: Reference, stage: StageSpec, key: str) -> Any:
        """What `reference` gives the setting `key` of `stage`."""
        if reference.stage == "base":
            produced = {"kind": "base", "outputs": {"model": self.state["base_model"], "adapter": None}}
        else:
            produced = next(entry for entry in self.state["stages"] if entry["name"] == reference.stage)
        outputs = produced["outputs"]
        kind = produced["kind"]
        field = reference.field or FIELDS[kind][0]
        if kind not in (*TRAINING, "base") or field != "model":
            value = outputs.get(field)
            if value is None:
                raise AhaError(f"stage {stage.name!r} ({key}) needs {reference}, which stage {reference.stage!r} "
                               "did not produce; check that stage's settings")
            return value
        adapter = outputs.get("adapter")
        if stage.kind == "generate" and key == "teacher":
            return f"hf:{outputs['run_dir']}" if kind != "base" else f"hf:{outputs['model']}"
        if stage.kind == "eval" and key == "models":
            return f"hf:{outputs['base']}+{adapter}" if adapter else f"hf:{outputs['model']}"
        if stage.kind == "export" and key == "src":
            return (outputs["base"], adapter) if adapter else (outputs["model"], None)
        if adapter:  # a training stage's model, or a KD teacher: a full checkpoint
            return self.merged(produced)
        return outputs["model"]

    def merged(self, entry: dict) -> str:
        """The LoRA stage's adapter merged into its base, once (<stage dir>/merged, written under a temporary
        name and renamed, so a killed merge is redone and never half used)."""
        from engine.export.lora import merge_adapter

        outputs = entry["outputs"]
        target = Path(entry["run_dir"]) / "merged"
        if not (target / "config.json").is_file():
            partial = target.with_name("merged.partial")
            shutil.rmtree(partial, ignore_errors=True)
            merge_adapter(outputs["base"], outputs["adapter"], partial, dtype=_dtype(outputs["base"]),
                          on_event=self.run.emit)
            partial.rename(target)
        outputs["model"] = str(target)
        self.write()
        return str(target)


def _fields(kind: str) -> set[str]:
    from engine.pipeline.spec import settings_of

    return set(settings_of(kind))


def _dtype(folder: str) -> str:
    """The torch dtype a merged checkpoint is saved in: its base's (config.json's dtype/torch_dtype)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


def _add(seconds: float | None, more: float) -> float:
    return round((seconds or 0.0) + more, 3)
