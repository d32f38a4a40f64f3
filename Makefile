# perfkit developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build pip takes from this machine's disk (see README); override for other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.perfkit-installed

# The oldest torch the fast suite passed on (pyproject.toml's floor): `make test-floor` checks it again.
FLOOR_TORCH ?= 2.11.0
FLOOR_TORCHVISION ?= 0.26.0
FLOOR_VENV ?= .venv-floor

.PHONY: help install train test test-floor test-all bench bench-suites lint docs format clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-13s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install torch, perfkit and the dev tools (skips what is there)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[dev]"
	@touch $(STAMP)

train: install ## run the default training job (bundled MNIST digits, small CNN)
	$(BIN)/python -m perfkit.train $(ARGS)

test: install ## run the fast test suite with coverage (the default; < 5 min on 2 cores)
	$(BIN)/pytest $(ARGS)

test-floor: ## the fast suite on the oldest supported torch (FLOOR_TORCH), in $(FLOOR_VENV)
	@test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	@$(FLOOR_VENV)/bin/python -c "import torch, torchvision, sys; sys.exit(not torch.__version__.startswith('$(FLOOR_TORCH)'))" 2>/dev/null \
		|| $(FLOOR_VENV)/bin/pip install -qq torch==$(FLOOR_TORCH) torchvision==$(FLOOR_TORCHVISION)
	$(FLOOR_VENV)/bin/pip install -qq -e ".[dev]"
	$(FLOOR_VENV)/bin/pytest --no-cov -q $(ARGS)

test-all: install ## also run the slow and multi-process tests
	$(BIN)/pytest -m "not gpu" $(ARGS)

bench: install ## the variant benchmark, quick preset (< 5 min on 2 cores): report in outputs/bench/runs/
	$(BIN)/python -m perfkit.bench $(ARGS)

bench-suites: install ## every pytest-benchmark suite in benchmarks/ (hours on 2 cores; narrow with ARGS="-k ...")
	$(BIN)/pytest benchmarks/ -o addopts="" -p no:cacheprovider $(ARGS)

lint: install ## ruff lint + format check, mypy, no import cycles, hadolint on Dockerfile.gpu
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_imports.py
	$(BIN)/hadolint Dockerfile.gpu

docs: install ## build the docs site into site/ (MkDocs; any warning, e.g. a broken reference, fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun wandb lightning_logs site .mypy_cache .ruff_cache .coverage .benchmarks
