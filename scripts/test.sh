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

echo "== formatting"
cargo fmt --all -- --check

echo "== building binaries used by the end-to-end tests"
cargo build --workspace --bins

echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests"
cargo test --workspace
