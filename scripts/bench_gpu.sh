#!/usr/bin/env bash
# Run the benchmark suite on a GPU machine and keep its report under benchmarks/results/.
set -euo pipefail

usage() {
    cat <<USAGE
usage: scripts/bench_gpu.sh PRESET [OVERRIDE ...]

verify OUT [--dry-run] [--budget-s S]: the one GPU check, run first whenever a GPU is lent: the gpu
  tests, training parity (default job, digits MLP, mnist_resnet18, CUDA graphs), bench=gpu trimmed,
  perfkit.profile on the GPU and start-up time, each time-boxed within 9 minutes; at most 8 files in
  OUT (no folders), and the figures the docs' GPU claims rest on printed at the end. --dry-run runs
  the same steps on the CPU at toy sizes (a fast test does). python -m benchmarks.verify --help.
quick, full, gpu, serve: runs 'python -m perfkit.bench bench=PRESET device=cuda OVERRIDE ...' and copies
  report.json (which names the GPU), report.md and the plots (serve: the serve-MODEL-cuda/ folders) to
  benchmarks/results/bench-PRESET-cuda/ (a new dated directory if that one exists: never overwritten).
  serve on the device image (no ONNX Runtime there): scripts/bench_gpu.sh serve 'bench.models=[cnn,resnet18]'
  'bench.exports=[aoti]' (eager, compile, pruned and AOTInductor candidates on CUDA, ~5 minutes).
parity: runs 'python -m benchmarks.parity --device cuda ARG ...' (perfkit.train against hand-written
  loops), writing benchmarks/results/train_parity-cuda.{json,md,png}.
startup: runs 'python -m benchmarks.startup ARG ...' (the default job's time to first step and wall
  time, in phases), writing benchmarks/results/startup-cuda.{json,md,png}.
tests: runs the gpu-marked tests ('pytest -m gpu ARG ...') and keeps their output, headed by the GPU
  and versions, in benchmarks/results/gpu_tests-GPU.txt (a dated name if that file exists).
On a machine whose Python lacks perfkit's dependencies, wheels in .whl/ (scripts/device_wheels.sh .whl
makes them) are installed first, into /tmp/site.
gpu is the GPU-sized preset: ResNet-50 and ViT-B/16 at 224x224, batch 256, with MFU and a
  hand-written PyTorch anchor row. Not yet timed whole on one H100; ResNet-50 training with 7
  variants and 6 rounds took about 3 minutes. Cut it with bench.variants, bench.modes or bench.models.
Examples: scripts/bench_gpu.sh gpu
          scripts/bench_gpu.sh full bench.models=[resnet18,vit]
          scripts/bench_gpu.sh parity --jobs default --rounds 10
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") usage >&2; echo "error: PRESET is required (verify, quick, full, gpu, serve, parity, startup or tests)" >&2; exit 2 ;;
esac
preset=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)
case "$preset" in verify | parity | startup | tests) own_command=1 ;; *) own_command=0 ;; esac
if [ $own_command = 0 ] && [ ! -f "$here/configs/bench/$preset.yaml" ]; then
    echo "error: unknown PRESET '$preset'; allowed: verify, quick, full, gpu, serve, parity, startup, tests" >&2
    exit 2
fi
python="$here/.venv/bin/python"
[ -x "$python" ] || python=$(command -v python3) || { echo "error: no python: run 'make install'" >&2; exit 2; }
if ! "$python" -c "import hydra, perfkit" 2>/dev/null && compgen -G "$here/.whl/*.whl" >/dev/null; then
    # a lent GPU machine: its image has torch and Lightning, and the wheels carry the rest
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$here"/.whl/*.whl
    export PYTHONPATH="$here:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# name any requirement still missing here before a long run, not as an ImportError half-way through it
if ! unmet=$("$python" "$here/scripts/check_requirements.py"); then
    echo "warning: perfkit's requirements not met on this machine (what needs them will fail):" >&2
    echo "$unmet" | sed 's/^/  /' >&2
    echo "  carry wheels for them: scripts/device_wheels.sh .whl" >&2
fi
dry_run=0
for argument in "$@"; do [ "$argument" = --dry-run ] && dry_run=1; done
if [ "$preset" = verify ] && [ $dry_run = 1 ]; then
    cd "$here" && exec "$python" -m benchmarks.verify "$@"
fi
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if [ $own_command = 1 ]; then
        echo "error: no CUDA device on this machine; '$preset' is the GPU half (its CPU half runs without this script)" >&2
    else
        echo "error: no CUDA device on this machine; on a CPU run: python -m perfkit.bench bench=$preset device=cpu" >&2
    fi
    exit 2
fi
if [ "$preset" = verify ]; then
    cd "$here" && exec "$python" -m benchmarks.verify "$@"
fi
if [ "$preset" = parity ]; then
    cd "$here" && exec "$python" -m benchmarks.parity --device cuda "$@"
fi
if [ "$preset" = startup ]; then
    cd "$here" && exec "$python" -m benchmarks.startup "$@"
fi
stamp=$(date +%Y-%m-%d_%H-%M-%S)
if [ "$preset" = tests ]; then
    # e.g. "NVIDIA H100 80GB HBM3" -> h100
    gpu=$("$python" -c "import torch; print(torch.cuda.get_device_name().lower().removeprefix('nvidia ').split()[0])")
    out="$here/benchmarks/results/gpu_tests-$gpu.txt"
    [ -e "$out" ] && out="$here/benchmarks/results/gpu_tests-$gpu-$stamp.txt"
    header=$("$python" -c "import platform, torch, lightning; print(f'# pytest -m gpu on {torch.cuda.get_device_name()}: torch {torch.__version__}, lightning {lightning.__version__}, Python {platform.python_version()}')")
    cd "$here"
    status=0
    { echo "$header, $(date +%F)"; "$python" -m pytest -m gpu -o addopts= -p no:cacheprovider --strict-markers tests "$@"; } 2>&1 | tee "$out" || status=$?
    echo "output kept in $out"
    exit $status
fi
run_dir="$here/outputs/bench/runs/gpu-$preset-$stamp"
"$python" -m perfkit.bench "bench=$preset" device=cuda "hydra.run.dir=$run_dir" "$@"
results="$here/benchmarks/results/bench-$preset-cuda"
[ -e "$results" ] && results="$results-$stamp"
mkdir -p "$results"
cp "$run_dir"/report.json "$run_dir"/report.md "$results"/
# plots exist only where rows were timed; bench=serve writes serve-MODEL-cuda/ folders instead
for extra in "$run_dir"/*.png "$run_dir"/serve-*; do
    [ -e "$extra" ] && cp -r "$extra" "$results"/
done
echo "report copied to $results"
