#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need first:
# the wasm32 target (guests are built for it) and curl (an end-to-end client).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "tests/run.sh: installing the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

if ! command -v curl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "tests/run.sh: installing curl"
        apt-get update -qq && apt-get install -y -qq curl >/dev/null
    else
        echo "tests/run.sh: curl is missing and cannot be installed here (not root or no apt-get);"
        echo "              the curl tests will report that they were skipped"
    fi
fi

if ! python3 -c "import websockets" >/dev/null 2>&1; then
    echo "tests/run.sh: installing the Python websockets client"
    python3 -m pip install -q websockets || echo "tests/run.sh: pip could not install websockets; the Python WebSocket tests will say they were skipped"
fi

# The Autobahn TestSuite (Python 2) is installed by tests/autobahn/setup.sh,
# which the Autobahn test runs itself (the first time takes about a minute).

# The end-to-end tests run the simulator's default network first: the
# device's own smoltcp stack behind the user-mode gateway...
cargo test --workspace "$@"
# The example guests' own unit tests (their workspace, built for the host;
# guests without host tests compile to nothing there).
echo "tests/run.sh: the example guests' unit tests"
cargo test --manifest-path guests/Cargo.toml --workspace --quiet
# ...then the same tests over the host's sockets (the OS driver).
echo "tests/run.sh: the end-to-end tests again with WASMGATE_NET=host (the OS-socket driver)"
WASMGATE_NET=host cargo test -p wasmgate-sim --tests "$@"
# The runtime built without TLS (`tls` feature off): every connection plain.
cargo test -p wasmgate --no-default-features "$@"
