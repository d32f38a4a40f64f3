#!/usr/bin/env bash
# Launch perfkit.train with torchrun: one node, or the same command on every node of a multi-node job.
set -euo pipefail

usage() {
    cat <<USAGE
usage: scripts/torchrun.sh NPROC_PER_NODE [TRAIN OVERRIDES...]

Starts NPROC_PER_NODE DDP processes on this node (one per GPU, or CPU processes) running
'python -m perfkit.train strategy=ddp devices=NPROC_PER_NODE num_nodes=NNODES OVERRIDES...'.
For several nodes, run the same command on each, changing only NODE_RANK:

  NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 PERFKIT_RUN_ID=exp1 scripts/torchrun.sh 8 model=resnet18
  NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 PERFKIT_RUN_ID=exp1 scripts/torchrun.sh 8 model=resnet18

Environment:
  NNODES          number of nodes (default 1)
  NODE_RANK       this node's index, 0..NNODES-1 (default 0)
  MASTER_ADDR     address of node 0, reachable from every node (default 127.0.0.1)
  MASTER_PORT     a free TCP port on node 0 (default 29500)
  PERFKIT_RUN_ID  names the shared run directory outputs/train/runs/PERFKIT_RUN_ID; required when
                  NNODES > 1 (every node must write to the same directory on a shared filesystem)
  PYTHON          the interpreter (default: .venv/bin/python if present, else python)
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") usage >&2; echo "error: NPROC_PER_NODE is required" >&2; exit 2 ;;
esac
nproc=$1
shift
case "$nproc" in
    '' | *[!0-9]* | 0) echo "error: NPROC_PER_NODE must be a positive integer, got '$nproc'" >&2; exit 2 ;;
esac
nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}
if [ "$nnodes" -gt 1 ] && [ -z "${PERFKIT_RUN_ID:-}" ]; then
    echo "error: PERFKIT_RUN_ID is required when NNODES > 1 (the same value on every node)" >&2
    exit 2
fi
# one node: name the run once here, so all local ranks share it
export PERFKIT_RUN_ID=${PERFKIT_RUN_ID:-$(date +%Y-%m-%d_%H-%M-%S)}

here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    python="$here/.venv/bin/python"
    [ -x "$python" ] || python=python
fi

exec "$python" -m torch.distributed.run \
    --nnodes "$nnodes" --node-rank "$node_rank" --nproc-per-node "$nproc" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
    -m perfkit.train strategy=ddp devices="$nproc" num_nodes="$nnodes" "$@"
