"""PEFT LoRA adapters: check them against a base, merge them in 16/32-bit, or write them as GGUF LoRA.

Merging is float32 (never 4-bit, even when the adapter was trained on a 4-bit base: merging into NF4 adds
rounding error): for an export, W + alpha/r·B·A in numpy, row block by row block, as the GGUF is written
(no torch, no merged copy on disk); merge_adapter saves a merged HF checkpoint through peft instead. A GGUF LoRA holds
`<gguf tensor>.lora_a` (r, in) and `.lora_b` (out, r) with `adapter.lora.alpha`; llama.cpp scales by
alpha/r, so DoRA, rsLoRA and `modules_to_save` adapters are refused there (merge them instead).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import AhaError
from engine.export.checkpoint import Checkpoint, index_tensors, load_rows, load_tensor, open_checkpoint
from engine.export.gguf_writer import DIRECT_TYPES, PlannedTensor, output_qtype, permute_rope, write_planned
from engine.fileio import check_free_space
from engine.jobs import OnEvent, ignore, make_event

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


@dataclass
class Adapter:
    """A PEFT LoRA adapter folder: its config and its lora_A/lora_B tensors by base tensor name."""

    folder: Path
    config: dict
    pairs: dict  # base tensor name ("model.layers.0.self_attn.q_proj.weight") → (LocalTensor A, LocalTensor B)
    extra: list[str]  # tensors that are neither lora_A nor lora_B (modules_to_save, embeddings…)

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", self.config.get("r", 8)))

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 8))


def base_tensor_name(peft_name: str) -> str:
    """`base_model.model.model.layers.0.mlp.up_proj.lora_A.weight` → `model.layers.0.mlp.up_proj.weight`."""
    name = peft_name.removeprefix("base_model.model.")
    for marker in (".lora_A.weight", ".lora_B.weight", ".lora_A.default.weight", ".lora_B.default.weight"):
        name = name.replace(marker, ".weight")
    return name


def open_adapter(folder: Path | str) -> Adapter:
    """Read adapter_config.json and index adapter_model.safetensors."""
    folder = Path(folder).expanduser()
    config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not folder.is_dir():
        raise AhaError(f"adapter folder {folder} does not exist; give the folder a PEFT LoRA run saved "
                       "(adapter_config.json, adapter_model.safetensors).")
    if not config_file.is_file():
        raise AhaError(f"{folder} has no adapter_config.json; give the folder a PEFT LoRA run saved.")
    if not weights.is_file():
        raise AhaError(f"{folder} has no adapter_model.safetensors; re-save the adapter with safetensors.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise AhaError(f"{config_file} is not valid JSON ({error}); re-save the adapter.") from None
    if not isinstance(config, dict):
        raise AhaError(f"{config_file} is not an adapter config (a JSON object); re-save the adapter.")
    if config.get("peft_type", "LORA") != "LORA":
        raise AhaError(f"{folder} is a {config.get('peft_type')} adapter; only LoRA adapters can be exported.")
    pairs: dict[str, list] = {}
    extra = []
    for name, local in index_tensors([weights]).items():
        if ".lora_A." in name or ".lora_B." in name:
            pairs.setdefault(base_tensor_name(name), [None, None])[0 if ".lora_A." in name else 1] = local
        else:
            extra.append(name)
    incomplete = [name for name, (a, b) in pairs.items() if a is None or b is None]
    if incomplete:
        raise AhaError(f"adapter {folder} is incomplete: {incomplete[0]} lacks its lora_A or lora_B tensor.")
    return Adapter(folder, config, {name: tuple(pair) for name, pair in pairs.items()}, extra)


def check_matches_base(adapter: Adapter, ckpt: Checkpoint) -> None:
    """Every adapted weight exists in the base with shape (B.out, A.in); else name the first mismatch."""
    for name, (lora_a, lora_b) in adapter.pairs.items():
        base = ckpt.tensors.get(name)
        if base is None:
            raise AhaError(f"adapter {adapter.folder.name} targets {name}, which base {ckpt.folder.name} does not "
                           "have; it was trained for another base model.")
        expected = (lora_b.shape[0], lora_a.shape[1])
        if tuple(base.shape) != expected:
            raise AhaError(f"adapter {adapter.folder.name} was trained for another base model: {name} is "
                           f"{tuple(base.shape)} in {ckpt.folder.name} but {expected} in the adapter.")


def check_gguf_representable(adapter: Adapter) -> None:
    """GGUF LoRA is plain LoRA scaled by alpha/r: refuse what llama.cpp cannot apply."""
    reasons = []
    if adapter.config.get("use_dora"):
        reasons.append("DoRA")
    if adapter.config.get("use_rslora"):
        reasons.append("rsLoRA")
    if adapter.config.get("modules_to_save") or adapter.extra:
        reasons.append("modules_to_save")
    if reasons:
        raise AhaError(f"adapter {adapter.folder.name} uses {' and '.join(reasons)}, which a GGUF LoRA cannot hold; "
                       "export without --adapter-only to merge it into the model instead.")


def numpy_merge_blockers(adapter: Adapter) -> list[str]:
    """What the in-writer merge (W + alpha/r·B·A) cannot do and peft's merge can: DoRA's magnitude vectors,
    modules_to_save copies, per-module rank or alpha patterns, fan_in_fan_out layers. Empty: merge in numpy."""
    config = adapter.config
    return [reason for reason, applies in (
        ("DoRA", bool(config.get("use_dora"))),
        ("modules_to_save", bool(config.get("modules_to_save") or adapter.extra)),
        ("rank_pattern/alpha_pattern", bool(config.get("rank_pattern") or config.get("alpha_pattern"))),
        ("fan_in_fan_out", bool(config.get("fan_in_fan_out")))) if applies]


def merged_rows(adapter: Adapter):
    """A RowsOf for engine.export.gguf_writer: an adapted weight's rows [start, stop) are
    W[start:stop] + (B[start:stop] @ A) · s in float32, s = alpha/r (alpha/√r with rsLoRA), as peft's
    merge_and_unload computes them on a float32 base; every other tensor as stored."""
    scale = adapter.alpha / (math.sqrt(adapter.rank) if adapter.config.get("use_rslora") else adapter.rank)

    def rows_of(name: str, local):
        pair = adapter.pairs.get(name)
        if pair is None:
            return None
        lora_a = load_tensor(pair[0]).astype(np.float32)  # (r, in)

        def rows(start: int, stop: int) -> np.ndarray:
            delta = load_rows(pair[1], start, stop).astype(np.float32) @ lora_a  # (stop - start, in)
            delta *= np.float32(scale)
            return load_rows(local, start, stop).astype(np.float32) + delta

        return rows

    return rows_of


def merge_adapter(base_dir: Path | str, adapter_dir: Path | str, out_dir: Path | str, dtype: str = "float32",
                  on_event: OnEvent = ignore) -> Path:
    """Merge a LoRA into its base in float32 (W + scale·B·A via peft) and save an HF checkpoint in `dtype`.
    For training stages that need a merged HF model (engine.pipeline) and for the adapters the in-writer
    merge cannot do (numpy_merge_blockers); needs torch, transformers and peft (the train extra)."""
    try:
        import torch
    except ImportError:
        raise AhaError("merging this adapter into an HF checkpoint needs torch and peft; install the train "
                       "extra (pip install 'aha-workbench[train]').") from None
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ckpt, adapter = open_checkpoint(base_dir), open_adapter(adapter_dir)
    if ckpt.hparams.get("quantization_config"):
        raise AhaError(f"base {ckpt.folder} is a quantized checkpoint; merge into the 16/32-bit model it was "
                       "quantized from.")
    check_matches_base(adapter, ckpt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    elements = sum(int(np.prod(tensor.shape)) for tensor in ckpt.tensors.values())
    check_free_space(out_dir, elements * getattr(torch, dtype).itemsize)  # before minutes of merging
    on_event(make_event("log", message=f"merging {adapter.folder.name} into {ckpt.folder.name} in float32"))
    model = AutoModelForCausalLM.from_pretrained(ckpt.folder, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter.folder).merge_and_unload()
    merged.to(getattr(torch, dtype)).save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if (ckpt.folder / name).is_file():
            shutil.copy2(ckpt.folder / name, out_dir / name)
    on_event(make_event("artifact", kind="checkpoint", path=str(out_dir)))
    return out_dir


def plan_lora_tensors(adapter: Adapter, ckpt: Checkpoint, file_qtype: str) -> list[PlannedTensor]:
    """`.lora_a`/`.lora_b` pairs under GGUF names; Llama's Q/K permutation applied to B's rows."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[ckpt.arch.upper()], ckpt.block_count)
    heads = {"q_proj": ckpt.hparams["num_attention_heads"], "k_proj": ckpt.hparams["num_key_value_heads"]}
    planned = []
    for name, (lora_a, lora_b) in adapter.pairs.items():
        gguf_name = name_map.get_name(name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise AhaError(f"adapter tensor {name} has no GGUF counterpart in {ckpt.arch}; merge the adapter instead.")
        n_head = next((n for proj, n in heads.items() if name.endswith(f"{proj}.weight")), None)

        def make_b(local=lora_b, n_head=n_head):
            data = load_tensor(local).astype(np.float32)
            return permute_rope(data, n_head) if ckpt.arch == "llama" and n_head else data

        for suffix, local, make in ((".lora_a", lora_a, lambda local=lora_a: load_tensor(local)), (".lora_b", lora_b, make_b)):
            shape = tuple(local.shape)
            qtype = output_qtype(gguf_name.removesuffix(".weight") + ".weight", shape, file_qtype)
            planned.append(PlannedTensor(gguf_name + suffix, shape, qtype, make))
    return planned


def write_lora_gguf(base_dir: Path | str, adapter_dir: Path | str, out: Path | str, out_type: str = "f16", *,
                    force: bool = False, on_event: OnEvent = ignore, cancel=None) -> Path:
    """The adapter as a GGUF LoRA that llama.cpp applies on top of the base's GGUF."""
    import gguf

    if out_type not in DIRECT_TYPES:
        raise AhaError(f"a GGUF LoRA adapter is written as one of {', '.join(DIRECT_TYPES)}, not {out_type!r}.")
    ckpt, adapter = open_checkpoint(base_dir), open_adapter(adapter_dir)
    check_gguf_representable(adapter)
    check_matches_base(adapter, ckpt)
    out = Path(out)

    def add_metadata(writer) -> None:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_name(adapter.folder.name)
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.alpha)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    write_planned(out, ckpt.arch, plan_lora_tensors(adapter, ckpt, DIRECT_TYPES[out_type][1]), add_metadata,
                  force=force, on_event=on_event, cancel=cancel)
    on_event(make_event("artifact", kind="gguf-lora", path=str(out), bytes=out.stat().st_size))
    return out
