"""Models: read GGUF headers, find models on disk, keep the library index, download from the Hub; never run one.

gguf_info — what a .gguf file says about itself, from its header alone (read_gguf_info, describe)
discovery — GGUF files in Ollama, LM Studio, the HF hub cache and user folders (Found, discover, default_roots)
library — the JSON index of a user's models and name lookup (Library, LibraryEntry, match_entries)
hub — pull(): a resumable, sha256-verified Hugging Face download added to the library
"""

from engine.models.discovery import (
    DISCOVERERS,
    DISCOVERY_SOURCES,
    OLLAMA_MODEL_LAYER,
    OLLAMA_REGISTRY,
    SOURCES,
    Discovery,
    Found,
    default_roots,
    discover,
    discover_folder,
    discover_hf_cache,
    discover_lmstudio,
    discover_ollama,
    gguf_files,
    hf_cache_root,
    is_model_file,
    lmstudio_roots,
    model_name,
    normalize_ollama_name,
    ollama_display_name,
    ollama_roots,
)
from engine.models.gguf_info import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MAX_DIMS,
    SUPPORTED_VERSIONS,
    THINK_TOKENS,
    GGUFArray,
    GGUFInfo,
    check_gguf,
    describe,
    format_count,
    quantization_name,
    read_gguf_info,
    reasoning_evidence,
)
from engine.models.hub import R1_DEFAULT, pull
from engine.models.library import LIBRARY_VERSION, Changes, Library, LibraryEntry, match_entries, merge_scan

__all__ = [
    # gguf_info
    "DEFAULT_ALIGNMENT", "GGUF_MAGIC", "MAX_DIMS", "SUPPORTED_VERSIONS", "THINK_TOKENS",
    "GGUFArray", "GGUFInfo", "check_gguf", "describe", "format_count", "quantization_name", "read_gguf_info",
    "reasoning_evidence",
    # discovery
    "DISCOVERERS", "DISCOVERY_SOURCES", "OLLAMA_MODEL_LAYER", "OLLAMA_REGISTRY", "SOURCES",
    "Discovery", "Found", "default_roots", "discover", "discover_folder", "discover_hf_cache", "discover_lmstudio",
    "discover_ollama", "gguf_files", "hf_cache_root", "is_model_file", "lmstudio_roots", "model_name",
    "normalize_ollama_name", "ollama_display_name", "ollama_roots",
    # library
    "LIBRARY_VERSION", "Changes", "Library", "LibraryEntry", "match_entries", "merge_scan",
    # hub
    "R1_DEFAULT", "pull",
]
