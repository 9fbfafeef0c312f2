"""`aha doctor` and `aha --version`: the real probes on this machine (no GPU, CPU-only llama.cpp, Ollama at a closed
loopback port, then tests/fake_ollama.py answering), the pure facts → lines functions on given facts for the
branches this machine cannot show (a GPU with VRAM, a CUDA llama.cpp, torch absent, Windows, macOS, pipx, a
full disk), and the CLI's exit code, text and --json shape."""

from __future__ import annotations

import json
import os
import sys

import pytest

from engine import __version__, doctor
from engine.cli import main
from engine.doctor import MISSING, OK, WARNING
from tests.fake_ollama import FakeOllama
from tests.support.llama_server import free_port

CUDA_INFO = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | AVX2 = 1 | "
H200 = {"index": 0, "name": "NVIDIA H200", "vram_bytes": 150_000_000_000}


@pytest.fixture(scope="module")
def here():
    """The facts of this machine, gathered once, with Ollama asked at a loopback port nothing listens on."""
    return doctor.gather(ollama_host=f"127.0.0.1:{free_port()}")


def by_what(found: list[doctor.Line]) -> dict[str, doctor.Line]:
    return {line.what: line for line in found}


def test_this_machine_is_told_truthfully(here):
    import llama_cpp
    import torch

    found = by_what(doctor.lines(here))
    assert found["Aha"].detail.startswith(__version__)
    assert found["Data directory"].mark == OK and found["Data directory"].detail == here["data_dir"]["path"]
    assert found["Disk free"].detail.endswith("free in the data directory")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: tests/test_gpu.py is the check for that machine")
    assert found["GPU"].mark == MISSING
    assert "no NVIDIA GPU found" in found["GPU"].detail and f"torch {torch.__version__} sees none" in found["GPU"].detail
    assert found["llama.cpp"].mark == OK and llama_cpp.__version__ in found["llama.cpp"].detail
    assert here["llama_cpp"]["gpu_offload"] is bool(llama_cpp.llama_supports_gpu_offload()) is False
    assert here["llama_cpp"]["backends"] == ["CPU"]
    gpu = found["llama.cpp GPU"]
    assert gpu.mark == MISSING and "CPU-only build" in gpu.detail
    assert "rebuild llama-cpp-python with the GPU backend" in gpu.fix
    assert gpu.command == (f'CMAKE_ARGS="-DGGML_CUDA=on" {here["python"]["executable"]} -m pip install '
                            f"--force-reinstall --no-cache-dir llama-cpp-python=={llama_cpp.__version__}")
    assert found["torch"].mark == OK and found["torch"].detail.startswith(torch.__version__)
    assert found["QLoRA 4-bit"].mark == MISSING and "NVIDIA GPU" in found["QLoRA 4-bit"].detail
    ollama = found["Ollama"]
    assert ollama.mark == MISSING and "connection refused" in ollama.detail
    assert ollama.fix == "start Ollama (`ollama serve`) or set OLLAMA_HOST to where it runs"
    assert all(line.fix for line in found.values() if line.mark != OK)
    assert all(line.fix is line.command is None for line in found.values() if line.mark == OK)


def test_ollama_running_is_reachable_and_something_else_is_not_ollama():
    with FakeOllama(version="0.9.0") as base_url:
        running = doctor.probe_ollama(base_url)
        elsewhere = doctor.probe_ollama(base_url + "/not-ollama")   # answers 404 to /not-ollama/api/version
    assert running == {"url": base_url, "reachable": True, "version": "0.9.0", "problem": None}
    line = doctor._ollama_line({"ollama": running})
    assert (line.mark, line.detail, line.fix) == (OK, f"0.9.0 running at {base_url}", None)
    assert elsewhere["problem"] == "not Ollama"
    line = doctor._ollama_line({"ollama": elsewhere})
    assert line.mark == WARNING and line.fix == "check OLLAMA_HOST's host and port"
    bad = doctor.probe_ollama("127.0.0.1:99999")
    assert bad["url"] is None and "invalid port" in bad["problem"]
    assert doctor._ollama_line({"ollama": bad}).fix.startswith("fix OLLAMA_HOST")


