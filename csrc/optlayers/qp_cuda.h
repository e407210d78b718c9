// Torch-free interface between the CUDA kernels (optlayers/qp_cuda_kernels.cuh) and the torch binding
// (qp_cuda_binding.cpp). Only plain pointers, strides and a launch plan cross it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "optlayers/qp_ipm.h"

namespace optlayers {

// One warp per problem up to this many variables; one block per problem beyond.
constexpr int kWarpMaxN = 32;
// The block kernel keeps K (n×n) in dynamic shared memory up to this size (n ≤ 78 in float64).
constexpr int64_t kSharedKMaxBytes = 48 * 1024;

// Batched problem data: per-problem stride (in scalars) of each array, 0 for shared data.
template <typename T>
struct QPBatch {
  const T *Q, *q, *G, *h, *A, *b;
  int64_t sQ, sq, sG, sh, sA, sb;
  int64_t batch;
  int n, m, p;
};

template <typename T>
struct QPOut {
  T *x, *lam, *nu;
  int8_t* status;
  int32_t* iters;
};

struct LaunchPlan {
  bool use_warp;
  bool k_in_shared;
  int blocks;
  int threads;
  int64_t groups;               // resident thread groups (each owns one workspace)
  int64_t workspace_per_group;  // scalars
  int64_t shared_bytes;
};

constexpr int kWarpsPerBlock = 4;
constexpr int kBlockThreads = 128;

// Host code (used by the torch binding): the grid for a batch on a device with sm_count SMs.
inline LaunchPlan plan_launch(int n, int m, int p, int64_t batch, int sm_count, int scalar_bytes) {
  LaunchPlan plan;
  plan.use_warp = n <= kWarpMaxN;
  plan.workspace_per_group = workspace_size(n, m, p);
  if (plan.use_warp) {
    const int64_t groups_wanted = batch;
    const int64_t max_groups = int64_t(sm_count) * 32;  // 32 resident warps per SM is plenty here
    const int64_t groups = groups_wanted < max_groups ? groups_wanted : max_groups;
    plan.blocks = int((groups + kWarpsPerBlock - 1) / kWarpsPerBlock);
    plan.threads = kWarpsPerBlock * 32;
    plan.groups = int64_t(plan.blocks) * kWarpsPerBlock;
    plan.shared_bytes = 0;
    plan.k_in_shared = false;
  } else {
    const int64_t max_groups = int64_t(sm_count) * 4;
    plan.blocks = int(batch < max_groups ? batch : max_groups);
    plan.threads = kBlockThreads;
    plan.groups = plan.blocks;
    const int64_t k_bytes = int64_t(n) * n * scalar_bytes;
    plan.k_in_shared = k_bytes <= kSharedKMaxBytes;
    plan.shared_bytes = 33 * sizeof(double) + (plan.k_in_shared ? k_bytes : 0);
  }
  if (plan.blocks < 1) plan.blocks = 1;
  return plan;
}


template <typename T>
cudaError_t launch_qp_solve(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out, T* work,
                            const LaunchPlan& plan, cudaStream_t stream);

template <typename T>
cudaError_t launch_kkt_solve(const QPBatch<T>& a, const T* mask, const T* rhs, T* u, T kkt_reg, T* work,
                             const LaunchPlan& plan, cudaStream_t stream);

}  // namespace optlayers
