#!/usr/bin/env bash
# Installs LiteLLM's proxy (the peer of the gateway-overhead benchmark) from
# PyPI into a virtual environment under the peers cache folder.
# Idempotent: prints the path of the `litellm` command and exits at once when
# it is installed.
#
#   bench/scripts/install-litellm.sh   -> prints the path of litellm
set -euo pipefail
root="${SLUICE_PEERS_DIR:-$HOME/.cache/sluice/peers}/litellm"
bin="$root/venv/bin/litellm"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$root"
echo "[litellm] creating $root/venv and installing 'litellm[proxy]' (a few minutes)" >&2
python3 -m venv "$root/venv"
"$root/venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$root/venv/bin/python" -m pip install --quiet 'litellm[proxy]' >&2
"$root/venv/bin/litellm" --version >&2 || true
echo "$bin"
