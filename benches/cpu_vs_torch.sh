#!/usr/bin/env bash
# rstile against PyTorch on this machine's CPU, in one run: the same
# architecture (resnet50-fcn: torchvision's resnet50 encoder at stride 32,
# torchvision's FCNHead, bilinear upsampling), the same batch, window,
# bands and thread count, random input and weights of the same shapes, and
# the same timing rule (warm-up runs dropped, the best of the timed runs).
# rstile and PyTorch alternate, ROUNDS times, so that both see the same
# load; each ratio is rstile's speed over PyTorch's (above 1: rstile is
# faster), from the best time of each over all rounds.
#
#   bash benches/cpu_vs_torch.sh
#   THREADS=2 BATCH=4 SIZE=256 BANDS=5 ROUNDS=3 bash benches/cpu_vs_torch.sh
#   BINS="before/rstile after/rstile" ROUNDS=3 bash benches/cpu_vs_torch.sh
#   ARCH=unet-resnet18 THREADS=2 BATCH=4 SIZE=256 bash benches/cpu_vs_torch.sh
#
# ARCH: resnet50-fcn (default) against torchvision, or unet-resnet18/34/50
# against segmentation_models_pytorch's Unet (installed into the venv when
# missing).
#
# BINS: rstile binaries to compare, each against the same PyTorch runs (all
# alternate within each round; one row and one pair of ratios each); by
# default, target/release/rstile as built here.
#
# PyTorch is installed into target/torch-venv if it is missing; it is never
# a dependency of rstile. PyPI's torch wheel for Linux is the CUDA build
# (the CPU-only wheel index is not a PyPI index); on a machine without a
# GPU it runs on the CPU, with the same oneDNN kernels as the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
BATCH=${BATCH:-4}
SIZE=${SIZE:-256}
BANDS=${BANDS:-3}
ITERS=${ITERS:-3}
ROUNDS=${ROUNDS:-2}
ARCH=${ARCH:-resnet50-fcn}
VENV=target/torch-venv
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "installing PyTorch into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch torchvision
fi
if [[ $ARCH == unet-* ]] && ! "$VENV/bin/python" -c "import segmentation_models_pytorch" 2>/dev/null; then
  "$VENV/bin/pip" install -q segmentation-models-pytorch
fi
if [ -z "${BINS:-}" ]; then
  cargo build --release -q --bin rstile
  BINS=$PWD/target/release/rstile
fi
read -ra bins <<<"$BINS"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$ROUNDS"); do
  for i in "${!bins[@]}"; do
    "${bins[$i]}" model bench --arch "$ARCH" --bands "$BANDS" --batch "$BATCH" --size "$SIZE" \
      --iters "$ITERS" --threads "$THREADS" --train --json >>"$out/rstile$i.jsonl"
  done
  "$VENV/bin/python" benches/torch_ref.py --arch "$ARCH" --bands "$BANDS" --batch "$BATCH" \
    --size "$SIZE" --iters "$ITERS" --threads "$THREADS" --train >>"$out/torch.jsonl"
done
"$VENV/bin/python" - "$out" "$BATCH" "$SIZE" "$ARCH" "${bins[@]}" <<'PY'
import json, sys
d, batch, size, arch, bins = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
rows = lambda f: [json.loads(l) for l in open(f"{d}/{f}")]
rss, pt = [rows(f"rstile{i}.jsonl") for i in range(len(bins))], rows("torch.jsonl")
best = lambda rows, k: min(r[k] for r in rows)
rs = rss[0]
gf = rs[0]["forward_gflop"]
print(f"{arch}, batch {batch} x {rs[0]['bands']} x {size} x {size}, "
      f"{rs[0]['threads']} threads, {gf:.1f} GFLOP per forward; torch {pt[0]['torch']} ({pt[0]['isa']})")
print(f"{'':12}{'forward s':>10}{'GFLOP/s':>9}{'train step s':>14}{'samples/s':>11}")
names = ["rstile"] if len(bins) == 1 else bins
for name, r in [*zip(names, rss), ("pytorch", pt)]:
    f, t = best(r, "forward_min_s"), best(r, "train_step_min_s")
    print(f"{name:12}{f:10.3f}{gf / f:9.1f}{t:14.3f}{batch / t:11.2f}")
for name, rs in zip(names, rss):
    fr = best(pt, "forward_min_s") / best(rs, "forward_min_s")
    tr = best(pt, "train_step_min_s") / best(rs, "train_step_min_s")
    tag = "" if len(bins) == 1 else f"{name}: "
    print(f"{tag}forward_ratio={fr:.2f} train_ratio={tr:.2f}")
PY
