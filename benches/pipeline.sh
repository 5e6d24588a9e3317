#!/usr/bin/env bash
# Benchmarks of `rstile infer` (issue: rstile infer, section 7). Each number
# is measured in this one run; ratios compare numbers of the same run.
#   bash benches/pipeline.sh            # all three
#   SIZES="2048 4096 8192" bash benches/pipeline.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ -f "$W/r50.safetensors" ] || $B model new --arch resnet50-fcn --bands 3 --classes $classes --window 256 -o "$W/r50.safetensors" >/dev/null
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -1; } # peak RSS in KiB
now() { date +%s.%N; }

echo "== pipeline overhead: linear model vs gdal_translate, 8192 x 8192"
S=$(scene 8192)
t0=$(now); gdal_translate -q -co TILED=YES -co COMPRESS=DEFLATE "$S/image.tif" "$W/copy.tif"; t1=$(now)
$B infer "$S/image.tif" -o "$W/lin.tif" --model "$W/linear.safetensors" --overwrite --quiet; t2=$(now)
g=$(echo "$t1 - $t0" | bc -l); r=$(echo "$t2 - $t1" | bc -l)
printf "gdal_translate %.2f s, rstile infer (linear) %.2f s, ratio %.2f\n" "$g" "$r" "$(echo "$r / $g" | bc -l)"

echo "== memory bound: same configuration, scenes of 1x, 4x, 16x area"
for s in ${SIZES:-2048 4096 8192}; do
  S=$(scene "$s")
  kb=$(rss $B infer "$S/image.tif" -o "$W/mem_$s.tif" --model "$W/linear.safetensors" --overwrite --quiet)
  printf "%5s x %-5s peak RSS %6.1f MiB\n" "$s" "$s" "$(echo "$kb / 1024" | bc -l)"
done

echo "== model speed: resnet50-fcn forward on the CPU, 1024 x 1024 scene, window 256"
S=$(scene 1024)
$B infer "$S/image.tif" -o "$W/r50.tif" --model "$W/r50.safetensors" --overwrite --batch 4 | tail -1
