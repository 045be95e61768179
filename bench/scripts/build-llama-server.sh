#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the peer for side-by-side benchmarks) from the
# sources vendored in the llama-cpp-python sdist on PyPI, into a cache folder.
# Idempotent: prints the binary's path and exits at once when it is built.
#
#   bench/scripts/build-llama-server.sh   -> prints the path of llama-server
set -euo pipefail
version="0.3.36"
root="${SLUICE_PEERS_DIR:-$HOME/.cache/sluice/peers}/llama-cpp-$version"
bin="$root/build/bin/llama-server"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$root"
if ! command -v cmake >/dev/null; then
    echo "[llama.cpp] installing cmake (pip)" >&2
    python3 -m pip install --quiet cmake
fi
if [ ! -d "$root/src" ]; then
    echo "[llama.cpp] downloading the llama-cpp-python $version sdist" >&2
    python3 -m pip install --quiet scikit-build-core
    python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        --dest "$root/dl" "llama-cpp-python==$version"
    mkdir -p "$root/src"
    tar -xzf "$root"/dl/llama_cpp_python-*.tar.gz -C "$root/src" --strip-components=1
fi
echo "[llama.cpp] configuring and building llama-server (about 12 minutes on 2 cores)" >&2
cmake -S "$root/src/vendor/llama.cpp" -B "$root/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DGGML_NATIVE=ON >&2
cmake --build "$root/build" --target llama-server -j "$(nproc)" >&2
echo "$bin"
