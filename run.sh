#!/usr/bin/env bash
# The main job: set up, then prune LeNet-5 on MNIST with the default recipe (16 epochs of 938
# steps; how long that takes: README.md, "The two commands"). Extra arguments go to
# `admmprune prune`, e.g. ./run.sh --all-percent 99
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/admmprune prune recipes/lenet5.yaml "$@"
