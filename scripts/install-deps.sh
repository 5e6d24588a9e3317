#!/usr/bin/env bash
# Installs what rstile needs on a fresh Debian 12 machine: GDAL, HDF5 and
# clang dev packages to build (python3-venv: scripts/build-cuda.sh's CUDA
# toolkit venv), gdal-bin for the tests' gdalbuildvrt and
# gdalinfo, and QGIS (python3-qgis, offscreen) for the QGIS test.
# Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(libgdal-dev gdal-bin python3-gdal libhdf5-dev clang libclang-dev pkg-config python3-venv)
if [ "${RSTILE_SKIP_QGIS:-0}" != 1 ]; then
  pkgs+=(python3-qgis qgis-providers)
fi
# the one-host Slurm cluster of tests/slurm.rs (scripts/slurm-up.sh)
if [ "${RSTILE_SKIP_SLURM:-0}" != 1 ]; then
  pkgs+=(slurm-wlm munge)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
echo "install-deps: ok"
