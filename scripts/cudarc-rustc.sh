#!/usr/bin/env bash
# RUSTC_WRAPPER for the cuda build (scripts/build-cuda.sh sets it): passes
# every rustc call through unchanged, except the compilation of cudarc's
# build script, from which it drops `--cfg feature="dynamic-linking"`.
#
# Why: candle-core's cuda feature asks cudarc for `dynamic-linking`, rstile's
# own cudarc dependency (Cargo.toml) for `dynamic-loading`. cudarc's library
# code only asks whether `dynamic-loading` is on (then every CUDA call goes
# through dlopen/dlsym on first use; `dynamic-linking` appears nowhere in it),
# but its build script panics when both are on ("Both `dynamic-loading` and
# `dynamic-linking` features are active") and, with `dynamic-linking`, would
# tell the linker -lcuda -lcublas -lcublasLt -lcurand -lnvrtc. Compiled
# without that one cfg, the build script does neither.
#
# Called as `cudarc-rustc.sh RUSTC ARGS..`; an outer wrapper (sccache, ...)
# can be given in RSTILE_INNER_RUSTC_WRAPPER.
set -euo pipefail
if [ "${CARGO_PKG_NAME:-}" = cudarc ] && [[ " $* " == *" --crate-name build_script_build "* ]]; then
  args=()
  for a in "$@"; do
    if [ "$a" = 'feature="dynamic-linking"' ] && [ "${args[${#args[@]}-1]}" = --cfg ]; then
      args=("${args[@]:0:${#args[@]}-1}")
      continue
    fi
    args+=("$a")
  done
  set -- "${args[@]}"
fi
exec ${RSTILE_INNER_RUSTC_WRAPPER:-} "$@"
