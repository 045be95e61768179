#!/usr/bin/env bash
# Where one gateway-overhead row spends its CPU, per request: the same
# servers and load as bench/run-gateway-overhead.sh (a fixed-answer mock
# upstream, non-streaming chat completions that all differ, so the cache
# looks up, misses and stores each time), one row at a time, under a
# profiler:
#   callgrind  instructions per request: the server runs under valgrind
#              with collection off until the load starts; the count is
#              Ir / requests served (from the server's own
#              sluice_requests_total). Timing-free, so comparable across
#              builds on a busy machine.
#   perf       `perf record -g` (cpu-clock) of the server under the load;
#              the top entries by self time, and by thread.
#   cpu        no profiler: the server's CPU time (user + system, all its
#              threads) per request served, and Redis's for the Redis row.
#              Less noisy than requests/s on a busy machine, not immune.
# perf and cpu print the CPU time per request of the server and of Redis
# (the Redis row) or of the OTLP sink (the traced row).
#
#   bench/profile-gateway.sh ROW TOOL [SECONDS] [CONNECTIONS]
#   ROW: sluice | sluice-gov | sluice-gov-redis | sluice-otel
#   TOOL: callgrind | perf | cpu
#   sluice-otel: the sluice row with [telemetry] on, every request's spans
#   exported over OTLP/gRPC to `sluice-bench otlp-sink` on this machine;
#   SAMPLING_RATIO=r sets the traces' ratio (default 1.0).
#   BIN_DIR=path/to/release  (default $CARGO_TARGET_DIR/release; no build
#   is made, so an older commit's binary can be profiled the same way)
#   OUT=dir                  where the profiles go (default bench/results/profile)
#   PREGROW_SPEND=N          start with N spend rows in the store (below)
set -euo pipefail
cd "$(dirname "$0")/.."
row="${1:?row: sluice | sluice-gov | sluice-gov-redis | sluice-otel}"
tool="${2:?tool: callgrind | perf | cpu}"
seconds="${3:-10}"
connections="${4:-16}"
bin_dir="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
sluice="$bin_dir/sluice" bench="$bin_dir/sluice-bench"
out="${OUT:-bench/results/profile}"
mkdir -p "$out"
mock_port=18101 port=18102 redis_port=18103 sink_port=18104
key="sk-bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_http() { # url [tries]
    for _ in $(seq 1 "${2:-900}"); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "not answering: $1" >&2
    return 1
}

"$bench" mock-upstream --listen "127.0.0.1:$mock_port" 2>"$work/mock.log" &
pids+=($!)
wait_http "http://127.0.0.1:$mock_port/v1/models"

# The Redis row gets a Redis of its own, so its CPU and its command counts
# are this run's alone. (Not under callgrind: slowed down that much, the
# limits' and budgets' Redis timeouts fire and requests fail.)
redis_pid=""
sink_pid=""
if [ "$row" = sluice-gov-redis ]; then
    redis_cmd=(redis-server --port "$redis_port" --save "" --appendonly no)
    "${redis_cmd[@]}" >"$work/redis.log" 2>&1 &
    redis_pid=$!
    pids+=($redis_pid)
    for _ in $(seq 1 300); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.2; done
fi

governance=""
price=""
telemetry=""
case "$row" in
sluice) ;;
sluice-otel)
    "$bench" otlp-sink --listen "127.0.0.1:$sink_port" 2>"$work/sink.log" &
    sink_pid=$!
    pids+=($sink_pid)
    for _ in $(seq 1 100); do grep -q "listening" "$work/sink.log" 2>/dev/null && break; sleep 0.1; done
    telemetry="[telemetry]
endpoint = \"http://127.0.0.1:$sink_port\"
sampling_ratio = ${SAMPLING_RATIO:-1.0}" ;;
sluice-gov)
    governance="[limits]"
    price='price_input_per_1k = 0.01
price_output_per_1k = 0.02' ;;
sluice-gov-redis)
    redis_prefix="profile-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
    governance="[limits]
redis_url = \"redis://127.0.0.1:$redis_port\"
redis_prefix = \"$redis_prefix:limits\"

[budgets]
redis_url = \"redis://127.0.0.1:$redis_port\"
redis_prefix = \"$redis_prefix:budget\"

[auth]
redis_url = \"redis://127.0.0.1:$redis_port\""
    price='price_input_per_1k = 0.01
price_output_per_1k = 0.02' ;;
*) echo "unknown row $row" >&2; exit 2 ;;
esac

# The overhead benchmark's config (bench/run-gateway-overhead.sh).
cat >"$work/sluice.toml" <<TOML
encoders = []
[server]
listen = "127.0.0.1:$port"

[[auth.keys]]
tenant = "bench"
key_env = "SLUICE_BENCH_KEY"

[admin]
key_env = "SLUICE_BENCH_ADMIN_KEY"

[cache]
enabled = true
semantic = false

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
$price

[guard]
enabled = false

# Every row its own store (the plain row used to write to the default
# data dir's, which grew run after run).
[store]
path = "$work/store.db"

$governance
$telemetry
TOML

# PREGROW_SPEND=N: the spend table starts with N rows of random ids (as
# builds before time-ordered ids wrote them), as a server that has run for
# a while has: the store's work per row depends on the table's size.
if [ -n "${PREGROW_SPEND:-}" ]; then
    sqlite3 "$work/store.db" <gateway/src/store/migrations/0001_governance.sql
    sqlite3 "$work/store.db" "PRAGMA journal_mode = WAL;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $PREGROW_SPEND)
