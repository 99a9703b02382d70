# Sourced by run.sh and test.sh: where this checkout finds its data. On the project's machines
# the data sets lie in ../shared/data (mnist/, fashion-mnist/) next to the clone; elsewhere set
# ADMMPRUNE_DATA_DIR (or pass --data-dir), or let admmprune download into ~/.cache/admmprune.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${ADMMPRUNE_DATA_DIR:-}" ] && [ -d "$here/../shared/data/mnist" ]; then
    export ADMMPRUNE_DATA_DIR="$here/../shared/data"
fi
