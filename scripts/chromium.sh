#!/usr/bin/env bash
# Headless Chromium and its WebDriver (chromedriver) for the console's browser
# tests: the Debian packages `chromium` and `chromium-driver`, installed once
# with apt; the downloaded .debs are kept under ~/.cache/sluice/apt so a second
# machine of the same kind (or CI after a clean) installs them without a
# download. Prints two lines: the chromium binary's path, then chromedriver's.
#
#   scripts/chromium.sh
set -euo pipefail

find_bins() {
    browser="$(command -v chromium || true)"
    driver="$(command -v chromedriver || true)"
    [ -n "$browser" ] && [ -n "$driver" ]
}

if ! find_bins; then
    cache="${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}/apt"
    mkdir -p "$cache/partial"
    echo "[chromium] installing chromium + chromium-driver (once; .debs cached in $cache)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt (a parallel test, an engineer) instead of failing on its lock.
    apt_opts=(-o "Dir::Cache::archives=$cache" -o DPkg::Lock::Timeout=600)
    if ! apt-get "${apt_opts[@]}" install -y --no-install-recommends chromium chromium-driver >&2; then
        echo "[chromium] install from the cached package lists failed; running apt-get update" >&2
        apt-get -o DPkg::Lock::Timeout=600 update >&2
        apt-get "${apt_opts[@]}" install -y --no-install-recommends chromium chromium-driver >&2
    fi
    if ! find_bins; then
        echo "[chromium] chromium or chromedriver is still missing after the install" >&2
        exit 1
    fi
fi
echo "$browser"
echo "$driver"
