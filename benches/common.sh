# Shared set-up of the benchmark scripts (sourced): builds the release
# binary, makes the work folder and the linear model, and `scene SIZE`
# generates (once) a SIZE x SIZE scene and prints its folder.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q
B=$PWD/target/release/rstile
W=${BENCH_DIR:-target/bench}
mkdir -p "$W"
classes=configs/classes/isprs.toml
[ -f "$W/linear.safetensors" ] || $B model new --arch linear --bands 3 --classes $classes --window 512 -o "$W/linear.safetensors" >/dev/null
scene() { # size -> folder
  local d="$W/scene_$1"
  [ -f "$d/image.tif" ] || $B synth --size "$1x$1" --seed 1 -o "$d" --quiet
  echo "$d"
}
