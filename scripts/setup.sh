#!/usr/bin/env bash
# Creates .venv and installs admmprune with its test tools. Development and CI use the CPU
# wheel of torch (constraints-cpu.txt); a bare torch requirement would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.admmprune-installed
want=$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints-cpu.txt -e ".[test]"
    echo "$want" > "$stamp"
fi
