#!/usr/bin/env bash
# Builds rstile with --features cuda on any x86-64 Linux machine, GPU or not.
#
#   bash scripts/build-cuda.sh                 # cargo build --release --features cuda
#   bash scripts/build-cuda.sh --check         # cargo check --all-targets --features cuda (CI)
#   bash scripts/build-cuda.sh --bundle        # build, then pack for scripts/gpu-run.sh
#   bash scripts/build-cuda.sh [CARGO ARGS..]  # extra args go to cargo
#
# Output: target/cuda/release/rstile (its own target dir: never relinks
# target/release), target/cuda/release/cuda-stubs/libcurand.so.10 (see
# scripts/curand-stub.c) and, with --bundle, target/cuda/gpu-bundle.tar.xz:
# the binary, the libraries it links (GDAL, HDF5 and theirs, but not glibc
# or libstdc++), GDAL and PROJ data and the cuRAND stand-in, about 50 MB, for
# GPU machines that have none of them (scripts/gpu-run.sh unpacks it).
#
# The CUDA 13.0 toolkit comes from NVIDIA's PyPI wheels, pinned below, in a
# venv at target/cuda-venv (nvcc, headers, static cudart: about 270 MB).
# 13.0 because the GPU machines run driver 580 (CUDA 13.0), which refuses
# PTX from a newer nvcc. CUDA_COMPUTE_CAP defaults to 90 (H100/H200).
#
# candle-core 0.11 turns on cudarc's `dynamic-linking`, which would make the
# binary need libcuda.so.1, cuBLAS, cuRAND and NVRTC just to start, so even
# `rstile --help` would fail on a machine without them. rstile's `cuda`
# feature also turns on cudarc's `dynamic-loading` (its own cudarc
# dependency, Cargo.toml), which is what cudarc's code follows: dlopen on
# first GPU use. cudarc's build script refuses the two features together,
# so this script compiles that one build script without `dynamic-linking`
# (scripts/cudarc-rustc.sh, a RUSTC_WRAPPER; a plain `cargo build --features
# cuda` stops at cudarc's "Both `dynamic-loading` and `dynamic-linking`
# features are active"). cudart (needed by candle-kernels' MoE kernels) is
# linked statically. The binary then needs no CUDA library until
# --device cuda:N; at that point it dlopens libcuda.so.1, libcublas.so.13,
# libcublasLt.so.13 and libcurand.so.10.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=build
bundle=0
args=()
for a in "$@"; do
  case "$a" in
    --check) mode=check ;;
    --bundle) bundle=1 ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

# The toolkit: exact CUDA 13.0 update 2 component versions.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)

venv=$root/target/cuda-venv
if [ ! -x "$venv/bin/python" ]; then
  echo "build-cuda: creating $venv"
  python3 -m venv "$venv"
fi
stamp=$venv/.rstile-wheels
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]; then
  echo "build-cuda: installing ${wheels[*]}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-compile "${wheels[@]}"
  echo "${wheels[*]}" >"$stamp"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cuda=$site/nvidia/cu13 # bin/nvcc, nvvm/, include/, lib/
export CUDA_HOME=$cuda CUDA_PATH=$cuda CUDA_ROOT=$cuda NVCC=$cuda/bin/nvcc
export PATH=$cuda/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
"$NVCC" --version | grep -q "release 13.0," || {
  echo "build-cuda: $NVCC is not CUDA 13.0" >&2
  exit 1
}
# candle-kernels compiles its .cu files one at a time unless told
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
if [ "$mode" = check ] && [ "${RSTILE_CUDA_CHECK_FULL:-0}" != 1 ]; then
  # `cargo check` links nothing, so the objects of candle-kernels' libmoe.a
  # (MoE/GGUF kernels that rstile never calls: 7 of the 8 minutes of nvcc on
  # two cores) are left empty; the PTX kernels are still compiled for real.
  # RSTILE_CUDA_CHECK_FULL=1 compiles everything.
  mkdir -p "$root/target/cuda-root/bin"
  wrapper=$root/target/cuda-root/bin/nvcc-check
  cat >"$wrapper" <<WRAP
