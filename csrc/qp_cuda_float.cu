// float instantiation of the native QP CUDA kernels (csrc/optlayers/qp_cuda_kernels.cuh); torch-free.
#include "optlayers/qp_cuda_kernels.cuh"

namespace optlayers {
OPTLAYERS_INSTANTIATE_CUDA(float)
}  // namespace optlayers
