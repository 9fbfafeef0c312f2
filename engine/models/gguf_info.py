"""GGUF header reading: what a .gguf file says about itself (architecture, size, quantization, chat template,
whether it reasons in <think>), from its header and tensor table and never its tensor data, so a multi-GB file
opens in milliseconds and a broken one gives one line saying why. Knows nothing about where model files live
(engine.models.discovery), the library index, or running a model."""

from __future__ import annotations

import contextlib
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from engine.errors import AhaError
from engine.jobs import format_bytes
from engine.models.discovery import model_name

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)           # v1 (2023, 32-bit counts) is long gone from llama.cpp
DEFAULT_ALIGNMENT = 32
THINK_TOKENS = (b"<think>", b"</think>")
MAX_DIMS = 8                          # ggml has 4; more means the tensor table is garbage
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string",
               9: "array", 10: "u64", 11: "i64", 12: "f64"}
_STRING, _ARRAY = 8, 9
_READ_CHUNK = 1 << 20
_HEAD_BYTES = 32                      # enough to name what a non-GGUF file is
_REASONING_NAME = re.compile(r"(?<![a-z0-9])(r1|qwq)(?![a-z0-9])|reason|think", re.IGNORECASE)
# What a file that is not GGUF usually is, by its first bytes: the hint finishes the error line.
_LOOKALIKES = (
    (b"PK\x03\x04", "a zip archive"),
    (b"version https://git-lfs", "a Git LFS pointer: fetch the real file with `git lfs pull`"),
    (b"<!DOCTYPE", "an HTML page: the download went wrong"),
    (b"<html", "an HTML page: the download went wrong"),
    (b"{", "a JSON file"),
)


@dataclass(frozen=True)
class GGUFArray:
    """An array value in the metadata, summarized: its item type and length (the items are not kept)."""

    item_type: str
    count: int


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file says about itself, read from its header alone."""

    path: Path
    file_size: int                   # bytes on disk
    version: int                     # GGUF format version (2 or 3)
    architecture: str | None         # general.architecture: "qwen2", "llama", "qwen3", …
    name: str                        # general.name, else the file name without .gguf
    kind: str                        # general.type: "model", or "adapter" for a LoRA GGUF
    parameter_count: int             # sum of tensor element counts (of this file only, for a split model)
    quantization: str                # "Q4_K_M", "F16", … from general.file_type; else the dominant tensor type
    context_length: int | None       # <architecture>.context_length: the context the model was trained for
    chat_template: str | None        # tokenizer.chat_template: untrusted, render it sandboxed
    is_reasoning: bool               # writes its reasoning inside <think>…</think>
    reasoning_from: str | None       # what decided is_reasoning: "chat template", "vocabulary" or "name"
    tokenizer_pre: str | None        # tokenizer.ggml.pre: the pre-tokenizer llama.cpp applies
    add_bos: bool | None             # tokenizer.ggml.add_bos_token
    vocab_size: int | None           # length of tokenizer.ggml.tokens
    tensor_count: int
    split_count: int                 # split.count: > 1 for one shard of a split model, else 1
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)  # every key; arrays summarized


class _Truncated(Exception):
    """The header runs past the end of the file: `what` was being read."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class _Corrupt(Exception):
    """The header holds a value no writer produces."""


