#!/bin/bash
# The GPU path, checked in one short script (benchmarks/gpu_check.py): a CNN ensemble and a specialist run on the
# GPU and on the CPU, epoch times to benchmarks/results/gpu_check.json. `--cpu` checks the script where no GPU is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" benchmarks/gpu_check.py "$@"
