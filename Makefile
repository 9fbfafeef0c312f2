# Aha — the two Quick-start commands are `make run` and `make test`.
# Each creates .venv in the checkout when it is missing and is quick when it is already there.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aha-installed
# llama.cpp's own converter (from the llama-cpp-python sdist we build against): the reference our
# GGUF writer is compared with in tests/test_export_reference.py and bench/export.py.
LLAMA_CPP_VERSION := 0.3.36
REF    := .cache/llama.cpp/convert_hf_to_gguf.py

.PHONY: run test lint bench screenshots clean

run: $(STAMP)
	$(BIN)/aha

test: $(STAMP) $(REF)
	$(BIN)/ruff check .
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP) $(REF)
	$(BIN)/python bench/export.py
	$(BIN)/python bench/chat.py
	$(BIN)/python -c "import trl" 2>/dev/null && $(BIN)/python bench/grpo_vs_trl.py || echo "bench/grpo_vs_trl.py skipped: pip install trl==1.16.0"
	$(BIN)/python -c "import trl" 2>/dev/null && $(BIN)/python bench/sft_vs_trl.py || echo "bench/sft_vs_trl.py skipped: pip install trl==1.16.0"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[train,dev]"
	touch $@

$(REF): | $(STAMP)
	$(BIN)/python -m pip download -q --no-binary :all: --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -d .cache/sdist
	mkdir -p .cache/llama.cpp
	tar -xzf .cache/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C .cache/llama.cpp --strip-components=3 \
	    llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
	    llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/conversion \
	    llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/gguf-py
	touch $@

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache

screenshots: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m app.screenshots docs/screenshots
