#!/usr/bin/env bash
# The gateway's own overhead, in one run: a fixed-answer mock upstream,
# then non-streaming chat completions at 1, 16 and 64 connections against
#   mock     the mock directly (the baseline),
#   sluice   Sluice proxying to the mock (release build, no local model),
#   litellm  LiteLLM's proxy proxying to the mock (bench/scripts/install-litellm.sh).
# Results: a Markdown table on stdout, JSON in bench/results/gateway-overhead.json.
#
#   bench/run-gateway-overhead.sh [DURATION_S]        (SKIP_LITELLM=1 to leave it out)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release -p sluice-gateway -p sluice-bench >&2
bench="$target_dir/release/sluice-bench"
sluice="$target_dir/release/sluice"
mock_port=18001 sluice_port=18002 litellm_port=18003
key="sk-bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_http() { # url
    for _ in $(seq 1 900); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "not answering: $1" >&2
    return 1
}

"$bench" mock-upstream --listen "127.0.0.1:$mock_port" 2>"$work/mock.log" &
pids+=($!)
wait_http "http://127.0.0.1:$mock_port/v1/models"

cat >"$work/sluice.toml" <<TOML
[server]
listen = "127.0.0.1:$sluice_port"

[[providers]]
kind = "openai"
name = "mock"
base_url = "http://127.0.0.1:$mock_port/v1"
[providers.resilience]
max_attempts = 1

[[routes]]
model = "mock-model"
[[routes.deployments]]
name = "mock"
provider = "mock"
upstream_model = "mock-model"
TOML
SLUICE_LOG=warn "$sluice" serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
pids+=($!)
wait_http "http://127.0.0.1:$sluice_port/ready"

targets=(--target "mock=http://127.0.0.1:$mock_port/v1" --target "sluice=http://127.0.0.1:$sluice_port/v1")
if [ -z "${SKIP_LITELLM:-}" ]; then
    litellm="$(bench/scripts/install-litellm.sh)"
    cat >"$work/litellm.yaml" <<YAML
model_list:
  - model_name: mock-model
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:$mock_port/v1
      api_key: none
litellm_settings:
  telemetry: false
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
YAML
    # LiteLLM refuses to start without a master key; every target gets it as
    # the bearer token (the mock and an open Sluice ignore it).
    LITELLM_MASTER_KEY="$key" "$litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$litellm_port" \
        >"$work/litellm.log" 2>&1 &
    pids+=($!)
    wait_http "http://127.0.0.1:$litellm_port/health/liveliness" || { tail -20 "$work/litellm.log" >&2; exit 1; }
    targets+=(--target "litellm=http://127.0.0.1:$litellm_port/v1")
fi

mkdir -p bench/results
"$bench" overhead "${targets[@]}" --concurrency 1,16,64 --duration-s "$duration" --api-key "$key" \
    --json bench/results/gateway-overhead.json
curl -fsS "http://127.0.0.1:$sluice_port/metrics" | grep '^sluice_gateway_overhead_seconds' >&2 || true
