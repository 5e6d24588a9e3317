#!/usr/bin/env bash
# One GPU session's worth of checks of the CUDA build, on a machine with a
# GPU, nvcc and PyTorch + torchvision but no Rust, no GDAL, no internet.
# Build and pack here first:
#
#   bash scripts/build-cuda.sh --bundle
#
# then carry target/cuda/gpu-bundle.tar.xz (49 MB: the binary, GDAL, HDF5 and
# the other libraries it links, GDAL and PROJ data, a cuRAND stand-in; the
# bare 59 MB binary and those libraries would not fit a 64 MiB carry
# together) and run from the repository root there:
#
#   bash scripts/gpu-run.sh
#
# Steps: nvidia-smi; a random resnet50-fcn model; the maps of one 1024x1024
# scene on CPU and on the GPU, compared; `rstile model bench` forward and
# training step (AdamW) at batch 16 and 64, 256x256; the PyTorch peer
# (torchvision ResNet50 + FCNHead at stride 32, bilinear upsampling, eager,
# channels_last, autocast bf16) at the same batches; `rstile infer --device
# cuda:0` on a 16384x16384 scene, timed, with 256 px windows then 512. Each
# step has its own time limit, a failing step does not stop the others, and
# the whole run keeps under 8 minutes (give the run 9).
# Output in $OUT (else target/gpu-run): log.txt, summary.txt,
# rstile-bench.jsonl, torch-bench.jsonl.
#
# Environment: RSTILE_BUNDLE (target/cuda/gpu-bundle.tar.xz), RSTILE_BIN
# (the bundle's, else target/cuda/release/rstile), PYTHON (python3),
# GPU_RUN_SIZE (16384), GPU_RUN_BUDGET_S (450: no step starts after it).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/target/gpu-run}
mkdir -p "$out"
work=$(mktemp -d /tmp/gpu-run.XXXXXX)
bundle=${RSTILE_BUNDLE:-$root/target/cuda/gpu-bundle.tar.xz}
py=${PYTHON:-python3}
size=${GPU_RUN_SIZE:-16384}
budget=${GPU_RUN_BUDGET_S:-450}
t0=$(date +%s)
log=$out/log.txt
summary=$out/summary.txt
: >"$log"
: >"$summary"

say() { echo "$*" | tee -a "$log"; }
note() { say "$*"; echo "$*" >>"$summary"; }
# step NAME LIMIT_S CMD...: CMD (a program, not a shell function) with a
# time limit, its output into log.txt; ok / FAILED / SKIPPED into summary.txt
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - ($(date +%s) - t0)))
  say ""
  say "=== $name (limit ${limit} s, ${left} s of the budget left)"
  if [ "$left" -lt 10 ]; then
    note "SKIPPED  $name: time budget spent"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local s rc
  s=$(date +%s)
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$log" | tee "$work/last.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then
    note "ok       $name ($(($(date +%s) - s)) s)"
  else
    note "FAILED   $name (exit $rc$([ "$rc" = 124 ] && echo ', timed out'), $(($(date +%s) - s)) s)"
  fi
  return "$rc"
}

# --- libraries: CUDA from PyTorch's wheels; GDAL & co from the bundle
torch_dir=$("$py" -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null)
cuda_libs=
if [ -n "$torch_dir" ]; then
  site=$(dirname "$torch_dir")
  for d in "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib "$torch_dir/lib"; do
    [ -d "$d" ] && cuda_libs=$cuda_libs${cuda_libs:+:}$d
  done
fi
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$d" ] && cuda_libs=$cuda_libs${cuda_libs:+:}$d
done
libs=$cuda_libs
bin=${RSTILE_BIN:-}
if [ -f "$bundle" ]; then
  mkdir -p "$work/bundle" && tar -xJf "$bundle" -C "$work/bundle"
  export GDAL_DATA=$work/bundle/share/gdal PROJ_DATA=$work/bundle/share/proj PROJ_LIB=$work/bundle/share/proj
  # the bundle's GDAL & co first; fallback/ (the cuRAND stand-in) last, so
  # that a real libcurand.so.10 wins
  libs=$work/bundle/lib${libs:+:}$libs:$work/bundle/fallback
  bin=${bin:-$work/bundle/bin/rstile}
else
  say "no $bundle: rstile needs GDAL and HDF5 installed here"
fi
bin=${bin:-$root/target/cuda/release/rstile}
export GDAL_DRIVER_PATH=disable
# rstile, with the libraries, as a program that `timeout` can run
mkdir -p "$work/bin"
cat >"$work/bin/rstile" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$bin" "\$@"
EOF
chmod +x "$work/bin/rstile"
export PATH=$work/bin:$PATH

step "nvidia-smi" 30 nvidia-smi
{
  echo "rstile: $bin ($(du -h "$bin" 2>/dev/null | cut -f1))"
  echo "torch: ${torch_dir:-NOT FOUND}"
  echo "CUDA library dirs: $cuda_libs"
  "$py" -c 'import torch, torchvision; print("torch", torch.__version__, "CUDA", torch.version.cuda, "torchvision", torchvision.__version__)'
  command -v nvcc >/dev/null && nvcc --version | tail -2
  echo "cores: $(nproc)"
  echo "libraries rstile needs but would not find:"
  LD_LIBRARY_PATH=$libs ldd "$bin" | grep "not found" || echo "  none"
  for l in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
    if LD_LIBRARY_PATH=$cuda_libs "$py" -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$l" 2>/dev/null; then
      echo "  $l: found"
    else
      echo "  $l: NOT among the system's and PyTorch's libraries"
    fi
  done
} 2>&1 | tee -a "$log"
if [ -f "$work/bundle/fallback/libcurand.so.10" ] &&
  ! LD_LIBRARY_PATH=$cuda_libs "$py" -c "import ctypes; ctypes.CDLL('libcurand.so.10')" 2>/dev/null; then
  note "note     no libcurand.so.10 here: the bundle's stand-in is used (no random numbers on the GPU)"
