#!/usr/bin/env bash
# The README tour's bench command, run as the tour runs it (after `make main`, from the checkout's root or the
# folder given), its JSON and its printed summary kept for the README: report.py shows the summary verbatim.
# Usage: benchmarks/tour_bench.sh [folder-after-make-main]
set -euo pipefail
results="$(cd "$(dirname "$0")" && pwd)/results"
toolkit="${TOOLKIT:-toolkit}"
cd "${1:-.}"
COLUMNS=120 "$toolkit" bench --runtime onnxruntime --format onnx --precision fp32,int8 --batch-sizes 1,64 \
  --seconds 0.2 --rounds 1 --no-matmul-peak --json "$results/tour_bench.json" > "$results/tour_bench.txt"
