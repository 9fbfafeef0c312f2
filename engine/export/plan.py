"""What an export form asks before `aha export` runs: the sources the runs left, what a source folder is,
the default output path and Ollama name, and the exact command line.

A source is an HF checkpoint folder, or a PEFT LoRA adapter folder on its base checkpoint (a run's final
adapter: the run's `model` setting is the base). Reads only config files and safetensors headers; runs
nothing and knows nothing of Qt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import AhaError


@dataclass(frozen=True)
class RunAdapter:
    """An adapter a run saved, with the base it was trained on (as the run's settings name it)."""

    run_id: int
    kind: str
    adapter: str
    base: str
    status: str

    @property
    def label(self) -> str:
        return f"{self.kind} run {self.run_id} · {Path(self.adapter).parent.name}/{Path(self.adapter).name} · on " \
               f"{Path(self.base).name or self.base} ({self.status})"


def run_adapters(store) -> list[RunAdapter]:
    """The adapters recorded by runs (newest run first, its newest adapter first) whose folders still exist."""
    found = []
    for run in store.list_runs():
        base = str((run.get("config") or {}).get("model") or "")
        for artifact in reversed(store.run_artifacts(run["id"])):
            if artifact["kind"] == "adapter" and Path(artifact["path"]).is_dir():
                found.append(RunAdapter(run["id"], run["kind"], artifact["path"], base, run["status"]))
    return found


def is_adapter_folder(folder: Path | str) -> bool:
    return (Path(folder).expanduser() / "adapter_config.json").is_file()


@dataclass(frozen=True)
class Source:
    """A described source: `checkpoint` is the HF folder exported (the base, for an adapter)."""

    checkpoint: str
    adapter: str | None
    architecture: str
    context_length: int | None
    sizes: dict[str, int] = field(default_factory=dict)  # type → expected bytes of the merged model
    adapter_bytes: int = 0                                # the adapter's safetensors (adapter-only export)
    rank: int | None = None

    @property
    def summary(self) -> str:
        from engine.jobs import format_bytes

        model = f"{self.architecture} · {Path(self.checkpoint).name} · f16 ≈ {format_bytes(self.sizes.get('f16', 0))}"
        if self.adapter is None:
            return f"HF checkpoint · {model}"
        return f"LoRA adapter (r {self.rank}) {Path(self.adapter).name} on {model}"


def describe_source(path: str, base: str = "") -> Source:
    """Check a source as the export will, and say what it is; one-line AhaError for what is wrong."""
    from engine.export.checkpoint import open_checkpoint
    from engine.export.lora import check_matches_base, open_adapter
    from engine.export.sizes import expected_sizes

    if not path.strip():
        raise AhaError("choose a source: a run's adapter, an adapter folder or a Hugging Face checkpoint folder.")
    folder = Path(path).expanduser()
    if is_adapter_folder(folder):
        adapter = open_adapter(folder)
        base = base.strip() or str(adapter.config.get("base_model_name_or_path") or "")
        if not base:
            raise AhaError(f"{folder.name} is a LoRA adapter: choose the base checkpoint folder it was trained on.")
        ckpt = open_checkpoint(base)
        check_matches_base(adapter, ckpt)
        weights = folder / "adapter_model.safetensors"
        return Source(str(ckpt.folder), str(folder), ckpt.hf_arch, ckpt.hparams.get("max_position_embeddings"),
                      expected_sizes(ckpt.folder), weights.stat().st_size, adapter.rank)
    ckpt = open_checkpoint(folder)
    return Source(str(ckpt.folder), None, ckpt.hf_arch, ckpt.hparams.get("max_position_embeddings"),
                  expected_sizes(ckpt.folder))


def adapter_size(adapter_bytes: int, out_type: str) -> int:
    """Expected size of an adapter-only GGUF: the adapter's f32 safetensors scaled to the type's bits."""
    from engine.export.sizes import bits_per_weight

    return int(adapter_bytes * bits_per_weight(out_type) / 32)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.").lower() or "model"


def output_name(source: Source, out_type: str, adapter_only: bool = False) -> str:
    """"tiny-grpo-7-q4_k_m.gguf": the checkpoint's name, the adapter's run folder when there is one, the type."""
    parts = [Path(source.checkpoint).name]
    if source.adapter is not None:
        adapter = Path(source.adapter)
        parts.append(adapter.parent.parent.name if adapter.parent.name == "final" else adapter.name)
    if adapter_only:
        parts.append("lora")
    return _slug("-".join([*parts, out_type])) + ".gguf"


def default_output(source: Source, out_type: str, adapter_only: bool = False) -> Path:
    """<data dir>/models/<output_name>: where the library and Chat look first."""
    from engine.paths import subdir

    return subdir("models") / output_name(source, out_type, adapter_only)


def ollama_name(output: str) -> str:
    """An Ollama model name from the output file: "tiny-grpo-7:q4_k_m" style, letters, digits, _ . -."""
    stem = Path(output).stem
    return _slug(stem)[:80] or "aha-model"


def default_num_ctx(source: Source | None) -> int:
    from engine.export.pipeline import DEFAULT_NUM_CTX

    length = source.context_length if source is not None else None
    return min(length or DEFAULT_NUM_CTX, DEFAULT_NUM_CTX)


def export_args(source: Source, output: str, out_type: str, *, adapter_only: bool = False, num_ctx: int | None = None,
                ollama: str | None = None, check: bool = False, force: bool = False) -> list[str]:
    """`aha export` arguments (without --events) for these choices."""
    args = ["export", source.checkpoint, "-o", output, "--type", out_type]
    if source.adapter is not None:
        args += ["--adapter", source.adapter]
        if adapter_only:
            args.append("--adapter-only")
    if num_ctx:
        args += ["--num-ctx", str(int(num_ctx))]
    if ollama:
        args += ["--ollama", ollama]
    if check:
        args.append("--check")
    if force:
        args.append("--force")
    return args


def leftovers(output: Path | str) -> list[Path]:
    """What an export writing `output` leaves in its folder while it runs: the file, its Modelfile, the
    `.X.gguf.work` scratch folder and `.X.gguf.partial-PID` files. Empty after a cancel."""
    output = Path(output)
    folder = output.parent
    if not folder.is_dir():
        return []
    names = {output.name, f"{output.stem}.Modelfile"}
    return sorted(path for path in folder.iterdir()
                  if path.name in names or path.name.startswith((f".{output.name}.work", f".{output.name}.partial")))

