#!/usr/bin/env bash
# Benchmarks of `rstile infer`'s pipeline (issues "rstile infer", section 7,
# and "Feed the GPU"). Each number is measured in this one run; ratios
# compare numbers of the same run.
#   bash benches/pipeline.sh            # all four
#   SIZES="2048 4096 8192" ROUNDS=3 bash benches/pipeline.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ -f "$W/r50.safetensors" ] || $B model new --arch resnet50-fcn --bands 3 --classes $classes --window 256 -o "$W/r50.safetensors" >/dev/null
[ -f "$W/identity.safetensors" ] || $B model new --arch identity --bands 3 --classes $classes --window 512 -o "$W/identity.safetensors" >/dev/null
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -1; } # peak RSS in KiB
now() { date +%s.%N; }
threads=$(nproc)

echo "== pipeline overhead: linear model (defaults) vs gdal_translate, 8192 x 8192, $threads threads, alternating"
S=$(scene 8192)
for i in $(seq "${ROUNDS:-3}"); do
  t0=$(now); gdal_translate -q -co TILED=YES -co COMPRESS=DEFLATE "$S/image.tif" "$W/copy.tif"; t1=$(now)
  $B infer "$S/image.tif" -o "$W/lin.tif" --model "$W/linear.safetensors" --overwrite --quiet; t2=$(now)
  g=$(echo "$t1 - $t0" | bc -l); r=$(echo "$t2 - $t1" | bc -l)
  printf "round %s: gdal_translate %.2f s, rstile infer (linear) %.2f s, ratio %.2f\n" "$i" "$g" "$r" "$(echo "$r / $g" | bc -l)"
done

echo "== zero-FLOP model (identity): pipeline throughput, 8192 x 8192 uncompressed in and out, $threads threads"
# uncompressed, so that neither DEFLATE decoding nor encoding is counted:
# what is left is the pipeline's own work (cut, normalise, upload, the
# model's copy, softmax, blending, argmax, writing)
[ -f "$W/raw8192.tif" ] || gdal_translate -q -co TILED=YES -co BLOCKXSIZE=512 -co BLOCKYSIZE=512 "$S/image.tif" "$W/raw8192.tif"
for ov in 0.25 0; do
  t0=$(now)
  cpu=$( { /usr/bin/time -f "%U %S" $B infer "$W/raw8192.tif" -o "$W/id.tif" --model "$W/identity.safetensors" \
      --overlap $ov --co COMPRESS=NONE --overwrite --quiet; } 2>&1 | tail -1 | awk '{print $1 + $2}')
  t1=$(now)
  wall=$(echo "$t1 - $t0" | bc -l)
  printf "overlap %-4s: %.2f s wall, %.2f s CPU: %.1f Mpx/s per core (wall x %s), %.1f Mpx/s per CPU second\n" \
    "$ov" "$wall" "$cpu" "$(echo "67.108864 / $wall / $threads" | bc -l)" "$threads" "$(echo "67.108864 / $cpu" | bc -l)"
done

echo "== memory bound: same configuration, scenes of 1x, 4x, 16x area"
for s in ${SIZES:-2048 4096 8192}; do
  S=$(scene "$s")
  kb=$(rss $B infer "$S/image.tif" -o "$W/mem_$s.tif" --model "$W/linear.safetensors" --overwrite --quiet)
  printf "%5s x %-5s peak RSS %6.1f MiB\n" "$s" "$s" "$(echo "$kb / 1024" | bc -l)"
done

echo "== model speed: resnet50-fcn forward on the CPU, 1024 x 1024 scene, window 256"
S=$(scene 1024)
$B infer "$S/image.tif" -o "$W/r50.tif" --model "$W/r50.safetensors" --overwrite --batch 4 | tail -1
