"""Export: HF checkpoint (+ optional LoRA) → GGUF (f32/f16/bf16/q8_0 or a llama.cpp k-quant) → Ollama.

`export()` is the whole pipeline behind `aha export`; the modules below it do one step each:
checkpoint (read), vocab (tokenizer metadata), gguf_writer (write), quantize (llama.cpp), lora (merge or
GGUF adapter). The Modelfile and registration live in engine.export.ollama.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

from engine.errors import AhaError, Cancelled
from engine.jobs import CancelToken, OnEvent, Progress, ignore, make_event

DEFAULT_NUM_CTX = 8192  # reasoning traces are long; capped by the model's own context length


def export_as_run(src: Path | str, out: Path | str, out_type: str = "f16", *, settings: dict,
                  started: Callable[[int], None], on_event: OnEvent = ignore, cancel: CancelToken | None = None,
                  **options) -> dict:
    """`export()` as a run of a job made of stages (`aha demo`, `aha pipeline`): a store row of kind export
    with `settings`, owned by this process (`started(run_id)` is told at once), each final artifact recorded
    with it, and its status complete, cancelled or error at the end. Returns export()'s result."""
    import os

    from engine.store import Store

    with Store() as store:
        run_id = store.create_run("export", settings, status="running", pid=os.getpid())
    started(run_id)

    def recording(event: dict) -> None:
        if event["type"] == "artifact" and event.get("final", True) and event.get("path"):
            with contextlib.suppress(Exception), Store() as store:
                store.add_artifact(event["kind"], event["path"], run_id=run_id,
                                   meta={key: value for key, value in event.items()
                                         if key not in ("v", "type", "kind", "path", "final")})
        on_event(event)

    status = "error"
    try:
        result = export(src, out, out_type, on_event=recording, cancel=cancel, **options)
        status = "complete"
    except Cancelled:
        status = "cancelled"
        raise
    finally:
        with contextlib.suppress(Exception), Store() as store:
            store.update_run_status(run_id, status)
    return result


def check_type(out_type: str) -> str:
    """Validate the requested type before any work starts."""
    from engine.export.gguf_writer import DIRECT_TYPES
    from engine.export.quantize import check_quant_type

    key = out_type.lower()
    return key if key in DIRECT_TYPES else check_quant_type(key)


