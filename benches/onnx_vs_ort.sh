#!/usr/bin/env bash
# rstile's ONNX evaluator against onnxruntime (CPU execution provider) and
# PyTorch eager, in one run, on the same machine, threads, batch and window:
# smp Unet-ResNet34 and torchvision deeplabv3_resnet50 (full width, random
# weights, exported by benches/onnx_vs_ort.py). Each tool alternates with the
# others ROUNDS times and keeps its best time; a ratio is rstile's speed over
# the other's (above 1: rstile is faster). The last line is the smaller ratio
# over the networks:
#
#   onnx_vs_ort=X onnx_vs_torch=Y
#
#   bash benches/onnx_vs_ort.sh
#   THREADS=2 BATCH=4 SIZE=512 ROUNDS=2 ITERS=2 bash benches/onnx_vs_ort.sh
#
# torch, torchvision, segmentation-models-pytorch, onnx and onnxruntime are
# installed into target/onnx-venv if missing; none is a dependency of rstile.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
BATCH=${BATCH:-4}
SIZE=${SIZE:-512}
ITERS=${ITERS:-2}
ROUNDS=${ROUNDS:-2}
VENV=target/onnx-venv
PY=$VENV/bin/python
if ! "$PY" -c "import torch, torchvision, segmentation_models_pytorch, onnx, onnxruntime" 2>/dev/null; then
  echo "installing torch, smp, onnx and onnxruntime into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch torchvision segmentation-models-pytorch onnx onnxruntime
fi
cargo build --release -q --bin rstile
BIN=$PWD/target/release/rstile
OUT=target/onnx-bench-$SIZE
if [ ! -f "$OUT/deeplabv3_resnet50.onnx" ]; then
  mkdir -p "$OUT"
  "$PY" benches/onnx_vs_ort.py export "$OUT" "$SIZE" 2>/dev/null
fi
echo "# $(date -u +%FT%TZ) $(uname -m), $THREADS threads, batch $BATCH x 3 x $SIZE x $SIZE, best of $ITERS x $ROUNDS rounds"
ratios=()
for net in unet_resnet34 deeplabv3_resnet50; do
  best_r=; best_o=; best_t=
  for _ in $(seq "$ROUNDS"); do
    r=$("$BIN" model bench --model "$OUT/$net.onnx" --batch "$BATCH" --size "$SIZE" \
          --iters "$ITERS" --warmup 1 --threads "$THREADS" --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['forward_min_s'])")
    ot=$("$PY" benches/onnx_vs_ort.py time "$OUT" "$net" "$BATCH" "$SIZE" "$THREADS" "$ITERS")
    o=$(echo "$ot" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['ort_s'])")
    t=$(echo "$ot" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['torch_s'])")
    best_r=$("$PY" -c "print(min(x for x in [$r, ${best_r:-1e9}]))")
    best_o=$("$PY" -c "print(min(x for x in [$o, ${best_o:-1e9}]))")
    best_t=$("$PY" -c "print(min(x for x in [$t, ${best_t:-1e9}]))")
  done
  line=$("$PY" -c "r,o,t=$best_r,$best_o,$best_t; print(f'$net rstile {r:.3f} s  onnxruntime {o:.3f} s  torch {t:.3f} s  vs_ort {o/r:.2f}  vs_torch {t/r:.2f}')")
  echo "$line"
  ratios+=("$best_r,$best_o,$best_t")
done
"$PY" -c "
rs=[tuple(map(float,x.split(','))) for x in '${ratios[*]}'.split()]
print(f'onnx_vs_ort={min(o/r for r,o,t in rs):.2f} onnx_vs_torch={min(t/r for r,o,t in rs):.2f}')"
