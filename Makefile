# cxrbench — every target that needs the environment depends on `install`, so `make test` works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
DATA   ?= datasets
JOBS   ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test lint format data bench regress clean

# make bench METHOD="convirt random_init" TASK=chexpert_cls FRACTION="0.01 0.1" SEEDS="42 0 1"
SUITE    ?= benchmarks/default.yaml
METHOD   ?=
TASK     ?=
FRACTION ?=
SEEDS    ?=
PRESET   ?=

# make regress: the CI smoke suite from scratch (corpus, corpus BERT, encoders, probes: a kept run
# would be skipped, not re-measured), checked against the committed baseline. It is bit-identical
# run to run, but the thread count and the CPU's kernels (AVX2, AVX-512) change float summation
# order, which pre-training amplifies, so it runs on one thread with the generic kernels of torch,
# oneDNN and MKL. An intended change of the numbers, after `make regress`:
#   cxrbench leaderboard update --suite benchmarks/smoke.yaml --runs results/runs/regress/runs
REGRESS       := results/runs/regress
REGRESS_SUITE := benchmarks/smoke.yaml

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

test: lint  ## lint, the whole test suite (CPU, < 15 min on 2 cores), then `make regress`
	$(BIN)/python -m pytest -n $(JOBS) --durations=15
	$(MAKE) --no-print-directory regress

regress: export OMP_NUM_THREADS := 1
regress: export MKL_NUM_THREADS := 1
regress: export ATEN_CPU_CAPABILITY := default
regress: export ONEDNN_MAX_CPU_ISA := SSE41
regress: export MKL_CBWR := COMPATIBLE
regress: install  ## smoke suite from scratch, checked against results/leaderboards/smoke.json
	rm -rf $(REGRESS)
	$(BIN)/cxrbench data synth --out $(REGRESS)/synth-tiny --preset tiny --seed 0 --no-progress \
		> /dev/null
	$(BIN)/cxrbench bench --suite $(REGRESS_SUITE) --data-root $(REGRESS)/synth-tiny \
		--out $(REGRESS)/runs --no-progress
	$(BIN)/cxrbench leaderboard check --suite $(REGRESS_SUITE) --runs $(REGRESS)/runs

data: install  ## generate the small SynthCXR corpus into datasets/synth-small
	$(BIN)/cxrbench data synth --out $(DATA)/synth-small --preset small --seed 0

bench: install  ## run a benchmark (default: benchmarks/default.yaml; METHOD= TASK= FRACTION= SEEDS= PRESET=)
	$(BIN)/cxrbench bench --suite $(SUITE) $(foreach m,$(METHOD),--method $(m)) \
		$(foreach t,$(TASK),--task $(t)) $(foreach f,$(FRACTION),--fraction $(f)) \
		$(foreach s,$(SEEDS),--seed $(s)) $(if $(PRESET),--preset $(PRESET))

clean:  ## remove caches (keeps .venv and datasets)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
