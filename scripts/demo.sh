#!/usr/bin/env bash
# The main job on a built-in example: installs what is missing, builds,
# generates a georeferenced scene, makes a model and maps the scene.
# Output lands in target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
bin=target/release/rstile
out=target/demo
mkdir -p "$out"
$bin synth --size 2048x2048 --seed 7 -o "$out/scene"
$bin model new --arch tiny --bands 3 --classes configs/classes/isprs.toml -o "$out/tiny.safetensors" --overwrite
$bin infer "$out/scene/image.tif" -o "$out/map.tif" --model "$out/tiny.safetensors" --preview "$out/map.png" --overwrite
ls -l "$out"/map.*
