#!/usr/bin/env bash
# The test suite: set up, lint (ruff), type-check (mypy), then run every test (offline, a few
# minutes).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/mypy  # src/admmprune, configured in pyproject.toml
exec .venv/bin/python -m pytest "$@"
