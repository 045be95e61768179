#!/usr/bin/env bash
# Runs every test of the workspace: the README's test command, and what CI runs.
#
# Fetches the demo models first (end-to-end tests use the real weights),
# builds the binaries the end-to-end tests start, then runs lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== fetching demo models (cached after the first run)"
scripts/fetch-models.sh chat
scripts/fetch-models.sh embed
# The guard's training splits: its tests check the committed head's data hashes.
scripts/fetch-models.sh guard-data

echo "== the Python the end-to-end tests use (OpenAI SDK, jsonschema)"
SLUICE_PYTHON="$(scripts/python-env.sh)"
export SLUICE_PYTHON

echo "== formatting"
cargo fmt --all -- --check

echo "== layering: the gateway's modules import one way, without cycles"
cargo test -p sluice-gateway --test layering

echo "== building binaries used by the end-to-end tests"
cargo build --workspace --bins

echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# pipefail (set above) keeps cargo's exit status through tee.
cargo test --workspace 2>&1 | tee "$log"

echo "== the cuda feature: kernels compiled by nvcc from NVIDIA's wheels, twins, no-GPU errors"
# No GPU here: this builds the .cu kernels (failing on register spills),
# lints the launch code and runs the twins and the "no GPU" tests.
SLUICE_CUDA_HOME="$(scripts/cuda-toolchain.sh)"
export SLUICE_CUDA_HOME
cargo clippy -p sluice-kernels --features cuda --all-targets -- -D warnings
cargo test -p sluice-kernels --features cuda 2>&1 | tee -a "$log"

echo "== the CUDA executor (runtime --features cuda: CudaOps, sluice-gpucheck, 'no GPU here')"
# The device step itself is tested with CPU ops in the main run; here only
# what the feature changes: it builds, and without a GPU it says so.
cargo clippy -p sluice-runtime --features cuda --all-targets -- -D warnings
cargo test -p sluice-runtime --features cuda --lib -- \
    device::tests::a_cuda_device device::tests::an_engine_on_a_gpu \
    gpu_telemetry 2>&1 | tee -a "$log"
cargo test -p sluice-runtime --features cuda --test gpucheck_no_gpu 2>&1 | tee -a "$log"

# cargo prints one "test result" line per test binary, the last often a
# doc-test run with 0 tests; close with the totals instead.
awk '/^test result:/ { p += $4; f += $6 } END { printf "\n%d passed, %d failed\n", p, f }' "$log"
