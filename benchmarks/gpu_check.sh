#!/usr/bin/env bash
# GPU check of fod in under 10 minutes, one JSON of figures (see benchmarks/gpu_check.py):
# the equivalence tests on the GPU, `fod bench step` at batch 1 and 8 (fast vs direct), and
# MTD with the paper's configuration for as many epochs as fit in 6 minutes.
#
#   benchmarks/gpu_check.sh --out runs/gpu_check.json                   # CUDA, MTD
#   benchmarks/gpu_check.sh --precision bf16 --out runs/gpu_check_bf16.json
#   benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/gpu_check.json  # CI smoke test
#
# Run it from a checkout with fod installed (pip install -e .) or with PYTHONPATH=src.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
