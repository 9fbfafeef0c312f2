"""`aha doctor` and the About dialog's facts: what this machine can do for Aha, and the fix for each missing piece.

Two halves: probes gather facts (llama.cpp's build, torch and its CUDA devices, QLoRA 4-bit, nvidia-smi, Ollama,
the data directory and its free space) into one JSON-ready dict, and pure functions turn facts into lines (a mark,
what, a detail, the fix). Probes are quick (Ollama: 1 s at most; nvidia-smi: 3 s) and import torch only when it is
installed. The doctor changes nothing: it never installs, starts or downloads anything.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

from engine import __version__

OK, WARNING, MISSING = "ok", "warning", "missing"  # a line's mark
LOW_DISK_BYTES = 10 * 10**9     # below this free in the data dir, a warning: a 1.5B model's GGUF (1–3.5 GB) and a
                                # run's checkpoints (several GB) would not fit for long
OLLAMA_TIMEOUT_S = 1.0
NVIDIA_SMI_TIMEOUT_S = 3.0
DISTRIBUTION = "aha-workbench"
TORCH_INSTALL_PAGE = "https://pytorch.org/get-started/locally/"


@dataclass(frozen=True)
class Line:
    """One finding: `mark` is ok, warning or missing; `fix` says what to do in words (None when nothing is to be
    done) and `command`, when the fix is one, the exact command line to run."""

    mark: str
    what: str
    detail: str
    fix: str | None = None
    command: str | None = None


# Probes: the facts, as plain dicts ---------------------------------------------------------------

def package_version(distribution: str, module: str | None = None) -> str | None:
    """An installed distribution's version from its metadata (nothing imported), None when not installed;
    "unknown" when the module is importable but its metadata is gone (a bundled app)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        if module and importlib.util.find_spec(module) is not None:
            return "unknown"
        return None


def pinned_version(requirements: list[str] | None, name: str) -> str | None:
    """The `==` pin of `name` among requirement strings (importlib.metadata.requires): ["llama-cpp-python==0.3.36",
    'torch==2.13.0; extra == "train"', …] → "0.3.36" for llama-cpp-python; a pin without a marker wins."""
    wanted = re.sub(r"[-_.]+", "-", name).lower()
    pins = []
    for requirement in requirements or []:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s,;]+)", requirement)
        if match and re.sub(r"[-_.]+", "-", match.group(1)).lower() == wanted:
            pins.append((";" in requirement, match.group(2)))
    return min(pins)[1] if pins else None


def _requirements() -> list[str]:
    try:
        return importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def version_line() -> str:
    """`aha --version`: "aha 0.1.0 (llama-cpp-python 0.3.36, Python 3.11.9)", read from metadata, nothing imported."""
    llama = package_version("llama-cpp-python", "llama_cpp") or "not installed"
    return f"aha {__version__} (llama-cpp-python {llama}, Python {platform.python_version()})"


def install_kind(prefix: str, frozen: bool = False) -> str:
    """How Aha was installed: "bundle" (the standalone app, sys.frozen), "pipx" (sys.prefix is a pipx venv) or
    "pip" (a venv or a checkout)."""
    if frozen:
        return "bundle"
    return "pipx" if re.search(r"[/\\]pipx[/\\](?:.*[/\\])?venvs[/\\]", prefix + os.sep) else "pip"


def llama_backends(system_info: str | None) -> list[str]:
    """The backends named in llama.cpp's system info: "CUDA : ARCHS = 890 | … | CPU : SSE3 = 1 | …" →
    ["CUDA", "CPU"] (a backend is a `NAME : ` entry; features are `NAME = value`)."""
    return list(dict.fromkeys(re.findall(r"(?:^|\|)\s*([A-Za-z][\w-]*) : ", system_info or "")))


