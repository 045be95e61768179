#!/usr/bin/env bash
# Sluice's engine and llama.cpp's llama-server side by side in one run: same
# GGUF, same token ids, same thread count, one after the other. Writes
# bench/results/engine-vs-llama-cpp.{json,md} and prints the markdown table
# (ready for bench/RESULTS.md) on stdout; progress goes to stderr.
#
#   bench/run-engine-vs-llama-cpp.sh [more sluice-bench llama-cpp flags]
#
# Environment: THREADS (default: every core), REQUANTIZE (Sluice weight
# formats, default "none,q8_0"), CARGO_TARGET_DIR (default ~/.cache/sluice/target).
# Run it on a quiet machine: llama.cpp's threads spin-wait, so anything else
# running makes its numbers (and less so Sluice's) meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
threads="${THREADS:-$(nproc)}"
requantize="${REQUANTIZE:-none,q8_0}"

echo "== demo model" >&2
scripts/fetch-models.sh chat >&2
echo "== building sluice-bench (release)" >&2
cargo build --release -p sluice-bench >&2
echo "== locating llama-server (builds it the first time, ~12 minutes)" >&2
server="$(bench/scripts/build-llama-server.sh)"

mkdir -p bench/results
echo "== running: $threads threads, Sluice weights $requantize" >&2
"$CARGO_TARGET_DIR/release/sluice-bench" llama-cpp \
    --llama-server "$server" \
    --threads "$threads" \
    --requantize "$requantize" \
    --json bench/results/engine-vs-llama-cpp.json \
    --markdown bench/results/engine-vs-llama-cpp.md \
    "$@"