fi

step "rstile --version" 20 rstile --version

model=$work/r50.safetensors
step "model new resnet50-fcn" 60 rstile model new --arch resnet50-fcn --bands 3 \
  --classes configs/classes/isprs.toml -o "$model" --seed 1 --overwrite
step "model info" 20 rstile model info "$model"

# --- correctness: one 1024x1024 scene mapped on the CPU and on the GPU
step "synth 1024x1024" 60 rstile synth --size 1024x1024 --seed 3 -q -o "$work/small"
step "infer 1024x1024 --device cpu" 120 rstile infer "$work/small/image.tif" -o "$work/small-cpu.tif" \
  --model "$model" --device cpu --confidence --preview "$work/small-cpu.png" --overwrite
step "infer 1024x1024 --device cuda:0" 120 rstile infer "$work/small/image.tif" -o "$work/small-cuda.tif" \
  --model "$model" --device cuda:0 --confidence --preview "$work/small-cuda.png" --overwrite
cat >"$work/compare.py" <<'PY'
import sys
import numpy as np
w = sys.argv[1]
def load(stem):
    try:
        import tifffile
        return tifffile.imread(f"{w}/{stem}.tif"), tifffile.imread(f"{w}/{stem}.confidence.tif")
    except Exception as e:
        from PIL import Image
        print(f"tifffile could not read the maps ({e}); comparing the PNG previews")
        return np.asarray(Image.open(f"{w}/{stem}.png").convert("RGB")), None
a, ca = load("small-cpu")
b, cb = load("small-cuda")
if a.shape != b.shape:
    sys.exit(f"shapes differ: {a.shape} vs {b.shape}")
same = (a == b).all(axis=-1) if a.ndim == 3 else (a == b)
msg = f"CUDA vs CPU: {same.mean() * 100:.3f}% of {same.size} px get the same class"
if ca is not None:
    d = np.abs(ca.astype(int) - cb.astype(int))
    msg += f"; confidence differs by at most {d.max()} (mean {d.mean():.3f}) points"
print(msg)
sys.exit(0 if same.mean() > 0.99 else 1)
PY
step "compare the CUDA and CPU maps" 60 "$py" "$work/compare.py" "$work"
note "         $(tail -1 "$work/last.log")"

# --- the network alone: forward passes and training steps (AdamW)
for b in 16 64; do
  step "model bench cuda:0 batch $b" 120 rstile model bench --model "$model" --device cuda:0 \
    --batch "$b" --size 256 --iters 5 --warmup 2 --train --json &&
    grep '^{' "$work/last.log" | tee -a "$out/rstile-bench.jsonl" >>"$summary"
done

# --- the PyTorch peer: same network, classes and input size
cat >"$work/peer.py" <<'PY'
import json, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
import torchvision
from torchvision.models.segmentation.fcn import FCNHead

class FCN(nn.Module):
    """torchvision ResNet50 encoder (stride 32) + FCNHead, bilinear upsampling."""
    def __init__(self, classes):
        super().__init__()
        r = torchvision.models.resnet50(weights=None)
        self.encoder = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool,
                                     r.layer1, r.layer2, r.layer3, r.layer4)
        self.head = FCNHead(2048, classes)
    def forward(self, x):
        y = self.head(self.encoder(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

torch.backends.cudnn.benchmark = True
size, classes, iters = 256, 6, 10
print("torch", torch.__version__, torch.cuda.get_device_name(0), flush=True)
for batch in (16, 64):
    model = FCN(classes).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    t = torch.randint(0, classes, (batch, size, size), device="cuda")
    def timed(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        s = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - s) / iters
    model.eval()
    def infer():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)
    ti = timed(infer)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    def train():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
    tt = timed(train)
    px = batch * size * size
    r = dict(peer="torch-eager-bf16-channels_last", batch=batch, size=size,
             infer_s=ti, infer_samples_s=batch / ti, infer_mpx_s=px / ti / 1e6,
             train_step_s=tt, train_samples_s=batch / tt, train_mpx_s=px / tt / 1e6,
             max_mem_gib=torch.cuda.max_memory_allocated() / 2**30)
    print(json.dumps(r), flush=True)
    print(f"batch {batch}: inference {r['infer_samples_s']:.1f} samples/s "
          f"{r['infer_mpx_s']:.1f} Mpx/s; training step {r['train_samples_s']:.1f} "
          f"samples/s {r['train_mpx_s']:.1f} Mpx/s", flush=True)
    del model, opt, x, t
    torch.cuda.empty_cache()
PY
step "PyTorch peer (ResNet50 + FCNHead, bf16, channels_last)" 150 "$py" "$work/peer.py"
grep '^{' "$work/last.log" >>"$out/torch-bench.jsonl"
grep '^batch ' "$work/last.log" | sed 's/^/         torch /' >>"$summary"

# --- end to end on a large scene
step "synth ${size}x${size}" 150 rstile synth --size "${size}x${size}" --seed 5 -q -o "$work/big"
for args in "--batch 16" "--batch 16 --window 512"; do
  # shellcheck disable=SC2086 # $args is two or four words
  step "infer ${size}x${size} --device cuda:0 $args" 150 rstile infer "$work/big/image.tif" \
    -o "$work/big-map.tif" --model "$model" --device cuda:0 $args --overwrite &&
    note "         $(grep "mapped .* px in" "$work/last.log" | tail -1)"
done

say ""
say "=== summary ($(($(date +%s) - t0)) s)"
tee -a "$log" <"$summary"
rm -rf "$work"
exit 0
