#!/usr/bin/env bash
# Everything Aha checks on an NVIDIA GPU, in one go and under 10 minutes on one H200:
#   1. pytest -m gpu: the `gpu`-marked tests (tests/test_gpu.py: QLoRA on a real 4-bit CUDA base, the fused
#      head under bf16 against float64, bf16 LoRA with checkpointing + micro-batches + resume, the benchmark's
#      smoke test; the 2-GPU NCCL test runs only where 2 GPUs are visible);
#   2. bench/gpu_grpo.py in its default configuration (QLoRA, 8 × 512 tokens, no gradient checkpointing,
#      1 micro-batch), then with --gradient-checkpointing --gradient-accumulation-steps 4, on the same GPU.
# Prints each benchmark's command, GPU, driver, versions and its three peak-memory numbers (allocated,
# reserved, NVML), and a summary at the end. Logs go to $OUT (the device tool's folder) or $WORK.
#
#   bash bench/gpu_check.sh            # PYTHON=path/to/python to use another interpreter than .venv's
#
# Exit status: 0 when every part passed; 2 when torch sees no CUDA GPU (nothing would have run); else the
# first failing part's status (124: it ran past its time limit).
set -u -o pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WORK=${WORK:-${TMPDIR:-/tmp}/aha-gpu-check}  # the 1.5B-shaped checkpoint (3 GB) and runs: not under $OUT
LOGS=${OUT:-$WORK}
mkdir -p "$WORK" "$LOGS"
export HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen  # nothing here downloads anything
started=$(date +%s)

nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv 2>&1 || true
if ! "$PYTHON" -c "import sys, torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '-', torch.cuda.device_count(), 'GPU(s) visible'); sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA GPU with $PYTHON: nothing to check (every gpu test would be skipped)" >&2
    exit 2
fi

status=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.txt, keep the first failure
    local name=$1 limit=$2
    shift 2
    echo; echo "=== $name (limit ${limit} s): $*"
    timeout -k 15 "$limit" "$@" 2>&1 | tee "$LOGS/$name.txt"
    local code=${PIPESTATUS[0]}
    echo "=== $name: exit $code after $(( $(date +%s) - started )) s in all"
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then status=$code; fi
}

# The gpu-marked tests all live in tests/test_gpu.py; GPU_TESTS=tests selects them from the whole suite
# (that collects every test file, so it needs the whole dev environment, PySide6 included).
part pytest-gpu 170 "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider "${GPU_TESTS:-tests/test_gpu.py}"
part bench-default 210 "$PYTHON" bench/gpu_grpo.py --work "$WORK/bench"
part bench-checkpointing-4-micro-batches 210 "$PYTHON" bench/gpu_grpo.py --gradient-checkpointing \
    --gradient-accumulation-steps 4 --work "$WORK/bench"

echo; echo "=== summary ($(( $(date +%s) - started )) s)"
tail -n 1 "$LOGS/pytest-gpu.txt"
for name in bench-default bench-checkpointing-4-micro-batches; do
    echo "--- $name"
    grep -E '^(command|device|versions|run|median step|peak VRAM):? ' "$LOGS/$name.txt" || echo "(no result lines)"
done
exit "$status"
