#!/usr/bin/env bash
# Prints the path of a Prometheus server binary (Debian's `prometheus`
# package), fetching the .deb once into ~/.cache/sluice/prometheus and
# unpacking it there with `dpkg -x` (no root, nothing installed system-wide).
# `promtool` sits next to it. Used by tests/tests/metrics_prometheus.rs.
#
#   scripts/prometheus.sh            # prints .../usr/bin/prometheus
#   PROMETHEUS_BIN=/path scripts/prometheus.sh   # an existing binary wins
set -euo pipefail

if [[ -n "${PROMETHEUS_BIN:-}" && -x "${PROMETHEUS_BIN}" ]]; then
    echo "${PROMETHEUS_BIN}"
    exit 0
fi

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}/prometheus"
root="$cache/root"
bin="$root/usr/bin/prometheus"
if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
# One fetch at a time: tests may run this concurrently.
exec 9>"$cache/lock"
flock 9
if [[ ! -x "$bin" ]]; then
    cd "$cache"
    rm -f prometheus_*.deb
    if ! apt-get download prometheus >&2; then
        echo "[prometheus] download from the cached package lists failed; running apt-get update" >&2
        if [[ $(id -u) -eq 0 ]]; then
            apt-get update >&2
        else
            sudo -n apt-get update >&2
        fi
        apt-get download prometheus >&2
    fi
    rm -rf "$root.tmp"
    dpkg -x prometheus_*.deb "$root.tmp" >&2
    rm -rf "$root"
    mv "$root.tmp" "$root"
fi
[[ -x "$bin" ]] || { echo "[prometheus] no binary at $bin after unpacking" >&2; exit 1; }
echo "$bin"
