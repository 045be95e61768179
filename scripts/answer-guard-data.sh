#!/usr/bin/env bash
# Writes the answer head's training data (scripts/answer-guard-data.py has
# the steps and what each reads) under $ANSWER_GUARD_DIR (default
# $SLUICE_MODELS_DIR/answer-guard/), then prints the `sluice guard train`
# command that fitted models/guard/minilm-answer-injection.*.
#
#   SLUICE_BIN=target/release/sluice SLUICE_BENCH=target/release/sluice-bench \
#       scripts/answer-guard-data.sh
#
# Needs: scripts/fetch-models.sh chat embed guard-data guard-sources.
# The answers come from the demo model served by `sluice serve` on
# 127.0.0.1:$PORT (greedy, 200 tokens at most; minutes on a CPU).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
models="${SLUICE_MODELS_DIR:-$HOME/.cache/sluice/models}"
export SLUICE_MODELS_DIR="$models"
export ANSWER_GUARD_DIR="${ANSWER_GUARD_DIR:-$models/answer-guard}"
sluice="${SLUICE_BIN:?point SLUICE_BIN at a sluice binary}"
bench="${SLUICE_BENCH:?point SLUICE_BENCH at a sluice-bench binary}"
port="${PORT:-18631}"
py="$here/answer-guard-data.py"
dest="$ANSWER_GUARD_DIR"
mkdir -p "$dest"

python3 "$py" prompts
if [ ! -s "$dest/answers.csv" ]; then
    data="$(mktemp -d)"
    # Closing its stdin stops the server (the fifo's writer is this shell).
    mkfifo "$data/stdin"
    SLUICE_DATA_DIR="$data" "$sluice" serve --listen "127.0.0.1:$port" --shutdown-on-stdin-eof \
        <"$data/stdin" 2>"$dest/serve.log" &
    server=$!
    exec 9>"$data/stdin"
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
        sleep 1
    done
    python3 "$py" answers "http://127.0.0.1:$port"
    exec 9>&-
    wait "$server" || true
    rm -rf "$data"
else
    echo "[answer-guard] $dest/answers.csv present: not generated again"
fi
python3 "$py" docs

# Verse: Debian's fortunes (songs-poems) and fortunes-ru, pinned by sha256.
fortunes="$models/fortunes"
if [ ! -d "$fortunes/x" ]; then
    mkdir -p "$fortunes/debs"
    (cd "$fortunes/debs" && apt-get download fortunes=1:1.99.1-7.3 fortunes-ru=1.52-3.1 >&2)
    (cd "$fortunes/debs" && sha256sum -c --strict) <<'SUMS'
41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5  fortunes_1%3a1.99.1-7.3_all.deb
2dc76af9c0e02e2926d36f88dcb685bb171fab8677e553a6def41efe8a551cc6  fortunes-ru_1.52-3.1_all.deb
SUMS
    for deb in "$fortunes"/debs/*.deb; do dpkg-deb -x "$deb" "$fortunes/x.tmp"; done
    mv "$fortunes/x.tmp" "$fortunes/x"
fi
python3 "$py" verse
python3 "$py" code
python3 "$py" injections
for name in answers docs verse code data injections; do
    "$bench" answer-windows --csv "$dest/$name.csv" --out "$dest/windows-$name.jsonl"
done
for name in benign-ru benign-tech; do
    "$bench" answer-windows --csv "$here/../models/guard/data/$name.csv" \
        --out "$dest/windows-$name.jsonl"
done
python3 "$py" select

t="$dest/train"
cat <<CMD
[answer-guard] train with:
sluice guard train --source answers=$t/answers.csv --source docs=$t/docs.csv \\
    --source benign-ru-windows=$t/benign-ru.csv --source benign-tech-windows=$t/benign-tech.csv \\
    --source verse=$t/verse.csv --source code=$t/code.csv --source data=$t/data.csv \\
    --source injections=$t/injections.csv --fit-pieces --hidden-units 64 --epochs 40 \\
    --max-fpr 0.02 --max-fpr-high 0.003 --out models/guard/minilm-answer-injection
CMD
