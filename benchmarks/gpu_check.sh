#!/usr/bin/env bash
# Every GPU measurement in one script, for a lent H100/H200 (see ../shared/GPU.md). Run from the repo root:
#   echo /.device/ >> .git/info/exclude; mkdir -p .device/data/MNIST/raw && cp ../shared/data/mnist/*.gz .device/data/MNIST/raw/
#   then on the device: bash benchmarks/gpu_check.sh  (carry .device; results land in $OUT or benchmarks/results/gpu)
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results/gpu}"
data=.device/data
mkdir -p "$out"
python3 -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m toolkit data --data-dir "$data"
# torchvision's MNIST (the notebook pipeline) reads only the extracted files
for f in "$data"/MNIST/raw/*.gz; do [ -f "${f%.gz}" ] || gunzip -k "$f"; done
python3 benchmarks/train_speed.py --data-dir "$data" --device cuda --notebook-epochs 10 --out "$out/train_speed.json"
python3 -m toolkit train --device cuda --data-dir "$data" --out .device/run --overwrite
python3 -m toolkit export --checkpoint .device/run/checkpoint.pt --format all --precision all --data-dir "$data" --out .device/exported
python3 -m toolkit verify --artifacts .device/exported --provider cuda --data-dir "$data" --json "$out/verify_cuda.json" || true
python3 -m toolkit bench --provider cuda --cuda-graph --artifacts .device/exported --data-dir "$data" \
  --batch-sizes 1,8,64,256,1024,4096 --seconds 1 --rounds 3 \
  --json "$out/inference_cuda.json" --markdown "$out/inference_cuda.md" --plot "$out/inference_cuda.png"
python3 -c "
import json; r = json.load(open('$out/inference_cuda.json'))
for p in r['points']:
    if p['batch_size'] in (1, 1024): print(p['label'], p['batch_size'], round(p['p50_ms'], 4), round(p['throughput']))"