class _HeaderReader:
    """Sequential reads from the start of a file, loaded in 1 MiB chunks (no mmap: a file shrinking under a mapping
    kills the process with SIGBUS). Raises _Truncated instead of reading past `size`."""

    def __init__(self, stream: BinaryIO, size: int, endian: str):
        self.stream, self.size, self.endian = stream, size, endian
        self.buffer = bytearray()
        self.pos = 0
        self.what = "the GGUF header"

    def _fill(self, end: int) -> None:
        if end > self.size:
            raise _Truncated(self.what)
        while len(self.buffer) < end:
            chunk = self.stream.read(max(_READ_CHUNK, end - len(self.buffer)))
            if not chunk:                      # the file shrank since it was measured
                raise _Truncated(self.what)
            self.buffer += chunk

    def take(self, n: int) -> int:
        """Reserve the next n bytes; returns their offset in `buffer`."""
        start = self.pos
        if start + n > len(self.buffer):
            self._fill(start + n)
        self.pos = start + n
        return start

    def scalar(self, fmt: str) -> Any:
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(self.endian + fmt, self.buffer, start)[0]

    def string(self) -> str:
        n = self.scalar("Q")
        start = self.take(n)
        return self.buffer[start:start + n].decode("utf-8", "replace")

    def value(self, value_type: int, key: str) -> Any:
        if value_type in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            return self.array(key)[0]
        raise _Corrupt(f"metadata key {key!r} has unknown value type {value_type}")

    def array(self, key: str, wanted: Sequence[bytes] = ()) -> tuple[GGUFArray, set[bytes]]:
        """Skip over an array; for an array of strings, also return which of `wanted` it contains."""
        item_type, count = self.scalar("I"), self.scalar("Q")
        if item_type in _SCALAR_FORMATS:
            self.take(count * struct.calcsize(_SCALAR_FORMATS[item_type]))
            return GGUFArray(_TYPE_NAMES[item_type], count), set()
        if item_type == _STRING:
            return GGUFArray("string", count), self._strings(count, wanted)
        if item_type == _ARRAY:
            for _ in range(count):
                self.array(key)
            return GGUFArray("array", count), set()
        raise _Corrupt(f"metadata key {key!r} is an array of unknown type {item_type}")

    def _strings(self, count: int, wanted: Sequence[bytes]) -> set[bytes]:
        """Walk `count` length-prefixed strings (the hot loop: ~150k tokens and as many merges in a real model)."""
        if count * 8 > self.size - self.pos:
            raise _Truncated(self.what)
        lengths = {len(item) for item in wanted}
        found: set[bytes] = set()
        unpack = struct.Struct(self.endian + "Q").unpack_from
        buffer, pos = self.buffer, self.pos
        for _ in range(count):
            if pos + 8 > len(buffer):
                self._fill(pos + 8)
            (n,) = unpack(buffer, pos)
            pos += 8
            if pos + n > len(buffer):
                self._fill(pos + n)
            if n in lengths and bytes(buffer[pos:pos + n]) in wanted:
                found.add(bytes(buffer[pos:pos + n]))
            pos += n
        self.pos = pos
        return found


def _first_bytes_hint(head: bytes) -> str:
    if len(head) >= 10 and head[8:10] == b'{"':
        return " (a safetensors file: convert it with `aha export`)"
    for prefix, what in _LOOKALIKES:
        if head.startswith(prefix):
            return f" ({what})"
    return ""


def _endian_and_version(path: Path, head: bytes) -> tuple[str, int]:
    """Check magic and version (from the first bytes); GGUF is little-endian unless the version only makes
    sense byte-swapped."""
    if len(head) < 8 and GGUF_MAGIC.startswith(head[:4]):
        raise AhaError(f"{path} is truncated: the file ends at byte {len(head)}, inside the GGUF header.")
    if head[:4] != GGUF_MAGIC:
        raise AhaError(f"{path} is not a GGUF file (starts with {head[:4]!r}){_first_bytes_hint(head)}.")
    little, big = struct.unpack("<I", head[4:8])[0], struct.unpack(">I", head[4:8])[0]
    endian, version = ("<", little) if little & 0xFFFF else (">", big)
    if version not in SUPPORTED_VERSIONS:
        newer = "newer than this Aha reads; update Aha" if version > max(SUPPORTED_VERSIONS) else "no longer supported"
        raise AhaError(f"{path} uses GGUF version {version}, {newer} (it reads versions 2 and 3).")
    return endian, version


def _open_problem(path: Path) -> str | None:
    """Why `path` cannot be a GGUF file before reading it, or None."""
    if not path.exists():
        return f"{path} does not exist."
    if path.is_dir():
        return f"{path} is a folder, not a GGUF file; add a folder with `aha models add FOLDER`."
    if not path.is_file():
        return f"{path} is not a regular file."
    if path.stat().st_size == 0:
        return f"{path} is empty (0 bytes), not a GGUF file."
    return None


