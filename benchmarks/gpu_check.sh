#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU (the project's lent H100/H200):
# builds the native CUDA op, runs the GPU tests and the GPU benchmark, writes everything to $OUT.
#   OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/out}
mkdir -p "$OUT"
export OPTLAYERS_CACHE="$OUT/cache"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/gpu_info.txt" 2>&1
pip install --quiet --no-deps -e . > "$OUT/install.log" 2>&1
python -m optlayers.native build > "$OUT/build.log" 2>&1; echo "build rc=$?" >> "$OUT/build.log"
python -m pytest -q tests/native > "$OUT/tests_native.txt" 2>&1; echo "tests rc=$?" >> "$OUT/tests_native.txt"
python benchmarks/gpu_bench.py --json "$OUT/gpu_bench.json" > "$OUT/gpu_bench.txt" 2>&1; echo "bench rc=$?" >> "$OUT/gpu_bench.txt"
tail -n 5 "$OUT"/*.txt "$OUT/build.log"
