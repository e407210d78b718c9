// Torch-free interface between the CUDA kernels (optlayers/qp_cuda_kernels.cuh) and the torch binding
// (qp_cuda_binding.cpp). Only plain pointers, strides and a launch plan cross it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "optlayers/qp_ipm.h"
#include "optlayers/qp_small.h"

namespace optlayers {

// Three kernels solve a batch, each with one "thread group" per problem (csrc/optlayers/qp_ipm.h):
//   kThread  one CUDA thread per problem: the serial (CPU) code path, no synchronization at all;
//            many problems in flight, each one slow (forced only, see below);
//   kWarp    one warp per problem (shuffles, __syncwarp);
//   kBlock   one block per problem (__syncthreads, shared-memory reductions, K in shared memory
//            when it fits) — for larger problems.
//   kSmall   one CUDA thread per problem with the reduced matrix in registers (optlayers/qp_small.h)
//            for n ≤ 16, m ≤ 128, p = 0 — the default there (two schedules: see SmallStages);
//            the problems it leaves (status
//            small::kRetry: infeasible, unbounded, iteration limit, polish not accepted) are
//            re-solved by the warp kernel (qp_cuda_binding.cpp).
enum class Kernel : int { kThread = 0, kWarp = 1, kBlock = 2, kSmall = 3 };

// Default choice (plan_launch): the warp kernel for n ≤ kSmallMaxN, the block kernel above. The
// thread kernel is only used when forced (OPTLAYERS_CUDA_KERNEL=thread): measured on an H100 it is
// 1.2-7× slower than the warp kernel on every small-problem case of benchmarks/gpu_bench.py (e.g.
// 48,000 grasp QPs, float64: 106 vs 57 ms fwd+bwd; 1,024 QPs n = 20: 17 vs 3.5 ms), because each
// thread's workspace (tens of KB) is touched uncoalesced and far exceeds its share of L1, whereas
// a warp's fits (benchmarks/results/gpu_h100.txt).
constexpr int kSmallMaxN = 32;
// The block kernel keeps K (n×n) in dynamic shared memory when its reductions' scratch and K fit the
// device's limit per block: this default without opt-in (n ≤ 78 in float64), or what the binding
// passes to plan_launch, the opt-in limit (cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KB on
// H100/H200, n ≤ 170 in float64; the launcher then raises the kernel's attribute). Before, n = 100
// kept K in global memory: B = 10,000, n = 100, m = 200 took 2.76 s forward on an H200.
constexpr int64_t kSharedKMaxBytes = 48 * 1024;
// Cap on the thread kernel's workspaces (one per resident thread) for the whole grid.
constexpr int64_t kThreadWorkspaceMaxBytes = int64_t(4) << 30;

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
  Kernel kernel;
  bool k_in_shared;
  int blocks;
  int threads;
  int64_t groups;               // resident thread groups (each owns one workspace)
  int64_t workspace_per_group;  // scalars
  int64_t shared_bytes;
};

constexpr int kWarpsPerBlock = 4;
// Threads per block of the small kernel: few, so that the last wave of a batch is spread evenly
// (a thread holds up to 255 registers, so an SM runs only ~256 of them).
constexpr int kSmallThreads = 64;
// The small kernel is chosen from this many problems per SM on (fewer: the warp kernel). One thread
// runs a whole problem, so a small batch leaves the GPU nearly empty and waits on single threads:
// H100, n = 16, m = 32, B = 1,024: 4.2 ms (small) vs 1.7 ms (warp); grasp QPs B = 4,800: 2.0 vs 4.1 ms.
constexpr int kSmallMinProblemsPerSM = 16;
constexpr int kBlockThreads = 128;

// Host code (used by the torch binding): the grid for a batch on a device with sm_count SMs.
// `forced` (0, 1, 2, 3 = Kernel; −1: choose) overrides the choice, e.g. for benchmarks; 3 (small) falls
// back to the choice by size where the small kernel is not eligible. `shared_limit`: dynamic shared
// memory a block may have (see kSharedKMaxBytes).
inline LaunchPlan plan_launch(int n, int m, int p, int64_t batch, int sm_count, int scalar_bytes, int forced = -1,
                              int64_t shared_limit = kSharedKMaxBytes) {
  LaunchPlan plan;
  const bool small_ok = small::eligible(n, m, p);
  if (forced >= 0 && forced <= 2) {
    plan.kernel = Kernel(forced);
  } else if (small_ok && (forced == 3 || batch >= kSmallMinProblemsPerSM * int64_t(sm_count))) {
    plan.kernel = Kernel::kSmall;
  } else if (n <= kSmallMaxN) {
    plan.kernel = Kernel::kWarp;
  } else {
    plan.kernel = Kernel::kBlock;
  }
  plan.workspace_per_group = workspace_size(n, m, p);
  plan.shared_bytes = 0;
  plan.k_in_shared = false;
  if (plan.kernel == Kernel::kSmall) {
    // One thread per problem at most; launch_small_ipm caps the grid at the resident blocks
    // (persistent threads). Thread-local arrays, no workspace.
    plan.threads = kSmallThreads;
    plan.blocks = int((batch + kSmallThreads - 1) / kSmallThreads);
    plan.groups = batch;
    plan.workspace_per_group = 0;
  } else if (plan.kernel == Kernel::kThread) {
    // Small blocks while the batch is small, so that the problems spread over all SMs.
    plan.threads = batch < int64_t(sm_count) * 128 ? 32 : 128;
    int64_t groups = batch < int64_t(sm_count) * 1024 ? batch : int64_t(sm_count) * 1024;
    const int64_t by_memory = kThreadWorkspaceMaxBytes / (plan.workspace_per_group * scalar_bytes);
    if (groups > by_memory) groups = by_memory;
    if (groups < 1) groups = 1;
    plan.blocks = int((groups + plan.threads - 1) / plan.threads);
    plan.groups = int64_t(plan.blocks) * plan.threads;
  } else if (plan.kernel == Kernel::kWarp) {
    const int64_t max_groups = int64_t(sm_count) * 32;  // 32 resident warps per SM is plenty here
    const int64_t groups = batch < max_groups ? batch : max_groups;
    plan.blocks = int((groups + kWarpsPerBlock - 1) / kWarpsPerBlock);
    plan.threads = kWarpsPerBlock * 32;
    plan.groups = int64_t(plan.blocks) * kWarpsPerBlock;
  } else {
    const int64_t max_groups = int64_t(sm_count) * 4;
    plan.blocks = int(batch < max_groups ? batch : max_groups);
    plan.threads = kBlockThreads;
    plan.groups = plan.blocks;
    const int64_t k_bytes = int64_t(n) * n * scalar_bytes, scratch = 33 * sizeof(double);
    plan.k_in_shared = scratch + k_bytes <= (shared_limit > kSharedKMaxBytes ? shared_limit : kSharedKMaxBytes);
    plan.shared_bytes = scratch + (plan.k_in_shared ? k_bytes : 0);
  }
  if (plan.blocks < 1) plan.blocks = 1;
  if (plan.groups < 1) plan.groups = 1;
  return plan;
}