def check_gguf(path: Path | str) -> None:
    """Raise AhaError unless `path` starts like a GGUF file this reader understands (magic and version only)."""
    path = Path(path)
    if problem := _open_problem(path):
        raise AhaError(problem)
    try:
        with path.open("rb") as stream:
            _endian_and_version(path, stream.read(_HEAD_BYTES))
    except OSError as exc:
        raise AhaError(f"cannot read {path}: {exc.strerror or exc}.") from None


def read_gguf_info(path: Path | str) -> GGUFInfo:
    """Read a GGUF file's metadata and tensor table, never its tensor data.

    Raises AhaError with one line naming the file and the reason for a missing, empty, non-GGUF, truncated or
    corrupt file, a folder, or an unsupported version.
    """
    path = Path(path)
    if problem := _open_problem(path):
        raise AhaError(problem)
    size = path.stat().st_size
    counts: list[int] = []
    try:
        with path.open("rb") as stream:
            endian, version = _endian_and_version(path, stream.read(_HEAD_BYTES))
            stream.seek(0)
            reader = _HeaderReader(stream, size, endian)
            reader.take(8)
            header = _read_header(reader, counts)
    except _Truncated as exc:
        said = f"the header says {counts[0]} tensors but " if counts else ""
        raise AhaError(f"{path} is truncated: {said}the file ends at byte {size}, inside {exc.what}; "
                       "download it again or pick another file.") from None
    except _Corrupt as exc:
        raise AhaError(f"{path} is corrupt: {exc}.") from None
    except OSError as exc:
        raise AhaError(f"cannot read {path}: {exc.strerror or exc}.") from None
    if header.data_end > size:
        raise AhaError(f"{path} is truncated: the header says {header.tensor_count} tensors ending at byte "
                       f"{header.data_end} but the file ends at byte {size}; download it again.")
    return _info_from_header(path, size, version, header)


class _Header(NamedTuple):
    metadata: dict[str, Any]
    think_tokens: set[bytes]          # which of THINK_TOKENS the vocabulary holds
    tensor_count: int
    parameter_count: int
    elements_by_type: dict[int, int]  # ggml type → elements, in tensors of 2+ dimensions
    data_end: int                     # where the last tensor's data ends (past the file's end: truncated)


