#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU (the project's lent H100/H200): builds the
# native CUDA op, runs the CUDA tests, the GPU benchmark and the grasp benchmark on the GPU, and
# writes a few files under $OUT. Each step has its own time limit, so a hang cannot eat the rest.
#   OUT=/some/dir bash benchmarks/gpu_check.sh
# Works without installing the package (PYTHONPATH=repo root; no network, no pip). qpth, if
# carried (a copy of the package under .whl/qpth), is benchmarked on the same GPU; its import of
# cvxpy (unused by its PDIPM solver) is satisfied by an empty stub in the benchmark processes only.
# A first run that fits the lent machine's 600 s per command and leaves room for a second in the
# 900 s of device time (carry [".cuda_objects"], built here first: python -m optlayers.native
# cuda-objects .cuda_objects). On the H100 on 2026-11-28 (results/gpu_h100_2026-11-28.txt) the steps
# took: machine start ~35 s, build 110 s (before the CPU ops were split into four units), preflight
# 17 s, CUDA tests 46 s, bench 105 s (budget 90), grasp 21 s, profile 35 s:
#   OUT=$OUT GPU_CHECK_VARIANTS=0 GPU_CHECK_TORCH_KKT=0 GPU_CHECK_WARM=0 GPU_CHECK_TESTS_S=120 \
#     GPU_BENCH_BUDGET_S=90 GPU_BENCH_S=140 GPU_CHECK_GRASP_ONLY=optlayers-native,optlayers-value \
#     GPU_CHECK_GRASP_S=90 GPU_PROFILE_ARGS=realgrasp bash benchmarks/gpu_check.sh
# Extra commands: GPU_CHECK_EXTRA="cmd" runs last (before the bundle) in this environment, its
# output in $OUT/extra.txt. A follow-up on the warm machine must `source benchmarks/gpu_env.sh`
# first, or the JIT recompiles the CUDA sources with nvcc for minutes (2026-11-28: two follow-ups
# lost that way). The build itself, linking the objects, took 110 s on the lent H100 (16 cores).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
source "$ROOT/benchmarks/gpu_env.sh"
PY=${PYTHON:-python3}
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; nvcc --version | tail -2
} > "$OUT/gpu_info.txt" 2>&1
# (CUDA kernels compiled ahead of time, python -m optlayers.native cuda-objects .cuda_objects, nvcc
# only: gpu_env.sh points the build at them, which then links instead of compiling them here.)
stamp "build" | tee "$OUT/build.log"
timeout 240 $PY -c "
import time, optlayers as ol
from optlayers._src.native import build, ops
t = time.time(); ok, why = build.build(verbose=True); print('build', ok, why, f'{time.time() - t:.1f}s')
print('cuda kernels:', ops.cuda_available())
" >> "$OUT/build.log" 2>&1; echo "build rc=$?" >> "$OUT/build.log"
# The small kernel's two schedules (fused, staged) must agree bit for bit (a quick check first, so
# that a broken build shows at once; the CUDA tests check it too).
if [ "${GPU_CHECK_PREFLIGHT:-1}" != 0 ]; then
  stamp "preflight" | tee -a "$OUT/build.log"
  timeout 90 $PY benchmarks/gpu_small_variants.py --preflight > "$OUT/preflight.txt" 2>&1 \
    || echo "preflight FAILED: the small kernel's schedules disagree" | tee -a "$OUT/preflight.txt" "$OUT/build.log"
fi
# The small kernel's compiled variants and where its time goes (profile, sorted batch, polish off).
if [ "${GPU_CHECK_VARIANTS:-1}" != 0 ]; then
  stamp "small-kernel variants" | tee -a "$OUT/build.log"
  timeout ${GPU_CHECK_VARIANTS_S:-200} $PY benchmarks/gpu_small_variants.py --reps 5 --json "$OUT/gpu_small_variants.json" \
    > "$OUT/gpu_small_variants.txt" 2>&1
  echo "variants rc=$?" >> "$OUT/gpu_small_variants.txt"
fi
if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
  stamp "tests" | tee -a "$OUT/build.log"
  timeout ${GPU_CHECK_TESTS_S:-150} $PY -m pytest -q -p no:cacheprovider --timeout 90 --durations=5 tests/native/test_native_cuda.py > "$OUT/tests_cuda.txt" 2>&1
  echo "tests rc=$?" >> "$OUT/tests_cuda.txt"
fi
mkdir -p /tmp/stub && : > /tmp/stub/cvxpy.py
BENCH_PATH=$ROOT:$ROOT/.whl:/tmp/stub
if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
  stamp "bench" | tee -a "$OUT/build.log"
  PYTHONPATH=$BENCH_PATH timeout ${GPU_BENCH_S:-170} $PY benchmarks/gpu_bench.py --budget-s ${GPU_BENCH_BUDGET_S:-120} \
    ${GPU_BENCH_ARGS:-} --json "$OUT/gpu_bench.json" > "$OUT/gpu_bench.txt" 2>&1
  echo "bench rc=$?" >> "$OUT/gpu_bench.txt"