#!/usr/bin/env bash
prev= out= obj=0
for a in "\$@"; do
  [ "\$a" = -c ] && obj=1
  [ "\$prev" = -o ] && out=\$a
  prev=\$a
done
if [ \$obj = 1 ] && [ -n "\$out" ]; then exec cc -c -x c /dev/null -o "\$out"; fi
exec "$NVCC" "\$@"
WRAP
  chmod +x "$wrapper"
  export NVCC=$wrapper
fi

# candle-kernels asks for -lcudart: give the linker only the static archive.
linkdir=$root/target/cuda-root/lib64
mkdir -p "$linkdir"
ln -sfn "$cuda/lib/libcudart_static.a" "$linkdir/libcudart.a"

# cudarc's build script without `dynamic-linking` (see the top); cargo does
# not fingerprint the wrapper, which is one more reason for the own target dir
export RSTILE_INNER_RUSTC_WRAPPER=${RUSTC_WRAPPER:-}
export RUSTC_WRAPPER=$root/scripts/cudarc-rustc.sh
export CARGO_TARGET_DIR=$root/target/cuda
# the check's empty libmoe.a objects must never reach a real build (cudaforge
# caches objects by source, not by compiler), hence a target dir of its own
[ "$mode" = check ] && [ "${RSTILE_CUDA_CHECK_FULL:-0}" != 1 ] && CARGO_TARGET_DIR=$root/target/cuda/check
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$linkdir"

start=$(date +%s)
if [ "$mode" = check ]; then
  cargo check --all-targets --features cuda "${args[@]}"
  echo "build-cuda: check ok in $(($(date +%s) - start)) s"
  exit 0
fi
cargo build --release --features cuda "${args[@]}"

bin=$CARGO_TARGET_DIR/release/rstile
stubs=$CARGO_TARGET_DIR/release/cuda-stubs
mkdir -p "$stubs"
cc -O2 -shared -fPIC -Wl,-soname,libcurand.so.10 -o "$stubs/libcurand.so.10" scripts/curand-stub.c
# the point of the dynamic loading: no CUDA library among the binary's needs
if readelf -d "$bin" | grep NEEDED | grep -Eq 'libcuda|libcublas|libcurand|libnvrtc|libcudart'; then
  echo "build-cuda: $bin links a CUDA library dynamically:" >&2
  readelf -d "$bin" | grep NEEDED >&2
  exit 1
fi
echo "build-cuda: $bin built in $(($(date +%s) - start)) s (CUDA 13.0, sm_$CUDA_COMPUTE_CAP)"

[ "$bundle" = 1 ] || exit 0
stage=$CARGO_TARGET_DIR/gpu-bundle
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib" "$stage/fallback" "$stage/share/proj"
cp "$bin" "$stage/bin/"
cp "$stubs/libcurand.so.10" "$stage/fallback/"
# every library the binary loads, less glibc, libstdc++ and libgcc_s (any
# machine that runs PyTorch has newer ones)
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' |
  grep -Ev '^(libc|libm|libpthread|libdl|librt|libresolv|libutil|ld-linux[^ ]*|libstdc\+\+|libgcc_s)\.so' |
  while read -r name path; do cp -L "$path" "$stage/lib/$name"; done
cp -r "$(gdal-config --datadir 2>/dev/null || echo /usr/share/gdal)" "$stage/share/gdal"
for f in proj.db proj.ini; do
  [ -f "/usr/share/proj/$f" ] && cp "/usr/share/proj/$f" "$stage/share/proj/"
done
tar -C "$stage" -cf - . | xz -T0 -6 >"$CARGO_TARGET_DIR/gpu-bundle.tar.xz"
rm -rf "$stage"
echo "build-cuda: $CARGO_TARGET_DIR/gpu-bundle.tar.xz ($(du -h "$CARGO_TARGET_DIR/gpu-bundle.tar.xz" | cut -f1)): carry it and run scripts/gpu-run.sh"
