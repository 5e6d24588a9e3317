#!/usr/bin/env bash
# The main job on a built-in example: installs what is missing, builds, and
# runs `rstile demo`: a generated, georeferenced Vaihingen-shaped dataset
# goes through prepare, train, eval and infer. Output lands in target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
bin=target/release/rstile
# the whole benchmark on a built-in dataset: synth (official ISPRS layout),
# prepare, train `tiny` for about a minute, eval, infer (map, .qml, preview)
$bin demo --out target/demo --overwrite
