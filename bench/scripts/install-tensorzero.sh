#!/usr/bin/env bash
# Installs TensorZero (the second peer of the gateway-overhead benchmark)
# from PyPI into a virtual environment under the peers cache folder.
#
# TensorZero publishes no gateway binary on PyPI: its Rust gateway is
# compiled into the Python package's extension module (tensorzero.abi3.so,
# ~120 MB), which can serve it over HTTP in process (`_start_http_gateway`,
# what `patch_openai_client` uses). bench/scripts/tensorzero-gateway.py
# starts it that way; the requests are then served by TensorZero's own Rust
# code (axum + tokio threads), with Python only holding the process open.
# The version is pinned so a rerun measures the same gateway.
# Idempotent: prints the path of the environment's python and exits at once
# when it is installed.
#
#   bench/scripts/install-tensorzero.sh   -> prints the path of the venv's python
set -euo pipefail
version="${TENSORZERO_VERSION:-2026.6.0}"
root="${SLUICE_PEERS_DIR:-$HOME/.cache/sluice/peers}/tensorzero-$version"
python="$root/venv/bin/python"
if [ -x "$python" ] && "$python" -c 'import tensorzero' 2>/dev/null; then
    echo "$python"
    exit 0
fi
mkdir -p "$root"
echo "[tensorzero] creating $root/venv and installing tensorzero==$version (a 42 MB wheel)" >&2
python3 -m venv "$root/venv"
"$python" -m pip install --quiet --upgrade pip >&2
"$python" -m pip install --quiet "tensorzero==$version" >&2
"$python" -c 'import tensorzero; print("[tensorzero] installed", tensorzero.__version__)' >&2
echo "$python"
