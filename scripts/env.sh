# Sourced by run.sh and test.sh: where this checkout finds MNIST. On the project's machines
# the data lies in ../shared/data/mnist next to the clone; elsewhere set ADMMPRUNE_DATA_DIR
# (or pass --data-dir), or let admmprune download it into ~/.cache/admmprune.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${ADMMPRUNE_DATA_DIR:-}" ] && [ -d "$here/../shared/data/mnist" ]; then
    export ADMMPRUNE_DATA_DIR="$here/../shared/data/mnist"
fi