def test_without_torch_the_probe_imports_nothing_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)      # as an install without the train extra: no torch to find
    assert doctor.probe_torch() == {"installed": False}


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in nvidia-smi is a POSIX shell script")
def test_nvidia_smi_is_asked_and_its_failure_said(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=name,memory.total" ] && [ "$2" = "--format=csv,noheader,nounits" ]'
                   ' || exit 3\necho "NVIDIA H200, 143771"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert doctor.probe_nvidia_smi() == {"found": True, "error": None,
                                         "gpus": [{"index": 0, "name": "NVIDIA H200", "vram_bytes": 143771 * 2**20}]}
    smi.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\""
                   "\nexit 9\n")
    failed = doctor.probe_nvidia_smi()
    assert failed["gpus"] == [] and failed["error"].startswith("NVIDIA-SMI has failed")
    facts = cpu_machine()
    facts["nvidia_smi"] = failed
    assert "nvidia-smi: NVIDIA-SMI has failed" in by_what(doctor.lines(facts))["GPU"].detail


# Given facts: the branches this machine cannot show ----------------------------------------------

def cpu_machine() -> dict:
    """This machine's shape as plain facts (Linux, pip in a venv, CPU torch, CPU llama.cpp, no Ollama)."""
    return {"aha": "0.1.0", "python": {"version": "3.11.7", "executable": "/venv/bin/python"},
            "platform": {"system": "Linux", "machine": "x86_64", "text": "Linux-x86_64"}, "install": "pip",
            "data_dir": {"path": "/home/u/.local/share/aha", "writable": True, "free_bytes": 82 * 10**9, "error": None},
            "llama_cpp": {"version": "0.3.36", "pinned": "0.3.36", "gpu_offload": False,
                          "system_info": "CPU : SSE3 = 1 | AVX2 = 1 | ", "backends": ["CPU"], "error": None},
            "torch": {"installed": True, "version": "2.13.0+cpu", "cuda_build": None, "cuda_available": False,
                      "devices": [], "bitsandbytes": "0.50.2", "pinned": "2.13.0", "bitsandbytes_pinned": "0.50.2",
                      "qlora": {"available": False, "reason": "QLoRA 4-bit needs an NVIDIA GPU with CUDA; none was found"},
                      "error": None},
            "nvidia_smi": {"found": False, "gpus": [], "error": None},
            "ollama": {"url": "http://127.0.0.1:11434", "reachable": False, "version": None,
                       "problem": "connection refused"}}


def gpu_machine() -> dict:
    facts = cpu_machine()
    facts["llama_cpp"].update(gpu_offload=True, system_info=CUDA_INFO, backends=doctor.llama_backends(CUDA_INFO))
    facts["torch"].update(version="2.13.0+cu128", cuda_build="12.8", cuda_available=True, devices=[H200],
                          qlora={"available": True, "reason": None})
    facts["nvidia_smi"] = {"found": None, "gpus": [], "error": None}
    facts["ollama"].update(reachable=True, version="0.9.0", problem=None)
    return facts


def test_a_gpu_machine_with_cuda_builds_is_all_ok():
    found = doctor.lines(gpu_machine())
    assert [line.mark for line in found] == [OK] * len(found)
    lines = by_what(found)
    assert lines["GPU"].detail == "NVIDIA H200, 150.0 GB VRAM (seen by torch)"
    assert lines["llama.cpp"].detail == "llama-cpp-python 0.3.36, backends: CUDA, CPU"
    assert lines["llama.cpp GPU"].detail.startswith("yes") and "(CUDA)" in lines["llama.cpp GPU"].detail
    assert lines["torch"].detail == "2.13.0+cu128, CUDA 12.8, 1 GPU"
    assert lines["QLoRA 4-bit"].detail == "available (bitsandbytes 0.50.2)"
    assert doctor.report_text(found).endswith("0 missing, 0 warnings: everything Aha can use is here")
    rows = dict(doctor.about(gpu_machine()))
    assert rows["GPU backend"] == "yes (CUDA)" and rows["torch"] == "2.13.0+cu128, CUDA 12.8, NVIDIA H200 150.0 GB"


