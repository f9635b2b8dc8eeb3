#!/usr/bin/env bash
# The results that show how the toolkit does on another kind of CPU, in one folder of results/ that report.py
# renders beside the main results (name the folder in its OTHER_CPUS): make main, then on its export the peer
# benchmark, the inference profile and the int8 variants, the float32 training step's profile, and the fast recipe
# in the CPU's own compute mode, in float32 where that is bf16, and in float32 pinned to one CPU. Run from the
# checkout's root after the install (make .venv/.installed-stamp); like make main, it overwrites data/, runs/ and
# exported/.
# Usage: benchmarks/cpu_results.sh FOLDER
set -euo pipefail
folder="${1:-}"
if [[ ! "$folder" =~ ^[A-Za-z0-9_-]+$ ]]; then
  echo "error: give one folder name under benchmarks/results (letters, digits, - and _), e.g. nobf16" >&2
  exit 2
fi
python="${PYTHON:-.venv/bin/python}"
out="benchmarks/results/$folder"
mkdir -p "$out"
"$python" benchmarks/make_main.py --out "$out/make_main.json"
"$python" benchmarks/peers.py --artifacts exported --data-dir data --out "$out/peers.json"
"$python" benchmarks/inference_profile.py --artifacts exported --data-dir data --out "$out/inference_profile.json"
"$python" benchmarks/quantization.py --checkpoint runs/convnet-fast-seed0/checkpoint.pt --data-dir data \
  --out "$out/quantization.json"
# the float32 step (what a CPU without native bf16 trains with) profiled, with one choice changed at a time
"$python" benchmarks/train_profile.py --data-dir data --no-bf16 --out "$out/train_profile_float32.json"
# float32 beside the native mode only where they differ: on a CPU without native bf16, native is float32
modes="$("$python" -c "from toolkit import sysinfo; print('native,float32' if sysinfo.native_bf16() else 'native')")"
"$python" benchmarks/train_speed.py --data-dir data --recipes fast --notebook-epochs 0 --modes "$modes" \
  --out "$out/train_speed_modes.json"
# the float32 recipe on one CPU as well, where there are more and taskset can pin to one
first_cpu="$("$python" -c "import os; cpus = os.sched_getaffinity(0); print(min(cpus) if len(cpus) > 1 else '')")"
if [[ -n "$first_cpu" ]] && command -v taskset >/dev/null; then
  taskset -c "$first_cpu" "$python" benchmarks/train_speed.py --data-dir data --modes float32 --recipes fast \
    --notebook-epochs 0 --out "$out/train_speed_float32_1core.json"
fi
