#!/usr/bin/env bash
# Installs the Autobahn WebSocket TestSuite 0.8.2 (`wstest`) into a Python 2.7
# virtualenv for tests/ws_autobahn.rs, and prints the virtualenv's path.
#
#   usage: tests/autobahn/setup.sh [DIR]
#   DIR defaults to $AUTOBAHN_VENV, else ~/.cache/wasmgate-autobahn
#
# Autobahn is Python 2 only: it needs a python2.7 (pyenv's 2.7.18 is looked for
# first, then python2.7 on PATH) and PyPI. Idempotent: an existing install is
# reused, and only the wrapper wstest_local.py (which keeps wstest's listeners
# on 127.0.0.1; plain wstest binds 0.0.0.0) is copied again. Progress and errors
# go to stderr; stdout is only the path.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
venv=${1:-${AUTOBAHN_VENV:-$HOME/.cache/wasmgate-autobahn}}

if [ ! -x "$venv/bin/wstest" ]; then
    py2=""
    for candidate in "$HOME/.pyenv/versions/2.7.18/bin/python2.7" "$(command -v python2.7 || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
            py2=$candidate
            break
        fi
    done
    if [ -z "$py2" ]; then
        echo "setup.sh: no Python 2.7 found (pyenv 2.7.18 or python2.7 on PATH); Autobahn needs it" >&2
        exit 2
    fi
    if [ -e "$venv" ]; then
        # A half-made virtualenv from an interrupted run: start over, but never
        # delete a directory that is not one.
        if [ -f "$venv/bin/activate" ] || [ -f "$venv/pyvenv.cfg" ]; then
            echo "setup.sh: removing the unfinished virtualenv $venv" >&2
            rm -rf "$venv"
        else
            echo "setup.sh: $venv exists and is not an Autobahn virtualenv; choose another DIR" >&2
            exit 2
        fi
    fi
    echo "setup.sh: installing Autobahn TestSuite 0.8.2 into $venv (about a minute)" >&2
    tools=$(mktemp -d)
    trap 'rm -rf "$tools"' EXIT
    # The last virtualenv that still creates Python 2 environments, kept out of
    # the interpreter's own site-packages.
    "$py2" -m pip install --disable-pip-version-check -q --target "$tools" "virtualenv<20.22" >&2
    mkdir -p "$(dirname "$venv")"
    PYTHONPATH=$tools "$py2" -m virtualenv -q -p "$py2" "$venv" >&2
    "$venv/bin/pip" install --disable-pip-version-check -q "autobahntestsuite==0.8.2" >&2
    if [ ! -x "$venv/bin/wstest" ]; then
        echo "setup.sh: autobahntestsuite installed no wstest in $venv/bin" >&2
        exit 1
    fi
fi

cp "$here/wstest_local.py" "$venv/bin/wstest_local.py"
if ! "$venv/bin/python" -c 'import autobahntestsuite.wstest' 2>/dev/null; then
    echo "setup.sh: $venv has wstest but cannot import autobahntestsuite; remove it and run again" >&2
    exit 1
fi
echo "$venv"
