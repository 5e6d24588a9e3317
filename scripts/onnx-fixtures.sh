#!/usr/bin/env bash
# Makes tests/fixtures/onnx/ (issue 14): real exports of smp and torchvision
# networks by torch.onnx.export, with onnxruntime's outputs. Run by hand,
# not by CI; the fixtures are committed. Builds its venv in
# target/onnx-venv (torch, torchvision, segmentation-models-pytorch, onnx,
# onnxruntime, onnxscript, all from PyPI); none of them is a dependency of
# rstile.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/onnx-venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q torch torchvision segmentation-models-pytorch onnx onnxruntime onnxscript
rm -rf tests/fixtures/onnx
"$VENV/bin/python" scripts/onnx-fixtures.py --out tests/fixtures/onnx "$@"
# The real torch.save checkpoints of the --pretrained test (torchvision
# resnet18 as .pth and as a Lightning .ckpt, 45 MB each) are too large to
# commit: tests/train.rs makes them with scripts/torch-checkpoints.py in this
# venv when it finds it (or RSTILE_TORCH_PYTHON), and prints SKIP elsewhere.
