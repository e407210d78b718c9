# Environment for any command on a lent GPU machine (sourced by gpu_check.sh; for a follow-up on a
# warm machine: `source benchmarks/gpu_env.sh && python3 ...`). Without OPTLAYERS_CUDA_OBJECTS the
# JIT build recompiles the CUDA sources with nvcc for minutes instead of linking the objects
# compiled here (python -m optlayers.native cuda-objects .cuda_objects; carry ".cuda_objects");
# without the same OPTLAYERS_CACHE it builds the extension again (110 s on the H100, 2026-11-28).
_gpu_env_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export OPTLAYERS_CACHE=${OPTLAYERS_CACHE:-/tmp/optlayers_cache} PYTHONPATH=$_gpu_env_root PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-8}
if [ -f "$_gpu_env_root/.cuda_objects/sources.sha1" ]; then export OPTLAYERS_CUDA_OBJECTS=$_gpu_env_root/.cuda_objects; fi
