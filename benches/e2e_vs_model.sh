#!/usr/bin/env bash
# resnet50-fcn end to end against the model alone (issue "Feed the GPU",
# target: at least 0.90), alternating in ROUNDS rounds so that both halves
# of a ratio see the same machine:
#   bash benches/e2e_vs_model.sh
#   SIZE=4096 WINDOW=256 BATCH=4 ROUNDS=3 bash benches/e2e_vs_model.sh
# model-only: `rstile model bench` (median of ITERS forward passes of BATCH
# windows of WINDOW px), in Mpx/s of window pixels; end to end: `rstile
# infer` on a SIZE² scene with the same window, batch and overlap, whose
# window pixels (windows x WINDOW², the overlap's recomputation counted as
# model work) over the process's wall time (start, model load and the
# map's finishing included).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SIZE=${SIZE:-2048} WINDOW=${WINDOW:-256} BATCH=${BATCH:-4} ROUNDS=${ROUNDS:-3} ITERS=${ITERS:-5}
M="$W/r50_$WINDOW.safetensors"
[ -f "$M" ] || $B model new --arch resnet50-fcn --bands 3 --classes $classes --window "$WINDOW" -o "$M" >/dev/null
S=$(scene "$SIZE")
echo "resnet50-fcn, window $WINDOW, batch $BATCH, overlap of the model file, ${SIZE}² scene, $(nproc) threads"
for r in $(seq "$ROUNDS"); do
  m=$($B model bench --model "$M" --batch "$BATCH" --size "$WINDOW" --iters "$ITERS" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["batch"] * d["size"] ** 2 / d["forward_median_s"] / 1e6)')
  t0=$(date +%s.%N)
  n=$($B infer "$S/image.tif" -o "$W/e2e.tif" --model "$M" --batch "$BATCH" --overwrite --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["windows"])')
  t1=$(date +%s.%N)
  s=$(echo "$t1 - $t0" | bc -l)
  e=$(echo "$n * $WINDOW * $WINDOW / $s / 1000000" | bc -l)
  printf "round %d: model alone %.3f Mpx/s, end to end %d windows in %.2f s = %.3f Mpx/s of window pixels: ratio %.2f\n" \
    "$r" "$m" "$n" "$s" "$e" "$(echo "$e / $m" | bc -l)"
done
