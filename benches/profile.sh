#!/usr/bin/env bash
# Where `rstile infer`'s time goes (`--profile`), and what `--cog` costs,
# measured in one run (issue "Feed the GPU", sections 1 and 5):
#   bash benches/profile.sh
#   BINS="old/rstile new/rstile" ROUNDS=3 bash benches/profile.sh
# 1. the linear model on an 8192² scene: Mpx/s of each binary in BINS
#    (alternating, ROUNDS rounds; default: this build only);
# 2. the profile table of this build for that run and for resnet50-fcn
#    (window 256) on a 2048² scene;
# 3. --cog against the plain map, alternating, for both runs.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-2}
[ -f "$W/r50.safetensors" ] || $B model new --arch resnet50-fcn --bands 3 --classes $classes --window 256 -o "$W/r50.safetensors" >/dev/null
S8=$(scene 8192)
S2=$(scene 2048)
read -ra bins <<<"${BINS:-$B}"
# "SECONDS FINISH_SECONDS" of a run (finishing: overviews, the COG rewrite, the style)
secs() { "$@" --overwrite --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["seconds"], d["profile"]["finish_s"])'; }
cog_row() { # label, then the infer command
  local label=$1; shift
  read -r p pf <<<"$(secs "$@")"
  read -r c cf <<<"$(secs "$@" --cog)"
  printf "%-20s plain %.2f s (finishing %.2f s), --cog %.2f s (finishing %.2f s): the COG rewrite %.2f s = %.1f %% of the plain run\n" \
    "$label" "$p" "$pf" "$c" "$cf" "$(echo "$cf - $pf" | bc -l)" "$(echo "($cf - $pf) / $p * 100" | bc -l)"
}

echo "== linear model, 8192 x 8192, Mpx/s per binary"
for r in $(seq "$ROUNDS"); do
  for b in "${bins[@]}"; do
    t0=$(date +%s.%N)
    "$b" infer "$S8/image.tif" -o "$W/prof_lin.tif" --model "$W/linear.safetensors" --overwrite --quiet
    t1=$(date +%s.%N)
    printf "round %d %-40s %6.2f s  %6.2f Mpx/s\n" "$r" "$b" "$(echo "$t1 - $t0" | bc -l)" "$(echo "67.108864 / ($t1 - $t0)" | bc -l)"
  done
done

echo "== profile: linear model, 8192 x 8192"
$B infer "$S8/image.tif" -o "$W/prof_lin.tif" --model "$W/linear.safetensors" --overwrite --quiet --profile
echo "== profile: resnet50-fcn, window 256, batch 4, 2048 x 2048"
$B infer "$S2/image.tif" -o "$W/prof_r50.tif" --model "$W/r50.safetensors" --overwrite --quiet --profile --batch 4

echo "== --cog against the plain map (alternating; the rewrite's cost from the finishing time)"
for r in $(seq "$ROUNDS"); do
  cog_row "linear 8192²" $B infer "$S8/image.tif" -o "$W/cog_lin.tif" --model "$W/linear.safetensors"
  cog_row "resnet50-fcn 2048²" $B infer "$S2/image.tif" -o "$W/cog_r50.tif" --model "$W/r50.safetensors" --batch 4
done
