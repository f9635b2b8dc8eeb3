#!/usr/bin/env bash
# Every GPU measurement in one script, on a machine with an NVIDIA GPU. Run from the repo root:
#   bash benchmarks/gpu_check.sh DATA_DIR [RESULTS_DIR]
# DATA_DIR holds (or receives) MNIST/raw/ (the four official files, plain or .gz); results go to RESULTS_DIR
# (default benchmarks/results/gpu); the run's own files go to DATA_DIR/../gpu-run.
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 DATA_DIR [RESULTS_DIR]" >&2; exit 2; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data="$1"
out="${2:-benchmarks/results/gpu}"
work="$(dirname "$data")/gpu-run"
mkdir -p "$out" "$work"
python3 -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m toolkit data --data-dir "$data"
# torchvision's MNIST (the notebook pipeline) reads only the extracted files
for f in "$data"/MNIST/raw/*.gz; do [ -f "${f%.gz}" ] || gunzip -k "$f"; done
python3 benchmarks/train_speed.py --data-dir "$data" --device cuda --notebook-epochs 10 --out "$out/train_speed.json"
python3 -m toolkit train --device cuda --data-dir "$data" --out "$work/run" --overwrite
python3 -m toolkit export --checkpoint "$work/run"/checkpoint.pt --format all --precision all --data-dir "$data" --out "$work/exported"
python3 -m toolkit verify --artifacts "$work/exported" --device cuda --data-dir "$data" --json "$out/verify_cuda.json" || true
python3 -m toolkit bench --sweep --device cuda --cuda-graph --artifacts "$work/exported" --data-dir "$data" \
  --batch-sizes 1,8,64,256,1024,4096 --seconds 1 --rounds 3 \
  --json "$out/inference_cuda.json" --markdown "$out/inference_cuda.md" --plot "$out/inference_cuda.png"
python3 -c "
import json; r = json.load(open('$out/inference_cuda.json'))
for p in r['points']:
    if p['batch_size'] in (1, 1024): print(p['label'], p['batch_size'], round(p['p50_ms'], 4), round(p['throughput']))"