INSERT INTO spend SELECT 'spend-' || lower(hex(randomblob(12))), 1765000000000 + i / 8, 'pregrown',
  'bench', NULL, NULL, 'mock-model', 'mock', 12, 7, 0, 0.00026, 0.0058, 0, 0, 1, 'completed' FROM n;" >/dev/null
fi

export SLUICE_BENCH_KEY="$key" SLUICE_BENCH_ADMIN_KEY="admin-$key" SLUICE_KEY_PEPPER="pepper-$key" SLUICE_LOG=warn
client_key="$key"
if [ -n "$governance" ]; then
    client_key="$("$sluice" keys create --config "$work/sluice.toml" --tenant bench --rpm 100000000 \
        --tpm 100000000000 --max-parallel 100000 2>"$work/keys.log")" || { cat "$work/keys.log" >&2; exit 1; }
fi

case "$tool" in
callgrind)
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.$row.%p" \
        "$sluice" serve --config "$work/sluice.toml" 2>"$work/server.log" &
    tries=3000 ;;
perf | cpu)
    "$sluice" serve --config "$work/sluice.toml" 2>"$work/server.log" &
    tries=900 ;;
*) echo "unknown tool $tool" >&2; exit 2 ;;
esac
server=$!
pids+=($server)
wait_http "http://127.0.0.1:$port/ready" "$tries" || { tail -20 "$work/server.log" >&2; exit 1; }

if [ -n "$governance" ]; then
    prefix="${client_key#sk-sl-}"
    prefix="${prefix%%_*}"
    curl -fsS -X POST -H "Authorization: Bearer admin-$key" -H 'content-type: application/json' \
        -d "{\"scope\":\"key\",\"target\":\"$prefix\",\"amount\":1000000000,\"period\":\"calendar_month\"}" \
        "http://127.0.0.1:$port/admin/budgets" >/dev/null
fi

# CPU seconds (user + system) a process has used so far.
cpu_s() { # pid
    awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / tck }' "/proc/$1/stat"
}
# A few requests first (connections, the scripts loaded into Redis, the
# key's first lookup), with bodies the load never sends: the load
# generator numbers its requests from 0, so a warm-up run of it would
# repeat the measured run's bodies and turn them into cache hits.
# Under callgrind the code is instrumented from here on (translating it
# all takes seconds, past the Redis timeouts), counted from the zeroing
# after the warm-up.
[ "$tool" != callgrind ] || callgrind_control -i on "$server" >/dev/null
for i in $(seq 1 20); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $client_key" -H 'content-type: application/json' \
        -d "{\"model\":\"mock-model\",\"messages\":[{\"role\":\"user\",\"content\":\"warm-up $i\"}],\"max_tokens\":16}" \
        "http://127.0.0.1:$port/v1/chat/completions" || true
done
[ -z "$redis_pid" ] || redis-cli -p "$redis_port" config resetstat >/dev/null
served() {
    curl -fsS -H "Authorization: Bearer admin-$key" "http://127.0.0.1:$port/metrics" |
        awk '/^sluice_requests_total/ { n += $2 } END { printf "%d\n", n }'
}
before="$(served)"
cpu_before="$(cpu_s "$server")"
redis_before="$([ -n "$redis_pid" ] && cpu_s "$redis_pid" || echo 0)"
sink_before="$([ -n "$sink_pid" ] && cpu_s "$sink_pid" || echo 0)"
case "$tool" in
callgrind) callgrind_control -z "$server" >/dev/null ;;
perf)
    perf record -e cpu-clock -F 4999 -g -p "$server" -o "$out/perf.$row.data" 2>"$work/perf.log" &
    recorder=$! ;;
esac
"$bench" overhead --target "$row=http://127.0.0.1:$port/v1" --concurrency "$connections" \
    --duration-s "$seconds" --warmup-s 0 --api-key "$client_key" | tail -1 >&2
case "$tool" in
callgrind)
    callgrind_control -d "$server" >/dev/null
    callgrind_control -i off "$server" >/dev/null ;;
perf) kill -INT "$recorder"; wait "$recorder" || true ;;
esac
cpu_after="$(cpu_s "$server")"
redis_after="$([ -n "$redis_pid" ] && cpu_s "$redis_pid" || echo 0)"
sink_after="$([ -n "$sink_pid" ] && cpu_s "$sink_pid" || echo 0)"
after="$(served)"
requests=$((after - before))
per_request_us() { echo "$1 $2 $requests" | awk '{ printf "%.1f", ($2 - $1) * 1e6 / $3 }'; }
if [ -n "$redis_pid" ]; then
    # Script runs per request and Redis's own time in them.
    redis-cli -p "$redis_port" info commandstats | tr -d '\r' | awk -F'[:,=]' -v n="$requests" \
        '/^cmdstat_/ { printf "redis %s: %d calls, %.2f per request, %.1f us of Redis time per request\n", $1, $3, $3 / n, $5 / n }'
fi
if [ "$tool" != callgrind ]; then
    echo "$row: $requests requests, CPU per request: server $(per_request_us "$cpu_before" "$cpu_after") us," \
        "redis-server $(per_request_us "$redis_before" "$redis_after") us," \
        "otlp-sink $(per_request_us "$sink_before" "$sink_after") us (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
fi
case "$tool" in
callgrind)
    sleep 1
    file="$(ls -t "$out"/callgrind."$row".* | head -1)"
    total="$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n { gsub(",", "", $1); n = $1 } END { print n }')"
    echo "$row: $requests requests, $total instructions, $((total / requests)) per request ($file)"
    ;;
perf)
    echo "profile: $out/perf.$row.data" >&2
    perf report -i "$out/perf.$row.data" --no-children --sort comm,dso --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | head -8
    perf report -i "$out/perf.$row.data" --no-children --sort symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | head -40
    ;;
cpu) ;;
esac
