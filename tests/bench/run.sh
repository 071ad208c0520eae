#!/usr/bin/env bash
# The side-by-side benchmark (docs/benchmarks.md): libwebsockets and wasmgate
# on this machine, in one run, as ratios.
#
#   tests/bench/run.sh            # 3 rounds of 5 s per load and server (~8 min)
#   tests/bench/run.sh --quick    # 1 round of 2 s, shorter micro-benchmarks (~3 min)
#   tests/bench/run.sh --rounds 5 --seconds 10 --loads http,ws64p
#
# Installs what it needs (libwebsockets-dev, wrk, a C compiler, the font the
# chart is drawn with), builds the lws baseline from tests/bench/lws-baseline.c
# and the release binaries, runs the micro-benchmarks (guest vs native, memory
# per connection), then `wasmgate-bench run`: the servers pinned to core 0,
# the load generators to core 1. Results: target/bench/side_by_side.{json,png}.
set -euo pipefail
cd "$(dirname "$0")/../.."

quick=false
args=()
for a in "$@"; do
    case "$a" in
        --quick) quick=true ;;
        *) args+=("$a") ;;
    esac
done

cores=$(nproc)
if [ "$cores" -lt 2 ]; then
    echo "tests/bench/run.sh: needs 2 cores (server on core 0, load on core 1); this machine has $cores" >&2
    exit 1
fi

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
pkg-config --exists libwebsockets 2>/dev/null || missing+=(libwebsockets-dev)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "tests/bench/run.sh: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "tests/bench/run.sh: missing ${missing[*]} and cannot install them here (not root or no apt-get)" >&2
        exit 1
    fi
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "tests/bench/run.sh: installing the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

out=target/bench
mkdir -p "$out"
echo "tests/bench/run.sh: building the libwebsockets baseline ($(pkg-config --modversion libwebsockets))"
cc -O2 -Wall -Wextra -o "$out/lws-baseline" tests/bench/lws-baseline.c \
    $(pkg-config --cflags --libs libwebsockets)
echo "tests/bench/run.sh: building wasmgate (release)"
cargo build --release --quiet -p wasmgate-sim -p wasmgate-bench

echo "tests/bench/run.sh: micro-benchmarks (no sockets)"
if $quick; then
    cargo bench --quiet -p wasmgate --bench guest_vs_native -- --quick
    args=(--rounds 1 --seconds 2 "${args[@]}")
else
    cargo bench --quiet -p wasmgate --bench guest_vs_native
fi
cargo bench --quiet -p wasmgate --bench conn_memory

echo "tests/bench/run.sh: side by side over sockets"
target/release/wasmgate-bench run \
    --lws "$out/lws-baseline" --wasmgate target/release/wasmgate --out "$out" "${args[@]}"