fi
# The grasp benchmark's real contact-force QPs, once per CUDA kernel named (default: the small kernel).
[ "${GPU_CHECK_GRASP:-1}" != 0 ] && for k in ${GPU_CHECK_GRASP_KERNELS:-small}; do
  stamp "grasp ($k kernel)" | tee -a "$OUT/build.log"
  OPTLAYERS_CUDA_KERNEL=$k PYTHONPATH=$BENCH_PATH timeout ${GPU_CHECK_GRASP_S:-100} $PY benchmarks/grasp_qp.py --device cuda \
    --contacts 4 --batches 4800,48000 --only ${GPU_CHECK_GRASP_ONLY:-optlayers-native,optlayers-value,qpth} --max-cell-s 10 \
    --target-s 0.5 --json "$OUT/grasp_gpu_$k.json" > "$OUT/grasp_gpu_$k.txt" 2>&1
  echo "grasp rc=$?" >> "$OUT/grasp_gpu_$k.txt"
done
# The torch backend's KKT factorizations (LU vs reduced Cholesky), same run, incl. B = 10,000, n = 100.
if [ "${GPU_CHECK_TORCH_KKT:-1}" != 0 ]; then
  stamp "torch_kkt" | tee -a "$OUT/build.log"
  timeout ${GPU_CHECK_TORCH_KKT_S:-120} $PY benchmarks/torch_kkt.py --device cuda --reps 3 > "$OUT/torch_kkt_gpu.txt" 2>&1
  echo "torch_kkt rc=$?" >> "$OUT/torch_kkt_gpu.txt"
fi
# Warm start vs cold solve (torch and native backends), same run.
if [ "${GPU_CHECK_WARM:-1}" != 0 ]; then
  stamp "warm_start" | tee -a "$OUT/build.log"
  timeout ${GPU_CHECK_WARM_S:-120} $PY benchmarks/warm_start.py --device cuda --reps 3 --steps 10 > "$OUT/warm_start_gpu.txt" 2>&1
  echo "warm_start rc=$?" >> "$OUT/warm_start_gpu.txt"
fi
if [ "${GPU_CHECK_PROFILE:-1}" != 0 ]; then
  stamp "profile" | tee -a "$OUT/build.log"
  timeout ${GPU_CHECK_PROFILE_S:-90} $PY benchmarks/gpu_profile.py ${GPU_PROFILE_ARGS:-} > "$OUT/gpu_profile.txt" 2>&1
  echo "profile rc=$?" >> "$OUT/gpu_profile.txt"
fi
# Nsight Compute on the first launch of the small kernel (real grasp QPs, B = 48,000), where ncu exists and
# may read the counters: occupancy, registers, warp stall reasons.
if [ "${GPU_CHECK_NCU:-0}" != 0 ]; then
  stamp "ncu" | tee -a "$OUT/build.log"
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
  if [ -n "$NCU" ]; then
    OPTLAYERS_CUDA_KERNEL=small-bare timeout ${GPU_CHECK_NCU_S:-90} "$NCU" --target-processes all -k regex:"qp_small_(fused|ipm|polish)_kernel" -c 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis \
      $PY benchmarks/gpu_small_variants.py --cases grasp48k --reps 1 --ncu > "$OUT/ncu_small.txt" 2>&1
    echo "ncu rc=$?" >> "$OUT/ncu_small.txt"
  else
    echo "ncu not found" > "$OUT/ncu_small.txt"
  fi
fi
# The sharded grasp dataset on NCCL (examples/grasp_dataset.py --device cuda; never run on a GPU
# before): one rank on the one lent GPU, 800 grasps, 10 steps.
if [ "${GPU_CHECK_DATASET:-1}" != 0 ]; then
  stamp "grasp_dataset (NCCL, 1 rank)" | tee -a "$OUT/build.log"
  timeout ${GPU_CHECK_DATASET_S:-90} $PY -m torch.distributed.run --nproc_per_node 1 examples/grasp_dataset.py \
    --device cuda --grasps 800 --steps 10 --out /tmp/grasps_gpu.pt > "$OUT/grasp_dataset_gpu.txt" 2>&1
  echo "grasp_dataset rc=$?" >> "$OUT/grasp_dataset_gpu.txt"
fi
if [ -n "${GPU_CHECK_EXTRA:-}" ]; then
  stamp "extra: $GPU_CHECK_EXTRA" | tee -a "$OUT/build.log"
  timeout ${GPU_CHECK_EXTRA_S:-120} bash -c "$GPU_CHECK_EXTRA" > "$OUT/extra.txt" 2>&1
  echo "extra rc=$?" >> "$OUT/extra.txt"
fi
stamp "done" | tee -a "$OUT/build.log"
tail -n 4 "$OUT/tests_cuda.txt" 2>/dev/null; cat "$OUT/gpu_small_variants.txt" 2>/dev/null
tail -n 12 "$OUT/gpu_bench.txt" 2>/dev/null; tail -n 8 "$OUT"/grasp_gpu_*.txt 2>/dev/null
tail -n 10 "$OUT/torch_kkt_gpu.txt" 2>/dev/null
tail -n 14 "$OUT/warm_start_gpu.txt" 2>/dev/null
tail -n 3 "$OUT/grasp_dataset_gpu.txt" 2>/dev/null
# The lent machine hands back at most 8 files (this script writes ~14): one archive holds them all
# (tar xzf gpu_check_outputs.tgz); GPU_CHECK_BUNDLE=0 leaves them loose.
if [ "${GPU_CHECK_BUNDLE:-1}" != 0 ]; then
  (cd "$OUT" && find . -maxdepth 1 -type f ! -name gpu_check_outputs.tgz ! -name .bundle_list -printf '%P\n' > .bundle_list \
    && tar czf gpu_check_outputs.tgz -T .bundle_list && xargs rm -f < .bundle_list && rm -f .bundle_list)
fi
