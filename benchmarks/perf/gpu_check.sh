#!/usr/bin/env bash
# One prepared check for a lent GPU (benchmarks/perf/gpu_check.py says what it measures): our
# Lightning pre-training step against a plain loop at the papers' shapes, memory, GPU utilisation
# and the loader's rate, as one Markdown table. Made to finish in under 8 minutes on one H200.
#
#   bash benchmarks/perf/gpu_check.sh [--steps 30] [--warmup 3] [--methods a,b] [--all]
#       [--data-root PATH]
#   bash benchmarks/perf/gpu_check.sh --cpu --steps 2     # CPU smoke run (tiny shapes)
#
# Runs from the repository root; creates .venv with `make install` when it is missing (a fresh
# machine), prints the elapsed time and exits with the check's status (non-zero on a failure).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
start=$SECONDS
if [ ! -x .venv/bin/python ]; then
    make install
fi
status=0
.venv/bin/python benchmarks/perf/gpu_check.py "$@" || status=$?
echo "gpu_check.sh: elapsed $((SECONDS - start)) s, exit status $status"
exit "$status"
