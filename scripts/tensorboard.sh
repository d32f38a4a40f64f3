#!/usr/bin/env bash
# Open TensorBoard on one run directory, or on all runs below a directory.
set -euo pipefail

usage() {
    cat <<USAGE
usage: scripts/tensorboard.sh RUN_DIR [PORT]

Serves TensorBoard for RUN_DIR (a perfkit run directory such as outputs/train/runs/<date>_<time>,
or a parent directory holding several runs) on 127.0.0.1:PORT (default 6006).
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") usage >&2; echo "error: RUN_DIR is required" >&2; exit 2 ;;
esac
run_dir=$1
port=${2:-6006}
if [ ! -d "$run_dir" ]; then
    echo "error: RUN_DIR '$run_dir' is not a directory" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
tensorboard="$here/.venv/bin/tensorboard"
[ -x "$tensorboard" ] || tensorboard=$(command -v tensorboard) || { echo "error: tensorboard not found: run 'make install'" >&2; exit 2; }
exec "$tensorboard" --logdir "$run_dir" --host 127.0.0.1 --port "$port"