def check_available() -> bool:
    """Whether the `check` stage can run: torch, transformers and peft importable (the train extra); the
    export itself needs none of them."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers", "peft"))
    except (ImportError, ValueError):
        return False


def stages(out_type: str, *, adapter: Path | str | None = None, adapter_only: bool = False,
           ollama: str | None = None, check: bool = False) -> list[str]:
    """The stages an export goes through, in order: merge (an adapter into the base), write (the GGUF),
    quantize (a k-quant, through llama.cpp), register (with Ollama), check (engine.export.check); only
    those that apply."""
    from engine.export.gguf_writer import DIRECT_TYPES

    merging = adapter is not None and not adapter_only
    quantizing = out_type.lower() not in DIRECT_TYPES and not adapter_only
    return [name for name, applies in (("merge", merging), ("write", True), ("quantize", quantizing),
                                       ("register", bool(ollama)), ("check", check)) if applies]


def export(src: Path | str, out: Path | str, out_type: str = "f16", *, adapter: Path | str | None = None,
           adapter_only: bool = False, ollama: str | None = None, num_ctx: int | None = None,
           force: bool = False, check: bool = False, on_event: OnEvent = ignore,
           cancel: CancelToken | None = None) -> dict:
    """Run the export pipeline; returns {"gguf": path, "modelfile": path | None, "ollama": show | None}, and
    "check": ExportCheck.as_dict() when `check` (the written GGUF loaded by llama.cpp and compared with `src`
    + `adapter` in transformers; a failed check is reported in it, not raised: the export itself is complete).

    A cancel stops at the next tensor (or after the step that cannot be interrupted: the merge, llama.cpp's
    quantizer) with Cancelled; the scratch folder `.X.gguf.work/` and any `.X.gguf.partial-PID` are
    removed, and an existing output is left as it was."""
    from engine.export.checkpoint import open_checkpoint
    from engine.export.gguf_writer import DIRECT_TYPES
    from engine.export.lora import check_matches_base, open_adapter, write_lora_gguf
    from engine.export.ollama import check_model_name, check_reachable
    from engine.fileio import check_output, missing_folders

    key = check_type(out_type)
    out = Path(out).expanduser()
    if adapter_only and adapter is None:
        raise AhaError("--adapter-only needs --adapter ADAPTER_DIR.")
    if adapter_only and key not in DIRECT_TYPES:
        raise AhaError(f"a GGUF LoRA adapter is written as one of {', '.join(DIRECT_TYPES)}, not {key!r}; "
                       "quantize the model it is applied to instead.")
    if adapter_only and check:
        raise AhaError("--check loads a whole model in llama.cpp; an adapter-only GGUF has no model to run: "
                       "export without --adapter-only to check it.")
    if adapter_only and ollama:
        raise AhaError("--ollama registers a whole model; export without --adapter-only to register it.")
    if check and not check_available():
        raise AhaError("--check runs the HF model in transformers, which needs the train extra (pip install "
                       "'aha-workbench[train]'); export without --check.")
    if num_ctx is not None and num_ctx < 1:
        raise AhaError(f"--num-ctx must be a positive number of tokens, got {num_ctx}; leave it out for "
                       f"min(the model's context, {DEFAULT_NUM_CTX}).")
    if ollama:
        check_model_name(ollama)
        check_reachable()  # before merging, converting and hashing, which take minutes on a real model
    check_output(out, force)
    # The inputs are checked before any work: a wrong adapter is one line, not a failed merge.
    ckpt = open_checkpoint(src)
    if adapter is not None:
        check_matches_base(open_adapter(adapter), ckpt)
    created = missing_folders(out.parent)  # removed again (when empty) if the export fails
    try:
        if adapter_only:
            return {"gguf": write_lora_gguf(ckpt.folder, adapter, out, key, force=force, on_event=on_event,
                                            cancel=cancel), "modelfile": None, "ollama": None}
        result = _export_model(ckpt, out, key, adapter, ollama, num_ctx, force, on_event, cancel)
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if check:
        result["check"] = _check(src, adapter, result, ollama, on_event, cancel)
    return result


def _check(src, adapter, result: dict, ollama: str | None, on_event: OnEvent, cancel: CancelToken | None) -> dict:
    """The `check` stage on the finished export (a cancel here keeps the complete GGUF)."""
    from engine.export.check import check_export

    checked = check_export(result["gguf"], src, adapter=adapter, modelfile=result["modelfile"],
                           ollama=(ollama, result["ollama"]) if ollama and result["ollama"] else None,
                           on_event=on_event, cancel=cancel)
    if not checked.passed:
        failed = sum(item.status == "fail" for item in checked.items)
        on_event(make_event("log", level="warning", message=f"the export check failed ({failed} of "
                            f"{len(checked.items)} checks); {Path(result['gguf']).name} is kept as written."))
    return checked.as_dict()


def _export_model(ckpt, out: Path, key: str, adapter: Path | str | None, ollama: str | None, num_ctx: int | None,
                  force: bool, on_event: OnEvent, cancel: CancelToken | None) -> dict:
    """The whole-model export after the checks: merge, write (or write an f16 and quantize it), finish."""
    from engine.export.checkpoint import open_checkpoint
    from engine.export.gguf_writer import DIRECT_TYPES, as_stored, write_gguf
    from engine.export.lora import merge_adapter, merged_rows, numpy_merge_blockers, open_adapter
    from engine.export.quantize import quantize_gguf
    from engine.fileio import disk_errors

    scratch = out.with_name(f".{out.name}.work")
    rows_of = as_stored
    try:
        if adapter is not None:
            merging = Progress(on_event, "merge", 1, unit="adapters", label=f"merging {Path(adapter).name}")
            merging.update(0, force=True)
            opened = open_adapter(adapter)
            blockers = numpy_merge_blockers(opened)
            if blockers:  # peft's merge, into a scratch HF checkpoint (needs torch)
                on_event(make_event("log", message=f"{opened.folder.name} uses {' and '.join(blockers)}: merging "
                                    "it with peft into a scratch checkpoint"))
                with disk_errors(scratch / "merged"):
                    merged = merge_adapter(ckpt.folder, adapter, scratch / "merged", on_event=_scratch(on_event))
                ckpt = open_checkpoint(merged)
            else:  # merged as it is written: W + alpha/r·B·A per row block
                on_event(make_event("log", message=f"merging {opened.folder.name} into {ckpt.folder.name} in "
                                    "float32 as the GGUF is written"))
                rows_of = merged_rows(opened)
            merging.update(1, force=True)
            check_cancel(cancel, "export cancelled after the merge; no file was written.")
        if key in DIRECT_TYPES:
            write_gguf(ckpt, out, key, force=force, on_event=on_event, cancel=cancel, rows_of=rows_of)
        else:
            f16 = write_gguf(ckpt, scratch / "f16.gguf", "f16", force=True, on_event=_scratch(on_event),
                             cancel=cancel, stage="write", rows_of=rows_of)
            quantize_gguf(f16, out, key, force=force, on_event=on_event, cancel=cancel)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(scratch)
    return finish_export(out, ckpt.hparams.get("max_position_embeddings"), ollama, num_ctx, on_event, cancel)


def check_cancel(cancel: CancelToken | None, message: str) -> None:
    """Raise Cancelled(message) when the token is set: a job's safe point."""
    if cancel is not None and cancel.cancelled:
        raise Cancelled(message)


def _scratch(on_event: OnEvent) -> OnEvent:
    """on_event for an intermediate file: its progress is shown, its artifact marked `final: false` (the
    export removes it; it is no result)."""
    return lambda event: on_event({**event, "final": False} if event["type"] == "artifact" else event)


def finish_export(out: Path, context_length: int | None, ollama: str | None, num_ctx: int | None,
                  on_event: OnEvent, cancel: CancelToken | None = None) -> dict:
    """Write the Modelfile beside the GGUF and, when asked, register the model with Ollama."""
    from engine.export.ollama import register, write_modelfile

    num_ctx = num_ctx or min(context_length or DEFAULT_NUM_CTX, DEFAULT_NUM_CTX)
    modelfile = write_modelfile(out, num_ctx)
    on_event(make_event("artifact", kind="modelfile", path=str(modelfile)))
    shown = register(out, ollama, num_ctx=num_ctx, on_event=on_event, cancel=cancel) if ollama else None
    return {"gguf": out, "modelfile": modelfile, "ollama": shown}
