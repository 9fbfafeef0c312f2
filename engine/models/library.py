"""The model library: a JSON index (`library.json`) of the GGUF files a user added or a scan found, and the
name lookup behind `aha chat NAME`. An index, never the owner of its files: removing an entry never deletes one.
Knows nothing about downloads (engine.models.hub) or running a model (engine.chat.runtime)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import AhaError
from engine.fileio import atomic_write_text
from engine.models.discovery import (
    DISCOVERY_SOURCES,
    Found,
    default_roots,
    discover,
    discover_folder,
    export_command,
    gguf_files,
    is_hf_checkpoint,
    model_name,
    normalize_ollama_name,
)
from engine.models.gguf_info import check_gguf, read_gguf_info
from engine.paths import data_dir

LIBRARY_VERSION = 1


@dataclass(frozen=True)
class LibraryEntry:
    """One model in the library."""

    path: Path                       # the GGUF file (an Ollama or HF-cache blob has no .gguf suffix)
    source: str                      # one of SOURCES: how it came into the library
    name: str                        # display name: "deepseek-r1:7b" for Ollama, else the file name without .gguf
    added_at: str                    # ISO 8601, UTC
    ollama_name: str | None = None   # "model:tag", with namespace (and registry) when not the default
    origin: str | None = None        # "org/repo" (HF cache, LM Studio) or "org/repo/file@commit" (a pull)

    def to_json(self) -> dict:
        data = {"path": str(self.path), "source": self.source, "name": self.name, "added_at": self.added_at}
        data.update({key: value for key, value in (("ollama_name", self.ollama_name), ("origin", self.origin))
                     if value is not None})
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LibraryEntry:
        return cls(Path(data["path"]), data["source"], data["name"], data["added_at"],
                   data.get("ollama_name"), data.get("origin"))


@dataclass(frozen=True)
class Changes:
    """What an add, remove or scan did."""

    added: tuple[LibraryEntry, ...] = ()
    removed: tuple[LibraryEntry, ...] = ()
    skipped: tuple[str, ...] = ()    # one line per file that was not added, and why


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _entry_key(path: Path, ollama_name: str | None) -> tuple[str, str | None]:
    """Identity in the library: the real file, and the Ollama name (one blob can carry several tags)."""
    return _real(path), ollama_name


def merge_scan(entries: Sequence[LibraryEntry], found: Iterable[Found], now: str,
               scanned: Iterable[str] = DISCOVERY_SOURCES) -> tuple[list[LibraryEntry], Changes]:
    """Entries after a scan: entries of the `scanned` discovery sources that were not found again drop out,
    new finds are appended, and a file already in the library (from any source) keeps its entry."""
    found, scanned = list(found), set(scanned) & set(DISCOVERY_SOURCES)
    found_keys = {_entry_key(f.path, f.ollama_name) for f in found}
    kept = [e for e in entries if e.source not in scanned or _entry_key(e.path, e.ollama_name) in found_keys]
    removed = tuple(e for e in entries if e not in kept)
    known = {_entry_key(e.path, e.ollama_name) for e in kept}
    added = []
    for item in found:
        key = _entry_key(item.path, item.ollama_name)
        if key not in known:
            known.add(key)
            added.append(LibraryEntry(item.path, item.source, item.name, now, item.ollama_name, item.origin))
    return kept + added, Changes(added=tuple(added), removed=removed)


def match_entries(entries: Sequence[LibraryEntry], text: str) -> list[LibraryEntry]:
    """The entries a typed name means, most specific rule first: exact display name, then exact ignoring case,
    then an Ollama name:tag (default tag `latest`), then a substring of the name (ignoring case)."""
    wanted = text.strip()
    lowered = wanted.lower()
    ollama = normalize_ollama_name(wanted) if wanted else ""
    rules = (lambda e: e.name == wanted or e.ollama_name == wanted,
             lambda e: e.name.lower() == lowered,
             lambda e: e.ollama_name is not None and e.ollama_name.lower() == ollama.lower(),
             lambda e: lowered in e.name.lower() or lowered in (e.ollama_name or "").lower())
    for rule in rules:
        matches = [e for e in entries if rule(e)]
        if matches:
            return matches
    return []


class Library:
    """The models a user has: a JSON index at data_dir()/library.json, rewritten atomically on each change."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else data_dir() / "library.json"

    # persistence
    def entries(self) -> list[LibraryEntry]:
        """Every entry, in the order added (an entry's file may have gone missing since)."""
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [LibraryEntry.from_json(item) for item in data["entries"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise AhaError(f"cannot read the model library {self.path} ({exc.__class__.__name__}: {exc}); "
                           "fix or delete it, then run `aha models scan`.") from None

    def _save(self, entries: Sequence[LibraryEntry]) -> None:
        payload = {"version": LIBRARY_VERSION, "entries": [entry.to_json() for entry in entries]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")

    # changes
    def add(self, path: Path | str, *, origin: str | None = None) -> Changes:
        """Add a GGUF file (checked by reading its header) or every model .gguf under a folder (broken ones are
        skipped with a reason). Files already in the library are left as they are."""
        path = Path(path).expanduser().absolute()
        if path.is_dir():
            files = gguf_files(path)
            if not files and is_hf_checkpoint(path):
                raise AhaError(f"{path} is a Hugging Face checkpoint (config.json + safetensors), not a GGUF model; "
                               f"convert it with `{export_command(path)}`, then add the .gguf.")
            if not files:
                raise AhaError(f"{path} holds no .gguf model files (projectors and later shards of split "
                               "models do not count); pick another folder.")
            source = "folder"
        else:
            files, source = [path], "file"
        entries = self.entries()
        known = {_real(entry.path) for entry in entries}
        added, skipped = [], []
        for file in files:
            try:
                read_gguf_info(file)
            except AhaError as exc:
                if source == "file":
                    raise
                skipped.append(str(exc))
                continue
            if _real(file) not in known:
                known.add(_real(file))
                added.append(LibraryEntry(file, source, model_name(file), _now(), origin=origin))
        if added:
            self._save(entries + added)
        return Changes(added=tuple(added), skipped=tuple(skipped))

    def remove(self, path_or_name: Path | str) -> Changes:
        """Remove the entry for a file, every entry under a folder, or the entry a name matches. Files stay."""
        entries = self.entries()
        text, target = str(path_or_name), Path(path_or_name).expanduser()
        if target.exists() or os.sep in text or text.lower().endswith(".gguf"):
            removed = [e for e in entries if _under(e.path, target)]
        else:
            removed = [_only_match(entries, text)]
        if not removed:
            raise AhaError(f"{path_or_name} is not in the model library; `aha models list` shows what is.")
        self._save([e for e in entries if e not in removed])
        return Changes(removed=tuple(removed))

    def scan(self, extra_folders: Iterable[Path | str] = (),
             roots: Mapping[str, Sequence[Path]] | None = None) -> Changes:
        """Discover models in Ollama, LM Studio and the HF hub cache (`roots`, by default default_roots()) and
        in `extra_folders`; add new ones and drop entries of the scanned sources whose model is gone."""
        roots = default_roots() if roots is None else roots
        found, skipped = discover(roots)
        for folder in extra_folders:
            folder = Path(folder).expanduser().absolute()
            if not folder.is_dir():
                raise AhaError(f"{folder} is not a folder; give a folder that holds .gguf files.")
            found += discover_folder(folder).found
        entries, changes = merge_scan(self.entries(), found, _now(), scanned=roots.keys())
        if changes.added or changes.removed:
            self._save(entries)
        return Changes(changes.added, changes.removed, tuple(skipped))

    # lookup
    def find(self, name_or_path: str) -> LibraryEntry:
        """Resolve what a user types (`aha chat NAME`): a GGUF path (in the library or not), a display name,
        an Ollama name[:tag], or a unique part of a name."""
        entries = self.entries()
        path = Path(name_or_path).expanduser()
        if path.is_file():
            for entry in entries:
                if _real(entry.path) == _real(path):
                    return entry
            check_gguf(path)
            return LibraryEntry(path.absolute(), "file", model_name(path), _now())
        if not match_entries(entries, name_or_path):
            if path.is_dir():
                raise AhaError(f"{path} is a folder; give a .gguf file in it, or add every model under it with "
                               f"`aha models add {path}`.")
            if "/" in name_or_path or "\\" in name_or_path or name_or_path.lower().endswith(".gguf"):
                raise AhaError(f"{path} does not exist; give the path of a .gguf file or a model name from "
                               "`aha models list`.")
        entry = _only_match(entries, name_or_path)
        if not entry.path.exists():
            raise AhaError(f"{entry.name} is in the library but its file {entry.path} is gone; run "
                           "`aha models scan` or remove it with `aha models remove`.")
        return entry


def _only_match(entries: Sequence[LibraryEntry], text: str) -> LibraryEntry:
    """The one entry `text` names, or an AhaError listing what it matches."""
    matches = match_entries(entries, text)
    if not matches:
        raise AhaError(f"no model called {text!r} in the library; run `aha models scan`, "
                       "`aha models add PATH` or give the path of a .gguf file.")
    if len(matches) > 1:
        shown = ", ".join(f"{e.name} ({e.source})" for e in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise AhaError(f"{text!r} matches {len(matches)} models: {shown}{more}; be more specific or give the path.")
    return matches[0]


def _under(path: Path, target: Path) -> bool:
    """`path` is `target` or lies inside it, comparing both as written and with links resolved."""
    written, real = Path(os.path.abspath(path)), Path(_real(path))
    target_written, target_real = Path(os.path.abspath(target)), Path(_real(target))
    return any(p == t or p.is_relative_to(t) for p in (written, real) for t in (target_written, target_real))
