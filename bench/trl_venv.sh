#!/bin/sh
# The environment of the TRL benchmarks (bench/grpo_vs_trl.py, bench/sft_vs_trl.py): TRL is not a dependency
# of Aha and stays out of .venv (it brings datasets/pyarrow, which would change what the test suite sees).
# .cache/bench-venv sees .venv's packages through a .pth file (torch, transformers, peft and Aha itself are
# not installed twice) and gets only TRL and what TRL adds (datasets, pyarrow, pandas, ...); torch is pinned
# to the one in .venv so that pip never fetches another build. Run from the checkout's root after `make test`
# or `make bench` has made .venv; then `make bench` runs the TRL benchmarks with .cache/bench-venv/bin/python.
set -eu
VENV=.cache/bench-venv
test -x .venv/bin/python || { echo "no .venv here: run make test (or make bench) first" >&2; exit 1; }
PY_DIR=$(.venv/bin/python -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
test -x $VENV/bin/python || "$(.venv/bin/python -c 'import sys; print(sys._base_executable)')" -m venv $VENV
echo "import site; site.addsitedir('$(pwd)/.venv/lib/$PY_DIR/site-packages')" > $VENV/lib/$PY_DIR/site-packages/aha-venv.pth
TORCH=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')
$VENV/bin/python -m pip install -q "trl==1.16.0" "torch==$TORCH"
$VENV/bin/python -c "import torch, trl; print('$VENV: trl', trl.__version__, '| torch', torch.__version__, 'from', torch.__file__)"
