# cxrbench — every target that needs the environment depends on `install`, so `make test` works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
DATA   ?= datasets
JOBS   ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test lint format data bench clean

# make bench METHOD="convirt random_init" TASK=chexpert_cls FRACTION="0.01 0.1" SEEDS="42 0 1"
SUITE    ?= benchmarks/default.yaml
METHOD   ?=
TASK     ?=
FRACTION ?=
SEEDS    ?=
PRESET   ?=

help:  ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install cxrbench with its dev tools (skipped when up to date)

lint: install  ## ruff (lint + format check) and mypy on src
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

test: lint  ## lint, then the whole test suite (CPU, < 15 min on 2 cores)
	$(BIN)/python -m pytest -n $(JOBS) --durations=15

data: install  ## generate the small SynthCXR corpus into datasets/synth-small
	$(BIN)/cxrbench data synth --out $(DATA)/synth-small --preset small --seed 0

bench: install  ## run a benchmark (default: benchmarks/default.yaml; METHOD= TASK= FRACTION= SEEDS= PRESET=)
	$(BIN)/cxrbench bench --suite $(SUITE) $(foreach m,$(METHOD),--method $(m)) \
		$(foreach t,$(TASK),--task $(t)) $(foreach f,$(FRACTION),--fraction $(f)) \
		$(foreach s,$(SEEDS),--seed $(s)) $(if $(PRESET),--preset $(PRESET))

clean:  ## remove caches (keeps .venv and datasets)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
