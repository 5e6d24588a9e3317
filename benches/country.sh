#!/usr/bin/env bash
# Country-scale benchmarks (issue: country scale). Every ratio compares
# numbers of the same run.
#   bash benches/country.sh                 # 1,000-file VRT vs one GeoTIFF; big scene vs 8192
#   BIG=50000 bash benches/country.sh       # the size of the big scene (default 16384)
set -euo pipefail
source "$(dirname "$0")/common.sh"
run() { # label, args... -> "label wall_s Mpx/s peak_MiB"
  local label=$1; shift
  local out; out=$(/usr/bin/time -f "TIME %e %M" $B infer "$@" --overwrite 2>&1 | tr '\n' ' ')
  local wall rss px
  wall=$(echo "$out" | sed -E 's/.*TIME ([0-9.]+) ([0-9]+).*/\1/')
  rss=$(echo "$out" | sed -E 's/.*TIME ([0-9.]+) ([0-9]+).*/\2/')
  px=$(echo "$out" | sed -E 's/.*mapped ([0-9]+) px.*/\1/')
  printf "%-28s %8.2f s %8.2f Mpx/s %8.1f MiB\n" "$label" "$wall" "$(echo "$px / $wall / 1000000" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}

echo "== 1,000-file VRT vs the same pixels as one GeoTIFF (linear model)"
S=$(scene 4096)
T="$W/tiles1000"
if [ ! -f "$W/mosaic1000.vrt" ]; then
  mkdir -p "$T"
  for ty in $(seq 0 24); do for tx in $(seq 0 39); do
    echo "-srcwin $((tx*102)) $((ty*163)) 102 163 $S/image.tif $T/t_${tx}_${ty}.tif"
  done; done | xargs -P 2 -L 1 gdal_translate -q
  ls "$T"/*.tif > "$W/list1000.txt"
  gdalbuildvrt -q -input_file_list "$W/list1000.txt" "$W/mosaic1000.vrt"
  gdal_translate -q -co TILED=YES -co COMPRESS=DEFLATE "$W/mosaic1000.vrt" "$W/mosaic1000.tif"
fi
run "one GeoTIFF" "$W/mosaic1000.tif" -o "$W/one.tif" --model "$W/linear.safetensors"
run "VRT of 1000 GeoTIFFs" "$W/mosaic1000.vrt" -o "$W/vrt.tif" --model "$W/linear.safetensors"

echo "== big scene vs 8192 x 8192 (linear model, same configuration)"
for s in 8192 "${BIG:-16384}"; do
  S=$(scene "$s")
  run "$s x $s" "$S/image.tif" -o "$W/big_$s.tif" --model "$W/linear.safetensors"
done