def _read_header(reader: _HeaderReader, counts: list[int]) -> _Header:
    """Parse everything after magic and version; `counts` receives the tensor count as soon as it is known."""
    tensor_count, kv_count = reader.scalar("Q"), reader.scalar("Q")
    counts.append(tensor_count)
    if kv_count * 13 > reader.size - reader.pos:   # key length, value type, a value: 13 bytes at least
        raise _Truncated(f"the {kv_count} metadata entries")
    metadata: dict[str, Any] = {}
    think_tokens: set[bytes] = set()
    for index in range(kv_count):
        reader.what = f"metadata entry {index + 1} of {kv_count}"
        key = reader.string()
        reader.what = f"metadata entry {key!r}"
        value_type = reader.scalar("I")
        if key == "tokenizer.ggml.tokens" and value_type == _ARRAY:
            metadata[key], think_tokens = reader.array(key, THINK_TOKENS)
        else:
            metadata[key] = reader.value(value_type, key)
    parameters, by_type, ends = _read_tensor_table(reader, tensor_count)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise _Corrupt(f"general.alignment is {alignment!r}")
    data_start = -(-reader.pos // alignment) * alignment
    return _Header(metadata, think_tokens, tensor_count, parameters, by_type, data_start + ends)


def _read_tensor_table(reader: _HeaderReader, count: int) -> tuple[int, dict[int, int], int]:
    """(parameter count, elements per ggml type in 2+-dim tensors, end of tensor data relative to its start)."""
    from gguf import GGML_QUANT_SIZES

    parameters, data_end = 0, 0
    by_type: dict[int, int] = {}
    if count * 24 > reader.size - reader.pos:   # name length, n_dims, type, offset: 24 bytes at least
        reader.what = f"the table of {count} tensors"
        raise _Truncated(reader.what)
    for index in range(count):
        reader.what = f"tensor {index + 1} of {count}"
        name = reader.string()
        n_dims = reader.scalar("I")
        if n_dims > MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} claims {n_dims} dimensions")
        dims = [reader.scalar("Q") for _ in range(n_dims)]
        ggml_type, offset = reader.scalar("I"), reader.scalar("Q")
        elements = math.prod(dims)
        parameters += elements
        if n_dims >= 2:
            by_type[ggml_type] = by_type.get(ggml_type, 0) + elements
        with contextlib.suppress(KeyError, ValueError):      # a type newer than gguf-py: size unknown
            block, block_bytes = GGML_QUANT_SIZES[_ggml_type(ggml_type)]
            data_end = max(data_end, offset + elements // block * block_bytes)
    return parameters, by_type, data_end


def _ggml_type(value: int):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(value)


def quantization_name(file_type: int | None, elements_by_type: Mapping[int, int]) -> str:
    """"Q4_K_M", "F16", … from general.file_type; without one (or "guessed"), the type holding the most weights."""
    from gguf import LlamaFileType

    if file_type is not None and file_type != LlamaFileType.GUESSED:
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"file type {file_type}"
    if not elements_by_type:
        return "unknown"
    dominant = max(elements_by_type, key=lambda ggml_type: elements_by_type[ggml_type])
    try:
        return _ggml_type(dominant).name
    except ValueError:
        return f"tensor type {dominant}"


def reasoning_evidence(chat_template: str | None, think_tokens: Iterable[bytes], has_vocabulary: bool,
                       names: Iterable[str]) -> str | None:
    """What makes a model a `<think>` reasoner: its chat template, else its vocabulary; its name only when the
    file carries neither (a template or vocabulary without the tags is a "no", whatever the name says)."""
    if chat_template and any(tag.decode() in chat_template for tag in THINK_TOKENS):
        return "chat template"
    if set(think_tokens) & set(THINK_TOKENS):
        return "vocabulary"
    if chat_template is None and not has_vocabulary and any(_REASONING_NAME.search(name) for name in names):
        return "name"
    return None


def _info_from_header(path: Path, size: int, version: int, header: _Header) -> GGUFInfo:
    meta = header.metadata

    def text(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) else None

    def number(key: str) -> int | None:
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    architecture = text("general.architecture")
    name = text("general.name") or model_name(path)
    template = text("tokenizer.chat_template")
    tokens = meta.get("tokenizer.ggml.tokens")
    evidence = reasoning_evidence(template, header.think_tokens, isinstance(tokens, GGUFArray),
                                  (name, path.name))
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    return GGUFInfo(
        path=path, file_size=size, version=version, architecture=architecture, name=name,
        kind=text("general.type") or "model", parameter_count=header.parameter_count,
        quantization=quantization_name(number("general.file_type"), header.elements_by_type),
        context_length=number(f"{architecture}.context_length") if architecture else None,
        chat_template=template, is_reasoning=evidence is not None, reasoning_from=evidence,
        tokenizer_pre=text("tokenizer.ggml.pre"), add_bos=add_bos if isinstance(add_bos, bool) else None,
        vocab_size=tokens.count if isinstance(tokens, GGUFArray) else None,
        tensor_count=header.tensor_count, split_count=number("split.count") or 1, metadata=meta)


def format_count(n: int) -> str:
    """1_777_088_000 → "1.78B", 494_032_768 → "494M", 860_000 → "860K"."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{suffix}"
    return str(n)


def describe(info: GGUFInfo) -> list[tuple[str, str]]:
    """Label/value rows for `aha models info` and the models pane."""
    reasoning = f"yes (from its {info.reasoning_from})" if info.is_reasoning else "no"
    rows = [("path", str(info.path)), ("name", info.name), ("architecture", info.architecture or "unknown"),
            ("type", info.kind), ("parameters", format_count(info.parameter_count)),
            ("quantization", info.quantization),
            ("context length", str(info.context_length) if info.context_length else "unknown"),
            ("reasoning", reasoning), ("chat template", "yes" if info.chat_template else "none"),
            ("tokenizer", info.tokenizer_pre or "unknown"),
            ("vocabulary", str(info.vocab_size) if info.vocab_size is not None else "none"),
            ("file size", format_bytes(info.file_size)), ("GGUF version", str(info.version)),
            ("tensors", str(info.tensor_count))]
    if info.split_count > 1:
        rows.append(("split", f"{info.split_count} files (parameters count this file only)"))
    return rows
