"""Finding GGUF files on disk: Ollama's manifest/blob store, LM Studio's models folders, the Hugging Face hub
cache and user folders, and where each of them lives on this machine. Goes by paths, names and manifests only:
never reads a GGUF header (engine.models.gguf_info) and knows nothing of the library index."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

SOURCES = ("file", "folder", "ollama", "lmstudio", "hf-cache")
DISCOVERY_SOURCES = ("ollama", "lmstudio", "hf-cache")   # `scan` refreshes these; the user's own entries stay
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_REGISTRY = "registry.ollama.ai"
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


@dataclass(frozen=True)
class Found:
    """A GGUF file a discovery source knows about."""

    path: Path
    source: str                      # one of SOURCES
    name: str                        # display name
    ollama_name: str | None = None   # "model:tag" for Ollama
    origin: str | None = None        # "publisher/repo" for LM Studio and the HF cache


class Discovery(NamedTuple):
    found: list[Found]
    skipped: list[str]               # one line per file or manifest that looked like a model but is not usable


def model_name(path: Path) -> str:
    """The display name of a GGUF file: its name without .gguf and without a split suffix (-00001-of-00003)."""
    stem = path.name.removesuffix(".gguf").removesuffix(".GGUF")
    return _SHARD.sub("", stem)


def is_model_file(path: Path) -> bool:
    """A .gguf that is a model to list: not a multimodal projector (mmproj), not a later shard of a split model."""
    name = path.name
    if not name.lower().endswith(".gguf") or name.startswith(".") or "mmproj" in name.lower():
        return False
    shard = _SHARD.search(name[:-5])
    return shard is None or int(shard.group(1)) == 1


def gguf_files(folder: Path) -> list[Path]:
    """The model .gguf files under `folder`, recursively (folder links are not followed), sorted."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(parent) / name for name in sorted(files) if is_model_file(Path(name)))
    return found


def is_hf_checkpoint(folder: Path) -> bool:
    """A Hugging Face checkpoint folder (config.json beside *.safetensors): no GGUF yet, `aha export` makes one."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def export_command(folder: Path) -> str:
    """The `aha export` command that converts a checkpoint folder to a Q8_0 GGUF beside it."""
    folder = Path(folder)
    return shlex.join(["aha", "export", str(folder), "-o", str(folder.parent / f"{folder.name}-q8_0.gguf"),
                       "--type", "q8_0"])


def discover_folder(root: Path, source: str = "folder") -> Discovery:
    """Every model .gguf under a user-chosen folder."""
    return Discovery([Found(path, source, model_name(path)) for path in gguf_files(Path(root))], [])


def discover_lmstudio(root: Path) -> Discovery:
    """LM Studio's models folder: <publisher>/<repo>/<file>.gguf."""
    root = Path(root)
    found = []
    for path in gguf_files(root):
        parts = path.relative_to(root).parts
        origin = "/".join(parts[:2]) if len(parts) >= 3 else None
        found.append(Found(path, "lmstudio", model_name(path), origin=origin))
    return Discovery(found, [])


def discover_hf_cache(root: Path) -> Discovery:
    """The Hugging Face hub cache: models--<org>--<repo>/snapshots/<revision>/…/*.gguf, links resolved to blobs."""
    found, skipped, seen = [], [], set()
    for repo in sorted(Path(root).glob("models--*")):
        origin = repo.name.removeprefix("models--").replace("--", "/", 1)
        for path in gguf_files(repo / "snapshots"):
            blob = path.resolve()
            if not blob.is_file():
                skipped.append(f"{path}: its blob is missing (an interrupted download?)")
            elif blob not in seen:
                seen.add(blob)
                found.append(Found(blob, "hf-cache", model_name(path), origin=origin))
    return Discovery(found, skipped)


def ollama_display_name(registry: str, namespace: str, model: str, tag: str) -> str:
    """As `ollama list` shows it: "deepseek-r1:7b", "user/model:tag", "hf.co/org/repo:Q4_K_M"."""
    if registry == OLLAMA_REGISTRY:
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{registry}/{namespace}/{model}:{tag}"


