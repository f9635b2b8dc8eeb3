#!/usr/bin/env bash
# Inference benchmark behind the README's tables: every exported artifact plus PyTorch eager and TorchScript,
# batch sizes 1..1024, ONNX Runtime's two relevant CPU graph optimization levels and 1 or 2 concurrent calls,
# and every other installed runtime (OpenVINO f32/bf16 with both hints, OpenCV DNN), each verified first.
# Usage: benchmarks/inference.sh [cpu|cuda] [results-folder]   (needs `make main` or data/train/export first)
set -euo pipefail
provider="${1:-cpu}"
results="${2:-benchmarks/results}"
toolkit="${TOOLKIT:-toolkit}"
mkdir -p "$results"
extra=()
if [ "$provider" = cpu ]; then
  extra=(--optimization all,extended --concurrency 1,2 --mode f32,bf16 --hint latency,throughput)
else
  extra=(--cuda-graph)
fi
# --sweep: every combination of settings at every batch size (not the default search's choices), and the
# compute modes named, so bf16 is timed on any CPU and the results stay comparable from run to run
"$toolkit" bench --sweep --device "$provider" --batch-sizes 1,8,64,256,1024 --seconds 2 --rounds 4 \
  --matmul-peak "${extra[@]}" \
  --json "$results/inference_$provider.json" --markdown "$results/inference_$provider.md" \
  --plot "$results/inference_$provider.png"
