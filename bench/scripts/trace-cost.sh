#!/usr/bin/env bash
# What traces cost the gateway, by process: the `sluice` row of
# run-gateway-overhead.sh with and without [telemetry] (spans exported over
# OTLP/gRPC to `sluice-bench otlp-sink` on this machine), 16 connections,
# 10 s each, and the CPU time the server, the sink and the mock used
# meanwhile (clock ticks of /proc/PID/stat, 10 ms each). Requests/s over
# CPU time gives each process's CPU per request.
#
#   B=DIR bench/scripts/trace-cost.sh        # DIR holds sluice and sluice-bench (release)
#   RATIO=0.1 ...                            # the traces' sampling ratio (default 1.0)
#   PERF=1 ...                               # also `perf record -g` each server (perf-ROW.data)
# Output: one line per row; the files under $W (default a temp dir, kept).
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${B:-${CARGO_TARGET_DIR:-target}/release}
W=${W:-$(mktemp -d)}
mkdir -p "$W"
echo "files in $W" >&2
key="sk-bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
cfg() { cat <<TOML
encoders = []
[server]
listen = "127.0.0.1:$1"
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
base_url = "http://127.0.0.1:18101/v1"
[providers.resilience]
max_attempts = 1
[[routes]]
model = "mock-model"
[[routes.deployments]]
name = "mock"
provider = "mock"
upstream_model = "mock-model"
[guard]
enabled = false
$2
TOML
}
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
$B/sluice-bench mock-upstream --listen 127.0.0.1:18101 2>$W/mock.log & MOCK=$!
$B/sluice-bench otlp-sink --listen 127.0.0.1:18107 2>$W/sink.log & SINK=$!
sleep 1
cfg 18102 "" > $W/plain.toml
cfg 18108 "[telemetry]
endpoint = \"http://127.0.0.1:18107\"
sampling_ratio = ${RATIO:-1.0}" > $W/otel.toml
for row in plain otel; do
  port=$([ $row = plain ] && echo 18102 || echo 18108)
  SLUICE_BENCH_KEY="$key" SLUICE_BENCH_ADMIN_KEY="admin-$key" SLUICE_LOG=warn $B/sluice serve --config $W/$row.toml 2>$W/$row.log & S=$!
  for _ in $(seq 1 100); do curl -fsS -o /dev/null http://127.0.0.1:$port/ready 2>/dev/null && break; sleep 0.2; done
  c0s=$(cpu $S); c0k=$(cpu $SINK); c0m=$(cpu $MOCK)
  if [ -n "${PERF:-}" ]; then perf record -F 999 -g -o $W/perf-$row.data -p $S -- sleep 9 >/dev/null 2>&1 & PP=$!; fi
  $B/sluice-bench overhead --target "$row=http://127.0.0.1:$port/v1" --concurrency 16 --duration-s 10 --api-key "$key" --json $W/$row.json > $W/$row.md 2>&1
  [ -n "${PP:-}" ] && wait $PP; PP=
  c1s=$(cpu $S); c1k=$(cpu $SINK); c1m=$(cpu $MOCK)
  echo "$row: $(grep "| $row" $W/$row.md) cpu ticks (10ms) sluice $((c1s-c0s)) sink $((c1k-c0k)) mock $((c1m-c0m))"
  kill $S; wait $S 2>/dev/null
done
kill $MOCK $SINK