def test_a_gpu_without_bitsandbytes_names_the_pip_command():
    facts = gpu_machine()
    facts["torch"].update(bitsandbytes=None, qlora={"available": False, "reason": "QLoRA 4-bit needs bitsandbytes: "
                                                                                  "pip install bitsandbytes"})
    line = by_what(doctor.lines(facts))["QLoRA 4-bit"]
    assert line.mark == MISSING and line.command == "/venv/bin/python -m pip install bitsandbytes==0.50.2"


def test_a_gpu_seen_only_by_nvidia_smi_asks_for_cuda_builds():
    facts = cpu_machine()
    facts["nvidia_smi"] = {"found": True, "gpus": doctor.parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564\n"),
                           "error": None}
    lines = by_what(doctor.lines(facts))
    assert lines["GPU"].mark == OK and lines["GPU"].detail == "NVIDIA GeForce RTX 4090, 25.8 GB VRAM (seen by nvidia-smi)"
    assert lines["llama.cpp GPU"].mark == MISSING and "cannot use the GPU above" in lines["llama.cpp GPU"].detail
    assert lines["torch"].mark == WARNING and "cannot use the NVIDIA GPU" in lines["torch"].detail
    assert lines["torch"].command == "/venv/bin/python -m pip install --force-reinstall torch==2.13.0"
    assert "CUDA build" in lines["torch"].fix
    facts["platform"]["system"] = "Windows"
    lines = by_what(doctor.lines(facts))
    assert lines["torch"].fix == ("install a CUDA build of torch==2.13.0: the command for your CUDA version is on "
                                  "https://pytorch.org/get-started/locally/")
    assert lines["torch"].command is None
    assert lines["llama.cpp GPU"].command == ('$env:CMAKE_ARGS="-DGGML_CUDA=on"; /venv/bin/python -m pip install '
                                               "--force-reinstall --no-cache-dir llama-cpp-python==0.3.36")


def test_without_torch_the_train_extra_is_the_fix_and_pipx_gets_its_own_commands():
    facts = cpu_machine()
    facts["torch"] = {"installed": False}
    facts["install"] = "pipx"
    lines = by_what(doctor.lines(facts))
    assert lines["torch"].mark == lines["QLoRA 4-bit"].mark == MISSING
    assert lines["torch"].command == lines["QLoRA 4-bit"].command == 'pipx install --force "aha-workbench[train]"'
    assert "train extra" in lines["torch"].fix
    assert lines["llama.cpp GPU"].command == ('CMAKE_ARGS="-DGGML_CUDA=on" pipx runpip aha-workbench install '
                                               "--force-reinstall --no-cache-dir llama-cpp-python==0.3.36")
    assert "torch" not in dict(doctor.about(facts))
    facts["install"] = "pip"
    assert by_what(doctor.lines(facts))["torch"].command == '/venv/bin/python -m pip install "aha-workbench[train]"'


def test_the_bundle_points_to_a_pipx_install():
    facts = cpu_machine()
    facts["torch"] = {"installed": False}
    facts["install"] = "bundle"
    lines = by_what(doctor.lines(facts))
    assert lines["torch"].command == 'pipx install --force "aha-workbench[train]"'
    assert lines["llama.cpp GPU"].command == 'CMAKE_ARGS="-DGGML_CUDA=on" pipx install --force --pip-args=--no-cache-dir aha-workbench'


def test_macos_rebuilds_llama_cpp_with_metal():
    facts = cpu_machine()
    facts["platform"]["system"] = "Darwin"
    lines = by_what(doctor.lines(facts))
    assert lines["GPU"].mark == WARNING and "Metal" in lines["GPU"].detail
    assert lines["llama.cpp GPU"].command.startswith('CMAKE_ARGS="-DGGML_METAL=on" ')