template <typename T>
cudaError_t launch_qp_solve(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out, T* work,
                            const LaunchPlan& plan, cudaStream_t stream);

// The small kernel's two schedules of the same stages (optlayers/qp_small.h: ipm_stage,
// polish_stage; bit for bit the same results):
//   fused (default)  one thread runs every stage of its problem in one launch (small::solve);
//   staged           the interior-point kernel and then the polish kernel over the batch, and again
//                    for the problems whose early polish failed (at most small::kMaxRounds rounds,
//                    one host synchronization each), so that all lanes of a warp do the same stage.
// Measured on an H200 (benchmarks/results/gpu_h200_small.txt, forward, same run): real grasp QPs
// B = 4,800 6.5 (fused) vs 7.5 ms (staged), B = 48,000 17.9 vs 17.8; planted B = 48,000 f64 4.5 vs
// 4.5; B = 100,000 n = 16 f32 10.6 vs 9.6 — so the default is the schedule without host
// synchronizations (CUDA-graph friendly); OPTLAYERS_CUDA_SMALL_VARIANT=1 selects the staged one.
// Beware: at tile 16 in float64 ptxas (CUDA 13, sm_90) gives the staged interior-point kernel only
// 32 registers (55 KB of spill stores; the fused kernel gets 255): B = 48,000, n = 15 ran 3× slower.
// Per-problem scratch of the staged schedule between its launches:
template <typename T>
struct SmallStages {
  int8_t* stage;                  // batch, small::Stage (zeroed: kStageStart)
  T* saved_v;                     // batch × small::saved_scalars(m)
  int32_t* saved_k;               // batch × small::kSavedInts
  unsigned long long* counter;    // the persistent threads' work counter (zeroed before each launch)
  unsigned long long* prof;       // small::kProfSlots zeroed counters for kSmallProfile, else unused
};

// Variants (a bit mask, OPTLAYERS_CUDA_SMALL_VARIANT; benchmarks/gpu_small_variants.py): 0 the fused
// schedule (default); kSmallStaged the staged one; kSmallProfile adds clock64() phase sums
// (qp_cuda_kernels.cuh: ClockProfile), printed to stderr by the binding.
constexpr int kSmallStaged = 1;
constexpr int kSmallProfile = 4;
constexpr int kSmallVariants[] = {0, kSmallStaged, kSmallProfile, kSmallProfile | kSmallStaged};

template <typename T>
cudaError_t launch_small_ipm(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out,
                             const SmallStages<T>& st, int variant, cudaStream_t stream);
template <typename T>
cudaError_t launch_small_polish(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out,
                                const SmallStages<T>& st, int variant, cudaStream_t stream);
// The fused schedule: `counter` one zeroed 64-bit integer in device memory; `prof` as in SmallStages.
template <typename T>
cudaError_t launch_qp_small_fused(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out,
                                  unsigned long long* counter, int variant, unsigned long long* prof,
                                  cudaStream_t stream);
// Its backward solve: failed[i] = 1 where problem i must go to launch_kkt_solve instead.
template <typename T>
cudaError_t launch_kkt_small(const QPBatch<T>& a, const T* mask, const T* rhs, T* u, T kkt_reg, int8_t* failed,
                             cudaStream_t stream);

template <typename T>
cudaError_t launch_kkt_solve(const QPBatch<T>& a, const T* mask, const T* rhs, T* u, T kkt_reg, T* work,
                             const LaunchPlan& plan, cudaStream_t stream);

// The warm start's guessed active sets (guess: batch × m, nonzero = active) for problems the small
// kernel takes (small::eligible): status kSolved with x, λ where accepted, else kMaxIter.
template <typename T>
cudaError_t launch_active_set_small(const QPBatch<T>& a, const T* guess, const Settings<T>& set, int rounds, T* x,
                                    T* lam, int8_t* status, cudaStream_t stream);

}  // namespace optlayers
