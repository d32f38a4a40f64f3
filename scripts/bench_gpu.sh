#!/usr/bin/env bash
# Run the benchmark suite on a GPU machine and keep its report under benchmarks/results/.
set -euo pipefail

usage() {
    cat <<USAGE
usage: scripts/bench_gpu.sh PRESET [OVERRIDE ...]

Runs 'python -m perfkit.bench bench=PRESET device=cuda OVERRIDE ...' (PRESET: quick or full) and
copies report.json (which names the GPU), report.md and the plots to
benchmarks/results/bench-PRESET-cuda/ (a new dated directory if that one exists: never overwritten).
Example: scripts/bench_gpu.sh full bench.models=[resnet18,vit]
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") usage >&2; echo "error: PRESET is required (quick or full)" >&2; exit 2 ;;
esac
preset=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$here/configs/bench/$preset.yaml" ]; then
    echo "error: unknown PRESET '$preset'; allowed: quick, full" >&2
    exit 2
fi
python="$here/.venv/bin/python"
[ -x "$python" ] || python=$(command -v python3) || { echo "error: no python: run 'make install'" >&2; exit 2; }
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device on this machine; on a CPU run: python -m perfkit.bench bench=$preset device=cpu" >&2
    exit 2
fi
stamp=$(date +%Y-%m-%d_%H-%M-%S)
run_dir="$here/outputs/bench/runs/gpu-$preset-$stamp"
"$python" -m perfkit.bench "bench=$preset" device=cuda "hydra.run.dir=$run_dir" "$@"
results="$here/benchmarks/results/bench-$preset-cuda"
[ -e "$results" ] && results="$results-$stamp"
mkdir -p "$results"
cp "$run_dir"/report.json "$run_dir"/report.md "$run_dir"/*.png "$results"/
echo "report copied to $results"