def normalize_ollama_name(name: str) -> str:
    """What a user types → the name Ollama lists: default tag `latest`, default registry and namespace dropped."""
    name = name.strip().removeprefix(f"{OLLAMA_REGISTRY}/").removeprefix("library/")
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _ollama_model(manifest: Path, blobs: Path) -> Path | str:
    """The blob holding a manifest's model layer, or why there is none."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"unreadable manifest ({exc.__class__.__name__})"
    layers = data.get("layers") if isinstance(data, dict) else None
    models = [layer for layer in layers or [] if isinstance(layer, dict)
              and layer.get("mediaType") == OLLAMA_MODEL_LAYER]
    if not models:
        return "no model layer in the manifest"
    digest = _DIGEST.fullmatch(str(models[0].get("digest", "")))
    if digest is None:
        return f"model layer has an unexpected digest {models[0].get('digest')!r}"
    blob = blobs / f"sha256-{digest.group(1)}"
    return blob if blob.is_file() else f"blob {blob.name} is missing"


def discover_ollama(root: Path) -> Discovery:
    """Ollama's store: manifests/<registry>/<namespace>/<model>/<tag> (JSON) → blobs/sha256-<hex> (the GGUF)."""
    root = Path(root)
    found, skipped = [], []
    manifests = root / "manifests"
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file() and not p.name.startswith(".")):
        parts = manifest.relative_to(manifests).parts
        if len(parts) != 4:
            skipped.append(f"{manifest}: not at manifests/<registry>/<namespace>/<model>/<tag>")
            continue
        name = ollama_display_name(*parts)
        blob = _ollama_model(manifest, root / "blobs")
        if isinstance(blob, str):
            skipped.append(f"Ollama model {name}: {blob}")
        else:
            found.append(Found(blob, "ollama", name, ollama_name=name))
    return Discovery(found, skipped)


DISCOVERERS = {"ollama": discover_ollama, "lmstudio": discover_lmstudio, "hf-cache": discover_hf_cache}


def ollama_roots(env: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """`OLLAMA_MODELS`, else ~/.ollama/models (and a Linux service install's store)."""
    env, home = os.environ if env is None else env, Path.home() if home is None else home
    if env.get("OLLAMA_MODELS"):
        return [Path(env["OLLAMA_MODELS"]).expanduser()]
    roots = [home / ".ollama" / "models"]
    if sys.platform.startswith("linux"):
        roots.append(Path("/usr/share/ollama/.ollama/models"))
    return roots


def lmstudio_roots(env: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """LM Studio's models folders: <home>/models for the home ~/.lmstudio-home-pointer names, ~/.lmstudio and
    ~/.cache/lm-studio, plus a `downloadsFolder` set in a home's settings.json."""
    home = Path.home() if home is None else home
    homes = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        pointed = (home / ".lmstudio-home-pointer").read_text(encoding="utf-8").strip()
        if pointed:
            homes.append(Path(pointed).expanduser())
    homes += [home / ".lmstudio", home / ".cache" / "lm-studio"]
    roots = []
    for studio in homes:
        roots.append(studio / "models")
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            downloads = json.loads((studio / "settings.json").read_text(encoding="utf-8")).get("downloadsFolder")
            if downloads:
                roots.append(Path(downloads).expanduser())
    return list(dict.fromkeys(roots))


def hf_cache_root(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """As huggingface_hub resolves it: HF_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME or ~/.cache."""
    env, home = os.environ if env is None else env, Path.home() if home is None else home
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "huggingface" / "hub"


def default_roots() -> dict[str, list[Path]]:
    """Where `scan` looks on this machine, per discovery source."""
    return {"ollama": ollama_roots(), "lmstudio": lmstudio_roots(), "hf-cache": [hf_cache_root()]}


def discover(roots: Mapping[str, Sequence[Path]] | None = None) -> Discovery:
    """What the discovery sources find under `roots` (source → folders; by default default_roots()), added to
    nothing; a root that is not a folder is passed over."""
    roots = default_roots() if roots is None else roots
    found, skipped = [], []
    for source, source_roots in roots.items():
        for root in source_roots:
            if Path(root).is_dir():
                discovery = DISCOVERERS[source](Path(root))
                found += discovery.found
                skipped += discovery.skipped
    return Discovery(found, skipped)
