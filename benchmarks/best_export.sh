#!/usr/bin/env bash
# The `best` recipe's artifacts pass verify like any other: train it (seed 0), export every format and
# precision, and verify them all against the checkpoint on the 10,000 test images (int8 within 0.3 points).
#
#   benchmarks/best_export.sh DATA_DIR [RUN_DIR] [EXPORT_DIR]
set -euo pipefail
DATA=${1:?usage: benchmarks/best_export.sh DATA_DIR [RUN_DIR] [EXPORT_DIR]}
RUN=${2:-runs/convnet-best-seed0}
OUT=${3:-runs/exported-best}
HERE=$(cd "$(dirname "$0")" && pwd)

toolkit train --recipe best --seed 0 --out "$RUN" --overwrite --data-dir "$DATA"
toolkit export --checkpoint "$RUN/checkpoint.pt" --format all --precision all --out "$OUT" --overwrite \
    --data-dir "$DATA"
python "$HERE/verify_time.py" --data-dir "$DATA" --artifacts "$OUT" --repeats 1 \
    --out "$HERE/results/verify_best.json"
