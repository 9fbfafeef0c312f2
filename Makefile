# Aha — the two Quick-start commands are `make run` and `make test`.
# Each creates .venv in the checkout when it is missing and is quick when it is already there.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aha-installed
# llama.cpp's own converter (from the llama-cpp-python sdist we build against): the reference our
# GGUF writer is compared with in tests/test_export_reference.py and bench/export.py.
REF    := .cache/llama.cpp/convert_hf_to_gguf.py

.PHONY: run test lint bench gpu-check screenshots clean desktop-validators icons package

run: $(STAMP)
	$(BIN)/aha

test: $(STAMP) $(REF) desktop-validators
	$(BIN)/ruff check .
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP) $(REF)
	$(BIN)/python bench/export.py
	$(BIN)/python bench/chat.py
	$(BIN)/python bench/sampling.py
	$(BIN)/python bench/rich_text.py
	$(BIN)/python bench/ui_stream.py
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/learning.py
	$(BIN)/python bench/demo.py --seeds 0 1 2
	@if .cache/bench-venv/bin/python -c "import trl" 2>/dev/null; then \
	    set -x; .cache/bench-venv/bin/python bench/grpo_vs_trl.py && .cache/bench-venv/bin/python bench/sft_vs_trl.py; \
	else echo "bench/grpo_vs_trl.py and bench/sft_vs_trl.py skipped: they need TRL, in its own environment;" \
	    "make it once with: sh bench/trl_venv.sh"; fi

gpu-check: $(STAMP)                  # on a machine with an NVIDIA GPU: the gpu tests and bench/gpu_grpo.py
	bash bench/gpu_check.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[train,dev]"
	touch $@

# freedesktop's validators for tests/test_desktop.py (Debian: desktop-file-utils, appstream): installed with
# apt-get when a command is missing and this is root (or has sudo without a password); quick when they are there.
# Where they cannot be had, the test says so in its skip reason.
desktop-validators:
	@missing=""; \
	command -v desktop-file-validate >/dev/null || missing="$$missing desktop-file-utils"; \
	command -v appstreamcli >/dev/null || missing="$$missing appstream"; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt=apt-get; elif sudo -n true 2>/dev/null; then apt="sudo apt-get"; else apt=; fi; \
	    if [ -n "$$apt" ] && command -v apt-get >/dev/null; then \
	        echo "installing$$missing (for tests/test_desktop.py)"; \
	        $$apt install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	        { $$apt update -q >/dev/null 2>&1 && $$apt install -y -q --no-install-recommends $$missing >/dev/null; } || \
	        echo "could not install$$missing: tests/test_desktop.py skips its validation"; \
	    else echo "no apt-get as root here: tests/test_desktop.py skips its validation (apt-get install$$missing)"; fi; \
	fi

# The standalone bundle of the chat app (PyInstaller, packaging/aha.spec): dist/aha/ (one folder, without the
# train extra), then tests/test_bundle.py runs it: the window under Xvfb when xvfb-run is there (else offscreen),
# one chat with a tiny GGUF through `aha --smoke`, and its size. Windows and macOS bundles are built on their own
# OS (packaging/README.md).
package: $(STAMP)
	@start=$$(date +%s) && set -x && \
	$(BIN)/python -m PyInstaller packaging/aha.spec --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller && \
	{ set +x; } 2>/dev/null && echo "dist/aha built in $$(( $$(date +%s) - start )) s: $$(du -sh dist/aha | cut -f1)"
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -s tests/test_bundle.py

# The PNG icons (assets/icons/) rendered from assets/aha.svg; run after editing the SVG (tests/test_desktop.py checks).
icons: $(STAMP)
	$(BIN)/python packaging/render_icons.py

$(REF): | $(STAMP)
	$(BIN)/python tests/support/reference_converter.py --fetch

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache

# A real X server when there is one: $$DISPLAY, else Xvfb via xvfb-run (Debian/Ubuntu: apt-get install xvfb
# libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1); without either, Qt's offscreen platform.
screenshots: $(STAMP)
	@if [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null; then \
	    set -x; xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python -m app.screenshots docs/screenshots; \
	else set -x; $(BIN)/python -m app.screenshots docs/screenshots; fi