def probe_llama_cpp() -> dict[str, Any]:
    """{"version", "pinned", "gpu_offload", "system_info", "backends", "error"}; imports llama_cpp (~1 s cold)."""
    facts: dict[str, Any] = {"version": package_version("llama-cpp-python", "llama_cpp"),
                             "pinned": pinned_version(_requirements(), "llama-cpp-python"),
                             "gpu_offload": None, "system_info": None, "backends": [], "error": None}
    if facts["version"] is None:
        facts["error"] = "not installed"
        return facts
    try:
        import llama_cpp

        facts["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        info = llama_cpp.llama_print_system_info()
        facts["system_info"] = (info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)).strip()
    except (ImportError, OSError, AttributeError) as error:  # a wheel whose native library does not load
        facts["error"] = f"{type(error).__name__}: {error}"
    facts["backends"] = llama_backends(facts["system_info"])
    facts["repack_env"] = os.environ.get("AHA_LLAMA_REPACK")
    return facts


def probe_torch() -> dict[str, Any]:
    """{"installed": False} without torch; else its version, CUDA build, devices and QLoRA verdict (the same
    ones `aha inspect devices` gives: engine.train.inspect.devices) and bitsandbytes' version."""
    if importlib.util.find_spec("torch") is None:
        return {"installed": False}
    facts: dict[str, Any] = {"installed": True, "version": None, "cuda_build": None, "cuda_available": False,
                             "devices": [], "qlora": None, "bitsandbytes": package_version("bitsandbytes"),
                             "pinned": pinned_version(_requirements(), "torch"),
                             "bitsandbytes_pinned": pinned_version(_requirements(), "bitsandbytes"), "error": None}
    try:
        import torch

        from engine.train.inspect import devices

        facts.update(version=str(torch.__version__), cuda_build=torch.version.cuda)
        found = devices()
    except Exception as error:  # noqa: BLE001 - a broken torch install is a finding, not a crash of the doctor
        facts["error"] = f"{type(error).__name__}: {error}"
        return facts
    facts.update(cuda_available=bool(found["cuda"]), devices=found["cuda"], qlora=found["qlora"])
    return facts


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits` lines ("NVIDIA H200, 143771",
    MiB) → [{"index": 0, "name": "NVIDIA H200", "vram_bytes": 143771 * 2**20}]."""
    gpus = []
    for line in text.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip() and memory.strip().isdigit():
            gpus.append({"index": len(gpus), "name": name.strip(), "vram_bytes": int(memory) * 2**20})
    return gpus


def probe_nvidia_smi() -> dict[str, Any]:
    """{"found": bool, "gpus": [...], "error"}: the driver's own view, for when torch is absent or CPU-only."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return {"found": False, "gpus": [], "error": None}
    try:
        done = subprocess.run([executable, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"found": True, "gpus": [], "error": f"{type(error).__name__}: {error}"}
    if done.returncode != 0:  # e.g. "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
        said = (done.stderr or done.stdout).strip().splitlines()
        return {"found": True, "gpus": [], "error": said[-1] if said else f"exit status {done.returncode}"}
    return {"found": True, "gpus": parse_nvidia_smi(done.stdout), "error": None}


def probe_ollama(host: str | None = None, timeout_s: float = OLLAMA_TIMEOUT_S) -> dict[str, Any]:
    """{"url", "reachable", "version", "problem"}: GET /api/version at OLLAMA_HOST (engine.export.ollama's rules),
    `problem` one of "connection refused", "timed out", … or "not Ollama" (something else answers there)."""
    import http.client

    from engine.errors import AhaError
    from engine.export.ollama import OllamaClient, _reason, ollama_base_url

    try:
        url = ollama_base_url(host)
    except AhaError as error:
        return {"url": None, "reachable": False, "version": None, "problem": str(error)}
    try:
        version = OllamaClient(url, timeout_s=timeout_s).version()
    except AhaError as error:
        cause = error.__cause__
        problem = _reason(cause) if isinstance(cause, (OSError, http.client.HTTPException)) else "not Ollama"
        return {"url": url, "reachable": False, "version": None, "problem": problem}
    except ValueError:  # a body that is not JSON
        return {"url": url, "reachable": False, "version": None, "problem": "not Ollama"}
    return {"url": url, "reachable": True, "version": version or None, "problem": None}


def probe_data_dir() -> dict[str, Any]:
    """{"path", "writable", "free_bytes", "error"} of the data directory (created on first use, as always)."""
    from engine.paths import data_dir

    try:
        path = data_dir()
        usage = shutil.disk_usage(path)
    except OSError as error:
        return {"path": os.environ.get("AHA_HOME"), "writable": False, "free_bytes": None,
                "error": f"{type(error).__name__}: {error}"}
    return {"path": str(path), "writable": os.access(path, os.W_OK), "free_bytes": int(usage.free), "error": None}


def gather(ollama_host: str | None = None) -> dict[str, Any]:
    """Every fact the doctor's lines are made of, as one JSON-ready dict."""
    torch = probe_torch()
    smi = probe_nvidia_smi() if not torch.get("cuda_available") else {"found": None, "gpus": [], "error": None}
    return {"aha": __version__,
            "python": {"version": platform.python_version(), "executable": sys.executable},
            "platform": {"system": platform.system(), "machine": platform.machine(), "text": platform.platform()},
            "install": install_kind(sys.prefix, bool(getattr(sys, "frozen", False))),
            "data_dir": probe_data_dir(), "llama_cpp": probe_llama_cpp(), "torch": torch, "nvidia_smi": smi,
            "ollama": probe_ollama(ollama_host)}


# Facts → lines (pure) -----------------------------------------------------------------------------

def _bytes(value: int) -> str:
    from engine.jobs import format_bytes

    return format_bytes(value)


def gpus(facts: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The CUDA GPUs and who saw them: torch's devices, else nvidia-smi's (torch absent or a CPU build)."""
    if facts["torch"].get("devices"):
        return facts["torch"]["devices"], "torch"
    if facts["nvidia_smi"].get("gpus"):
        return facts["nvidia_smi"]["gpus"], "nvidia-smi"
    return [], None


def pip_command(facts: dict[str, Any]) -> str:
    """The pip that installs into Aha's own environment: `pipx runpip aha-workbench` or `<python> -m pip`
    (a bundle has no pip: its fixes install Aha with pipx instead)."""
    if facts["install"] == "pipx":
        return f"pipx runpip {DISTRIBUTION}"
    return f"{facts['python']['executable']} -m pip"


def llama_gpu_command(facts: dict[str, Any]) -> str:
    """The reinstall of llama-cpp-python with the platform's GPU backend (CUDA; Metal on macOS), from source
    (a C/C++ compiler, and the CUDA toolkit for CUDA), at Aha's pinned version."""
    llama = facts["llama_cpp"]
    version = llama.get("pinned") or (llama.get("version") if llama.get("version") not in (None, "unknown") else None)
    package = f"llama-cpp-python=={version}" if version else "llama-cpp-python"
    flag = "-DGGML_METAL=on" if facts["platform"]["system"] == "Darwin" else "-DGGML_CUDA=on"
    command = f"{pip_command(facts)} install --force-reinstall --no-cache-dir {package}"
    if facts["install"] == "bundle":  # the bundle's llama.cpp is what it was built with: install Aha with pipx
        command = f"pipx install --force --pip-args=--no-cache-dir {DISTRIBUTION}"
    if facts["platform"]["system"] == "Windows":
        return f'$env:CMAKE_ARGS="{flag}"; {command}'
    return f'CMAKE_ARGS="{flag}" {command}'


TRAIN_FIX = "add the train extra (torch, transformers, peft, bitsandbytes)"


def train_command(facts: dict[str, Any]) -> str:
    """The train extra added to this install: pipx reinstalls with it, pip installs it beside."""
    if facts["install"] in ("pipx", "bundle"):  # the bundle leaves training out: a pipx install has it
        return f'pipx install --force "{DISTRIBUTION}[train]"'
    return f'{pip_command(facts)} install "{DISTRIBUTION}[train]"'


def torch_cuda_fix(facts: dict[str, Any]) -> tuple[str, str | None]:
    """(words, command) for a CPU-only torch on a machine with an NVIDIA GPU."""
    torch = facts["torch"]
    package = f"torch=={torch['pinned']}" if torch.get("pinned") else "torch"
    if facts["platform"]["system"] == "Linux":  # PyPI's Linux wheel of torch is the CUDA build
        return ("reinstall torch from PyPI, whose Linux wheel is the CUDA build",
                f"{pip_command(facts)} install --force-reinstall {package}")
    return f"install a CUDA build of {package}: the command for your CUDA version is on {TORCH_INSTALL_PAGE}", None


def gpu_backends(llama: dict[str, Any]) -> str:
    """The build's backends that are not the CPU's ("CUDA", "Metal", …), or "GPU" when its info names none."""
    return ", ".join(name for name in llama["backends"] if name not in ("CPU", "BLAS", "RPC")) or "GPU"


def _gpu_line(facts: dict[str, Any]) -> Line:
    found, source = gpus(facts)
    if found:
        names = "; ".join(f"{gpu['name']}, {_bytes(gpu['vram_bytes'])} VRAM" for gpu in found)
        return Line(OK, "GPU", f"{names} (seen by {source})")
    if facts["platform"]["system"] == "Darwin":
        return Line(WARNING, "GPU", "no CUDA GPU on macOS: llama.cpp can use the Apple GPU through Metal, "
                                    "training runs on the CPU",
                    "nothing to install for chat; train on a machine with an NVIDIA GPU for GPU speed")
    torch, smi = facts["torch"], facts["nvidia_smi"]
    seen = [f"torch {torch['version']} sees none" if torch.get("version") else "torch is not installed",
            "nvidia-smi is not installed" if smi.get("found") is False else
            f"nvidia-smi: {smi['error']}" if smi.get("error") else "nvidia-smi lists none"]
    return Line(MISSING, "GPU", f"no NVIDIA GPU found ({'; '.join(seen)}): chat, training and export run on the CPU",
                "on a machine with an NVIDIA GPU, install its driver (then `nvidia-smi` lists the GPU) and run "
                "`aha doctor` again")


def _llama_lines(facts: dict[str, Any]) -> list[Line]:
    llama = facts["llama_cpp"]
    if llama["error"]:
        package = f"llama-cpp-python=={llama['pinned']}" if llama.get("pinned") else "llama-cpp-python"
        return [Line(MISSING, "llama.cpp", f"llama-cpp-python {llama['error']}: no chat, no quantized export",
                     "reinstall llama-cpp-python", f"{pip_command(facts)} install --force-reinstall {package}")]
    backends = ", ".join(llama["backends"]) or "unknown"
    lines = [Line(OK, "llama.cpp", f"llama-cpp-python {llama['version']}, backends: {backends}")]
    if llama["gpu_offload"]:
        lines.append(Line(OK, "llama.cpp GPU", f"yes: chat offloads layers to the GPU ({gpu_backends(llama)})"))
    else:
        where = "the GPU above" if gpus(facts)[0] else "a GPU"
        lines.append(Line(MISSING, "llama.cpp GPU", f"no: a CPU-only build, chat cannot use {where}",
                          "rebuild llama-cpp-python with the GPU backend (needs a C/C++ compiler and, for CUDA, "
                          "the CUDA toolkit)", llama_gpu_command(facts)))
    if "AMX_INT8 = 1" in (llama["system_info"] or ""):
        if llama.get("repack_env") == "1":
            lines.append(Line(WARNING, "llama.cpp AMX", "weight repacking for AMX is on (AHA_LLAMA_REPACK=1): "
                                                        "llama.cpp's AMX kernels crash on some models (llama.cpp#20824)",
                              "unset AHA_LLAMA_REPACK if a model crashes the app at its first reply"))
        else:
            lines.append(Line(OK, "llama.cpp AMX", "weight repacking for AMX is off: llama.cpp's AMX kernels crash on "
                                                   "some models (llama.cpp#20824); prompts are slower on this CPU, "
                                                   "AHA_LLAMA_REPACK=1 tries it"))
    return lines


def _torch_lines(facts: dict[str, Any]) -> list[Line]:
    torch = facts["torch"]
    if not torch["installed"]:
        return [Line(MISSING, "torch", "not installed: no training, no evaluation of HF checkpoints (chat and "
                                       "export work)", TRAIN_FIX, train_command(facts)),
                Line(MISSING, "QLoRA 4-bit", "needs torch and bitsandbytes (the train extra)", TRAIN_FIX,
                     train_command(facts))]
    if torch["error"]:
        package = f"torch=={torch['pinned']}" if torch.get("pinned") else "torch"
        return [Line(MISSING, "torch", f"installed but does not load ({torch['error']})", "reinstall torch",
                     f"{pip_command(facts)} install --force-reinstall {package}")]
    if torch["cuda_available"]:
        count = len(torch["devices"])
        line = Line(OK, "torch", f"{torch['version']}, CUDA {torch['cuda_build']}, {count} GPU{'s' if count != 1 else ''}")
    elif facts["nvidia_smi"].get("gpus"):
        build = f"CUDA {torch['cuda_build']} build" if torch["cuda_build"] else "a CPU-only build"
        line = Line(WARNING, "torch", f"{torch['version']} is {build} and cannot use the NVIDIA GPU nvidia-smi lists",
                    *torch_cuda_fix(facts))
    else:
        build = f"CUDA {torch['cuda_build']} build, no GPU to use" if torch["cuda_build"] else "CPU-only build"
        line = Line(OK, "torch", f"{torch['version']} ({build}): training runs on the CPU")
    qlora = torch["qlora"] or {"available": False, "reason": "unknown"}
    if qlora["available"]:
        qlora_line = Line(OK, "QLoRA 4-bit", f"available (bitsandbytes {torch['bitsandbytes']})")
    elif torch["cuda_available"]:  # a GPU, no bitsandbytes
        package = f"bitsandbytes=={torch['bitsandbytes_pinned']}" if torch.get("bitsandbytes_pinned") else "bitsandbytes"
        qlora_line = Line(MISSING, "QLoRA 4-bit", qlora["reason"].removeprefix("QLoRA 4-bit "),
                          "install bitsandbytes", f"{pip_command(facts)} install {package}")
    else:
        have = f"bitsandbytes {torch['bitsandbytes']} is installed" if torch["bitsandbytes"] else "bitsandbytes is not installed"
        qlora_line = Line(MISSING, "QLoRA 4-bit", f"{qlora['reason'].removeprefix('QLoRA 4-bit ')} ({have})",
                          "a machine with an NVIDIA GPU (see the GPU line); meanwhile LoRA in bf16/f32 (the default) "
                          "trains on the CPU")
    return [line, qlora_line]


def _ollama_line(facts: dict[str, Any]) -> Line:
    ollama = facts["ollama"]
    if ollama["reachable"]:
        return Line(OK, "Ollama", f"{ollama['version'] or 'version unknown'} running at {ollama['url']}")
    if ollama["url"] is None:
        return Line(WARNING, "Ollama", ollama["problem"], "fix OLLAMA_HOST (host:port, e.g. 127.0.0.1:11434)")
    if ollama["problem"] == "not Ollama":
        return Line(WARNING, "Ollama", f"something answers at {ollama['url']}, but not as Ollama does",
                    "check OLLAMA_HOST's host and port")
    return Line(MISSING, "Ollama", f"not reachable at {ollama['url']} ({ollama['problem']}): `aha export --ollama` "
                                   "cannot register models", "start Ollama (`ollama serve`) or set OLLAMA_HOST to "
                                                             "where it runs")


def _data_lines(facts: dict[str, Any]) -> list[Line]:
    data = facts["data_dir"]
    if data["error"] or not data["writable"]:
        problem = data["error"] or "not writable"
        return [Line(MISSING, "Data directory", f"{data['path']}: {problem}",
                     "set AHA_HOME to a folder you can write to")]
    lines = [Line(OK, "Data directory", data["path"])]
    free = _bytes(data["free_bytes"])
    if data["free_bytes"] < LOW_DISK_BYTES:
        lines.append(Line(WARNING, "Disk free", f"{free} free in the data directory: a model and a run's checkpoints "
                                                "take several GB",
                          "free space on that disk, or set AHA_HOME to a folder on a larger one"))
    else:
        lines.append(Line(OK, "Disk free", f"{free} free in the data directory"))
    return lines


def lines(facts: dict[str, Any]) -> list[Line]:
    """The doctor's screen, in order: Aha and Python, the data directory and its disk, the GPU, llama.cpp,
    torch and QLoRA, Ollama. Every line not ok carries its fix."""
    found = [Line(OK, "Aha", f"{facts['aha']} ({facts['install']} install)"),
             Line(OK, "Python", f"{facts['python']['version']} ({facts['python']['executable']})"),
             Line(OK, "Platform", facts["platform"]["text"])]
    return [*found, *_data_lines(facts), _gpu_line(facts), *_llama_lines(facts), *_torch_lines(facts),
            _ollama_line(facts)]


def about(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """The About dialog's rows: version, llama.cpp build, its GPU backend (yes/no), torch and CUDA when
    installed, the data directory."""
    llama = facts["llama_cpp"]
    rows = [("Version", f"Aha {facts['aha']}, Python {facts['python']['version']}")]
    if llama["error"]:
        rows += [("llama.cpp", f"llama-cpp-python {llama['error']}"), ("GPU backend", "no")]
    else:
        rows.append(("llama.cpp", f"llama-cpp-python {llama['version']} ({', '.join(llama['backends']) or 'unknown'})"))
        rows.append(("GPU backend", f"yes ({gpu_backends(llama)})" if llama["gpu_offload"] else "no (CPU only)"))
    torch = facts["torch"]
    if torch["installed"] and not torch.get("error"):
        cuda = (f"CUDA {torch['cuda_build']}, " + "; ".join(f"{gpu['name']} {_bytes(gpu['vram_bytes'])}"
                                                           for gpu in torch["devices"])
                if torch["cuda_available"] else "CUDA not available")
        rows.append(("torch", f"{torch['version']}, {cuda}"))
    elif torch.get("error"):
        rows.append(("torch", f"installed but does not load ({torch['error']})"))
    rows.append(("Data directory", str(facts["data_dir"]["path"])))
    return rows


def counts(found: list[Line]) -> dict[str, int]:
    return {mark: sum(line.mark == mark for line in found) for mark in (OK, WARNING, MISSING)}


def report_text(found: list[Line]) -> str:
    """The lines for a terminal: `ok      what            detail`, the fix under it (and its command on a line of
    its own, to copy), then a count."""
    width = max(len(line.what) for line in found)
    out = []
    for line in found:
        out.append(f"{line.mark:8s}{line.what:{width}s}  {line.detail}")
        if line.fix:
            out.append(f"{'':8s}{'':{width}s}  fix: {line.fix}" + (":" if line.command else ""))
        if line.command:
            out.append(f"{'':8s}{'':{width}s}    {line.command}")
    return "\n".join([*out, "", summary(found)])


def summary(found: list[Line]) -> str:
    """ "4 missing, 1 warning: each names its fix", or "0 missing, 0 warnings: everything Aha can use is here"."""
    tally = counts(found)
    return (f"{tally[MISSING]} missing, {tally[WARNING]} warning{'s' if tally[WARNING] != 1 else ''}"
            + (": each names its fix" if tally[MISSING] or tally[WARNING] else ": everything Aha can use is here"))


def report(facts: dict[str, Any]) -> dict[str, Any]:
    """`aha doctor --json`: {"lines": [{"mark", "what", "detail", "fix", "command"}], "counts": {...}, "facts": {...}}."""
    found = lines(facts)
    return {"lines": [asdict(line) for line in found], "counts": counts(found), "facts": facts}
