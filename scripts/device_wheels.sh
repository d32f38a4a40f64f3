#!/usr/bin/env bash
# Download the wheels a lent GPU machine lacks into DIR, to carry there for scripts/bench_gpu.sh.
set -euo pipefail

# perfkit's requirements (pyproject.toml), split by where a lent GPU machine gets them; a test keeps
# the three lists equal to pyproject's dependencies
on_the_image=(torch torchvision lightning tensorboard torchmetrics scikit-learn numpy scipy matplotlib tqdm)
carried=(hydra-core==1.3.2 omegaconf==2.3.0 mlxtend==0.25.0 typeguard torch-pruning==1.6.1 torch-tb-profiler==0.4.3)
left_behind=(wandb onnx onnxscript onnxruntime torchao) # only logger=wandb, export=onnx* and int8 on the CPU need them

usage() {
    cat <<USAGE
usage: scripts/device_wheels.sh DIR

Downloads into DIR (normally .whl, which git ignores) the wheels a lent GPU machine lacks. Its image
has ${on_the_image[*]} (and pytest);
these are carried: ${carried[*]},
and antlr4-python3-runtime==4.9.3, which Hydra needs and which ships no wheel, so one is built.
Left behind: ${left_behind[*]}. Carry DIR to the GPU machine and run scripts/bench_gpu.sh there: it
installs the wheels into /tmp/site first, then names any requirement still unmet.
Example: scripts/device_wheels.sh .whl
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") usage >&2; echo "error: DIR is required (where the wheels go, e.g. .whl)" >&2; exit 2 ;;
esac
out=$1
here=$(cd "$(dirname "$0")/.." && pwd)
python="$here/.venv/bin/python"
[ -x "$python" ] || python=$(command -v python3)
mkdir -p "$out"
# the device's Python is 3.12 on x86-64 manylinux; these are pure-Python wheels
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d "$out" \
    "${carried[@]}"
"$python" -m pip wheel -q --no-deps -w "$out" antlr4-python3-runtime==4.9.3
ls -1 "$out"
