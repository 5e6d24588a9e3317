#!/usr/bin/env bash
# The whole test suite: unit, property, integration (real binary on
# generated scenes and on ../shared/data/real when present) and QGIS tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --release
