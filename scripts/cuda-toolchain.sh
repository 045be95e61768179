#!/usr/bin/env bash
# The CUDA 13.0 compiler for `sluice-kernels --features cuda`, without a GPU
# and without a system toolkit: NVIDIA publishes nvcc, ptxas, NVVM, the
# runtime headers and CCCL as Python wheels, so pip can fetch a working
# compiler on any glibc x86-64 machine. Installed once into
# $HOME/.cache/sluice/cuda-13.0 (or $SLUICE_CACHE_DIR/cuda-13.0); prints the
# toolkit root (the folder holding bin/nvcc and include/) on stdout, progress
# on stderr. Set SLUICE_CUDA_HOME to that root for `kernels/build.rs`.
#
# Pinned to 13.0 on purpose: the lent H100/H200 machines run driver 580
# (CUDA 13.0), and PTX from a newer compiler may be refused by that driver.
set -euo pipefail

cache="${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}"
prefix="$cache/cuda-13.0"
site="$prefix/site"
want="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88"
stamp="$prefix/.installed"

# The wheels unpack into one merged tree (nvidia/cu13/{bin,include,lib,nvvm});
# older wheel generations used nvidia/cuda_nvcc/. Find whichever holds nvcc.
toolkit_root() {
    local nvcc
    nvcc="$(find "$site/nvidia" -path '*/bin/nvcc' -type f 2>/dev/null | head -n 1)"
    [ -n "$nvcc" ] || return 1
    dirname "$(dirname "$nvcc")"
}

# nvcc must report the pinned release, or the stamp is lying.
check_version() {
    local root="$1"
    local version
    version="$("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
    if [ "$version" != "13.0" ]; then
        echo "[cuda-toolchain] $root/bin/nvcc reports release '$version', want 13.0" >&2
        return 1
    fi
    [ -x "$root/bin/ptxas" ] || { echo "[cuda-toolchain] no ptxas under $root/bin" >&2; return 1; }
    [ -f "$root/include/cuda_bf16.h" ] || { echo "[cuda-toolchain] no cuda_bf16.h under $root/include" >&2; return 1; }
}

if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && root="$(toolkit_root)" && check_version "$root" 2>/dev/null; then
    echo "$root"
    exit 0
fi

echo "[cuda-toolchain] installing $want into $site (once; about 105 MB download, 490 MB installed)" >&2
rm -rf "$prefix"
mkdir -p "$site"
# shellcheck disable=SC2086
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$site" $want >&2

root="$(toolkit_root)" || { echo "[cuda-toolchain] nvcc not found under $site after install" >&2; exit 1; }
# nvcc looks for cicc under ../nvvm/bin relative to itself; the nvvm wheel
# puts it in the merged tree already, but say so if not, rather than let
# nvcc fail later with a vaguer message.
[ -x "$root/nvvm/bin/cicc" ] || { echo "[cuda-toolchain] no nvvm/bin/cicc under $root" >&2; exit 1; }
check_version "$root"
echo "$want" >"$stamp"
echo "[cuda-toolchain] toolkit at $root" >&2
echo "$root"