def test_low_disk_unwritable_data_dir_and_a_missing_llama_cpp():
    facts = cpu_machine()
    facts["data_dir"]["free_bytes"] = 3 * 10**9
    line = by_what(doctor.lines(facts))["Disk free"]
    assert line.mark == WARNING and line.detail.startswith("3.0 GB free") and "AHA_HOME" in line.fix
    facts["data_dir"]["writable"] = False
    lines = by_what(doctor.lines(facts))
    assert lines["Data directory"].mark == MISSING and "Disk free" not in lines
    facts["llama_cpp"].update(version=None, error="not installed", backends=[])
    lines = by_what(doctor.lines(facts))
    assert lines["llama.cpp"].mark == MISSING and "llama.cpp GPU" not in lines
    assert lines["llama.cpp"].command == "/venv/bin/python -m pip install --force-reinstall llama-cpp-python==0.3.36"
    assert dict(doctor.about(facts))["GPU backend"] == "no"


def test_small_parsers():
    assert doctor.llama_backends(CUDA_INFO) == ["CUDA", "CPU"]
    assert doctor.llama_backends("Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ") == ["Metal", "CPU"]
    assert doctor.llama_backends(None) == []
    assert doctor.parse_nvidia_smi("NVIDIA A100-SXM4-80GB, 81920\nNVIDIA A100-SXM4-80GB, 81920\n[N/A], x\n") == [
        {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "vram_bytes": 81920 * 2**20},
        {"index": 1, "name": "NVIDIA A100-SXM4-80GB", "vram_bytes": 81920 * 2**20}]
    requirements = ["PySide6-Essentials!=6.12.0,<7,>=6.7", "llama-cpp-python==0.3.36",
                    "torch==2.13.0; extra == \"train\"", "llama_cpp_python[server]==0.3.35; extra == \"dev\""]
    assert doctor.pinned_version(requirements, "llama-cpp-python") == "0.3.36"
    assert doctor.pinned_version(requirements, "torch") == "2.13.0"   # the extra's marker does not hide the pin
    assert doctor.pinned_version(requirements, "numpy") is None
    assert doctor.install_kind("/home/u/.local/share/pipx/venvs/aha-workbench") == "pipx"
    assert doctor.install_kind("/home/u/src/aha/.venv") == "pip"
    assert doctor.install_kind("/tmp/_MEI123", frozen=True) == "bundle"


# The CLI -------------------------------------------------------------------------------------------

def test_cli_doctor_text_and_json(monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["ok", "Aha", __version__, "(pip", "install)"]
    for line in text.splitlines():
        if line.startswith((MISSING, WARNING)):
            assert "fix: " in text.split(line, 1)[1].splitlines()[1]   # the next line is its fix
    assert main(["doctor", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"lines", "counts", "facts"}
    assert all(set(line) == {"mark", "what", "detail", "fix", "command"} for line in document["lines"])
    assert sum(document["counts"].values()) == len(document["lines"])
    assert document["facts"]["ollama"]["problem"] == "connection refused"


def test_version_names_llama_cpp(capsys):
    import llama_cpp

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip().startswith(f"aha {__version__} (llama-cpp-python {llama_cpp.__version__}, "
                                                      "Python 3.")


def test_an_amx_cpu_says_repacking_is_off_and_how_to_try_it():
    facts = cpu_machine()
    facts["llama_cpp"]["system_info"] = "CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 | "
    line = by_what(doctor.lines(facts))["llama.cpp AMX"]
    assert line.mark == OK and "repacking for AMX is off" in line.detail and "AHA_LLAMA_REPACK=1" in line.detail
    facts["llama_cpp"]["repack_env"] = "1"
    line = by_what(doctor.lines(facts))["llama.cpp AMX"]
    assert line.mark == WARNING and "unset AHA_LLAMA_REPACK" in line.fix
    assert "llama.cpp AMX" not in by_what(doctor.lines(cpu_machine()))


def test_this_machines_probe_reports_amx_as_llama_cpp_sees_it():
    import llama_cpp

    amx = b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
    assert ("llama.cpp AMX" in by_what(doctor.lines(doctor.gather()))) is amx
