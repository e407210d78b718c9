// CUDA kernels of the native QP ops — torch-free, so nvcc can check them on any machine with the
// CUDA toolkit (tests/native/test_native_build.py does), with or without a GPU. Templates only:
// csrc/qp_cuda_float.cu and csrc/qp_cuda_double.cu instantiate them, one scalar type per
// translation unit, so the two (slow, -O3) device compilations run in parallel.
//
// The per-problem solver is the same template as on the CPU (optlayers/qp_ipm.h), run by one
// "thread group" per problem (the choice: plan_launch in qp_cuda.h):
//   - SerialGroup (one thread: the CPU's serial code path), only when forced (slower, see qp_cuda.h);
//   - WarpGroup  (32 lanes, shuffles);
//   - BlockGroup (blockDim threads, __syncthreads, shared-memory reductions) for larger n, with
//     the reduced KKT matrix K (n×n) in dynamic shared memory when it fits (up to the device's
//     opt-in limit: kSharedKMaxBytes in qp_cuda.h). Lane sets (lanes(), lane_sum()) are warps.
// Workspaces live in global memory, one per resident group (grid-stride over problems), so memory
// does not grow with the batch. Shared data (one Q/G/A for the batch) is read through stride 0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "optlayers/qp_cuda.h"
#include "optlayers/qp_ipm.h"

namespace optlayers {

// Butterfly all-reduces over one warp (every lane gets the result): sum or max, and the (v, i) pair
// of argmax (qp_ipm.h: argmax_better). Device code only; the host pass of nvcc compiles them empty.
template <typename T, bool kMax>
OL_HD OL_INLINE T warp_reduce(T v) {
#if defined(__CUDA_ARCH__)
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? (w > v ? w : v) : v + w;
  }
#endif
  return v;
}

template <typename T>
OL_HD OL_INLINE void warp_argmax(T& v, int& i) {
#if defined(__CUDA_ARCH__)
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    const int j = __shfl_xor_sync(0xffffffffu, i, o);
    if (argmax_better(w, j, v, i)) { v = w; i = j; }
  }
#endif
}

struct WarpGroup {
  static constexpr bool kSerial = false;
  static constexpr bool kOneLaneSet = true;
  OL_HD OL_INLINE int rank() const {
#if defined(__CUDA_ARCH__)
    return threadIdx.x & 31;
#else
    return 0;
#endif
  }
  OL_HD OL_INLINE int size() const { return 32; }
  OL_HD OL_INLINE void sync() const {
#if defined(__CUDA_ARCH__)
    __syncwarp();
#endif
  }
  template <typename T>
  OL_HD OL_INLINE T sum(T v) const { return warp_reduce<T, false>(v); }
  template <typename T>
  OL_HD OL_INLINE T max(T v) const { return warp_reduce<T, true>(v); }
  // One lane set: the warp.
  OL_HD OL_INLINE int lanes() const { return 32; }
  template <typename T>
  OL_HD OL_INLINE T lane_sum(T v) const { return sum(v); }
  OL_HD OL_INLINE void lane_sync() const { sync(); }
  template <typename T>
  OL_HD OL_INLINE int argmax(T v, int i) const {
    warp_argmax(v, i);
    return i;
  }
};

struct BlockGroup {
  static constexpr bool kSerial = false;
  static constexpr bool kOneLaneSet = false;  // several warps (blockDim.x ≥ 64)
  double* scratch;  // 33 doubles of shared memory
  OL_HD OL_INLINE int rank() const {
#if defined(__CUDA_ARCH__)
    return threadIdx.x;
#else
    return 0;
#endif
  }
  OL_HD OL_INLINE int size() const {
#if defined(__CUDA_ARCH__)
    return blockDim.x;
#else
    return 1;
#endif
  }
  OL_HD OL_INLINE void sync() const {
#if defined(__CUDA_ARCH__)
    __syncthreads();
#endif
  }
  // Each warp reduces, its lane 0 posts the result in scratch, warp 0 reduces those.
  template <typename T, bool kMax>
  OL_HD OL_INLINE T reduce(T v) const {
#if defined(__CUDA_ARCH__)
    v = warp_reduce<T, kMax>(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = double(v);
    __syncthreads();
    if (warp == 0) {
      const T r = warp_reduce<T, kMax>(lane < warps ? T(scratch[lane]) : (kMax ? -ol_inf<T>() : T(0)));
      if (lane == 0) scratch[32] = double(r);
    }
    __syncthreads();
    v = T(scratch[32]);
#endif
    return v;
  }
  template <typename T>
  OL_HD OL_INLINE T sum(T v) const { return reduce<T, false>(v); }
  template <typename T>
  OL_HD OL_INLINE T max(T v) const { return reduce<T, true>(v); }
  // Lane sets are the block's warps (blockDim.x is a multiple of 32).
  OL_HD OL_INLINE int lanes() const {
#if defined(__CUDA_ARCH__)
    return 32;
#else
    return 1;
#endif
  }
  template <typename T>
  OL_HD OL_INLINE T lane_sum(T v) const { return warp_reduce<T, false>(v); }
  OL_HD OL_INLINE void lane_sync() const {
#if defined(__CUDA_ARCH__)
    __syncwarp();
#endif
  }
  // As reduce, with (value, index) pairs: scratch[warp] and scratch[16 + warp] (≤ 16 warps).
  template <typename T>
  OL_HD OL_INLINE int argmax(T v, int i) const {
#if defined(__CUDA_ARCH__)
    warp_argmax(v, i);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) {
      scratch[warp] = double(v);
      scratch[16 + warp] = double(i);
    }
    __syncthreads();
    if (warp == 0) {
      T r = lane < warps ? T(scratch[lane]) : T(-1);
      int k = lane < warps ? int(scratch[16 + lane]) : 0x7fffffff;
      warp_argmax(r, k);
      if (lane == 0) scratch[32] = double(k);
    }
    __syncthreads();
    i = int(scratch[32]);
#endif
    return i;
  }
};

template <typename T>
__device__ Problem<T> problem_at(const QPBatch<T>& a, int64_t i) {
  return Problem<T>{a.Q + i * a.sQ, a.q + i * a.sq, a.G + i * a.sG, a.h + i * a.sh,
                    a.A + i * a.sA, a.b + i * a.sb, a.n, a.m, a.p, nullptr};
}

template <typename T>
__global__ void qp_solve_thread_kernel(QPBatch<T> a, Settings<T> set, QPOut<T> out, T* work, int64_t ws) {
  const int64_t gid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t groups = int64_t(gridDim.x) * blockDim.x;
  SerialGroup g;
  T* w = work + gid * ws;
  for (int64_t i = gid; i < a.batch; i += groups) {
    const Problem<T> d = problem_at(a, i);
    solve_qp(g, d, set, w, out.x + i * a.n, out.lam + i * a.m, out.nu + i * a.p, out.status + i, out.iters + i);
  }
}

template <typename T>
__global__ void qp_solve_warp_kernel(QPBatch<T> a, Settings<T> set, QPOut<T> out, T* work, int64_t ws) {
  const int64_t warps_per_block = blockDim.x / 32;
  const int64_t gid = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int64_t groups = int64_t(gridDim.x) * warps_per_block;
  WarpGroup g;
  T* w = work + gid * ws;
  for (int64_t i = gid; i < a.batch; i += groups) {
    const Problem<T> d = problem_at(a, i);
    solve_qp(g, d, set, w, out.x + i * a.n, out.lam + i * a.m, out.nu + i * a.p, out.status + i, out.iters + i);
  }
}

template <typename T>
__global__ void qp_solve_block_kernel(QPBatch<T> a, Settings<T> set, QPOut<T> out, T* work, int64_t ws,
                                      bool k_in_shared) {
  extern __shared__ double smem[];
  BlockGroup g{smem};
  T* kshared = k_in_shared ? reinterpret_cast<T*>(smem + 33) : nullptr;
  T* w = work + int64_t(blockIdx.x) * ws;
  for (int64_t i = blockIdx.x; i < a.batch; i += gridDim.x) {
    const Problem<T> d = problem_at(a, i);
    solve_qp(g, d, set, w, out.x + i * a.n, out.lam + i * a.m, out.nu + i * a.p, out.status + i, out.iters + i,
             kshared);
  }
}

template <typename T>
__global__ void kkt_solve_thread_kernel(QPBatch<T> a, const T* mask, const T* rhs, T* u, T kkt_reg, T* work,
                                        int64_t ws) {
  const int64_t gid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t groups = int64_t(gridDim.x) * blockDim.x;
  const int64_t N = int64_t(a.n) + a.m + a.p;
  SerialGroup g;
  for (int64_t i = gid; i < a.batch; i += groups)
    kkt_solve(g, problem_at(a, i), mask + i * a.m, kkt_reg, rhs + i * N, u + i * N, work + gid * ws);
}

template <typename T>
__global__ void kkt_solve_warp_kernel(QPBatch<T> a, const T* mask, const T* rhs, T* u, T kkt_reg, T* work,
                                      int64_t ws) {
  const int64_t warps_per_block = blockDim.x / 32;
  const int64_t gid = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int64_t groups = int64_t(gridDim.x) * warps_per_block;
  const int64_t N = int64_t(a.n) + a.m + a.p;
  WarpGroup g;
  for (int64_t i = gid; i < a.batch; i += groups)
    kkt_solve(g, problem_at(a, i), mask + i * a.m, kkt_reg, rhs + i * N, u + i * N, work + gid * ws);
}

template <typename T>
__global__ void kkt_solve_block_kernel(QPBatch<T> a, const T* mask, const T* rhs, T* u, T kkt_reg, T* work,
                                       int64_t ws) {
  extern __shared__ double smem[];
  BlockGroup g{smem};
  const int64_t N = int64_t(a.n) + a.m + a.p;
  for (int64_t i = blockIdx.x; i < a.batch; i += gridDim.x)
    kkt_solve(g, problem_at(a, i), mask + i * a.m, kkt_reg, rhs + i * N, u + i * N, work + blockIdx.x * ws);
}

// Resident blocks of `kernel` on this device (occupancy × SMs) with `threads` threads and `smem` bytes of
// dynamic shared memory a block, at most `wanted`.
template <typename K>
int resident_blocks(K kernel, int64_t wanted, int threads = kSmallThreads, int64_t smem = 0) {
  int dev = 0, sms = 1, per_sm = 1;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, size_t(smem)) != cudaSuccess ||
      per_sm < 1)
    per_sm = 1;
  const int64_t resident = int64_t(per_sm) * sms;
  return int(wanted < resident ? (wanted > 0 ? wanted : 1) : resident);
}

template <typename T>
cudaError_t launch_qp_solve(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out, T* work,
                            const LaunchPlan& plan, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  if (plan.kernel == Kernel::kThread) {
    qp_solve_thread_kernel<T><<<plan.blocks, plan.threads, 0, stream>>>(a, set, out, work, plan.workspace_per_group);
  } else if (plan.kernel == Kernel::kWarp) {
    qp_solve_warp_kernel<T><<<plan.blocks, plan.threads, 0, stream>>>(a, set, out, work, plan.workspace_per_group);
  } else {
    // K beyond 48 KB of shared memory needs the kernel's opt-in; a block loops over its problems,
    // so the grid is capped at the blocks that are resident at once (2 an SM at n = 100, float64).
    if (plan.shared_bytes > kSharedKMaxBytes) {
      const cudaError_t e = cudaFuncSetAttribute(qp_solve_block_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 int(plan.shared_bytes));
      if (e != cudaSuccess) return e;
    }
    const int blocks = resident_blocks(qp_solve_block_kernel<T>, plan.blocks, plan.threads, plan.shared_bytes);
    qp_solve_block_kernel<T><<<blocks, plan.threads, plan.shared_bytes, stream>>>(
        a, set, out, work, plan.workspace_per_group, plan.k_in_shared);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_kkt_solve(const QPBatch<T>& a, const T* mask, const T* rhs, T* u, T kkt_reg, T* work,
                             const LaunchPlan& plan, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  if (plan.kernel == Kernel::kThread) {
    kkt_solve_thread_kernel<T><<<plan.blocks, plan.threads, 0, stream>>>(a, mask, rhs, u, kkt_reg, work,
                                                                         plan.workspace_per_group);
  } else if (plan.kernel == Kernel::kWarp) {
    kkt_solve_warp_kernel<T><<<plan.blocks, plan.threads, 0, stream>>>(a, mask, rhs, u, kkt_reg, work,
                                                                       plan.workspace_per_group);
  } else {
    kkt_solve_block_kernel<T><<<plan.blocks, plan.threads, 33 * sizeof(double), stream>>>(
        a, mask, rhs, u, kkt_reg, work, plan.workspace_per_group);
  }
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------------------
// Small problems: one thread per problem (optlayers/qp_small.h).

// The SM's cycle counter (device code; the host pass of nvcc also parses member functions).
__device__ inline long long device_clock() {
#if defined(__CUDA_ARCH__)
  return clock64();
#else
  return 0;
#endif
}

// small::solve's profile hooks on the GPU: clock64() between marks, per thread (kSmallProfile).
struct ClockProfile {
  long long last;
  long long acc[small::kProfSlots];
  __device__ ClockProfile() : last(device_clock()) {
    for (int k = 0; k < small::kProfSlots; ++k) acc[k] = 0;
  }
  __device__ void phase(int k) {
    const long long t = device_clock();
    acc[k] += t - last;
    last = t;
  }
  __device__ void count(int k, long long v = 1) { acc[k] += v; }
};

// Row scales (and h̃) of a shared G (and h), once per block into shared memory.
template <typename T, int NT>
__device__ void block_row_scales(const QPBatch<T>& a, T* gs, T* hs, bool shared_g, bool shared_h) {
  if (shared_g) {
    const small::Data<T> d0{a.Q, a.q, a.G, a.h, a.n, a.m};
    for (int r = threadIdx.x; r < a.m; r += blockDim.x) {
      gs[r] = small::row_scale<T, NT>(d0, r);
      if (shared_h) hs[r] = a.h[r] * gs[r];
    }
  }
  __syncthreads();
}

template <typename T>
__device__ small::Data<T> problem_of(const QPBatch<T>& a, int64_t i) {
  return small::Data<T>{a.Q + i * a.sQ, a.q + i * a.sq, a.G + i * a.sG, a.h + i * a.sh, a.n, a.m};
}

template <typename Prof>
__device__ void flush_profile(Prof& p, long long t_start, unsigned long long* prof) {
  if constexpr (std::is_same<Prof, ClockProfile>::value) {
    p.acc[small::kProfTotal] += device_clock() - t_start;
    for (int k = 0; k < small::kProfSlots; ++k) atomicAdd(prof + k, (unsigned long long)p.acc[k]);
  }
}

// Launch bounds: with the thread count alone ptxas (CUDA 13, sm_90) gave the staged interior-point
// kernel in float64 at tile 16 only 32 registers and 55 KB of spills (3× slower than the fused
// kernel's arithmetic on the H200), and kkt_small_kernel<double, 16> 168 registers and 6.6 KB; with a
// minimum of one block per SM they get 255 registers and spill 8.4 / 4.7 KB (ptxas -v here; not yet
// run on a GPU). The fused and polish kernels already get 255 and keep the plain bound.

// The interior-point stage (small::ipm_stage) of every problem at kStageStart or kStageResume.
// (The staged schedule, kSmallStaged.) Persistent threads: the grid holds as many threads as fit
// on the GPU at once, and each thread takes the next problem from a global counter whenever it
// finishes one, so threads whose problems stop early go on working, and there is no partial last
// wave. With a shared G (and h) the row scales (and h̃) are computed once per block into shared
// memory. V: kSmallProfile or 0.
template <typename T, int NT, int V>
__global__ void __launch_bounds__(kSmallThreads, 1) qp_small_ipm_kernel(QPBatch<T> a, Settings<T> set, QPOut<T> out,
                                                                     int8_t* stage, T* saved_v, int32_t* saved_k,
                                                                     unsigned long long* next,
                                                                     unsigned long long* prof) {
  __shared__ T gs[small::kMaxM], hs[small::kMaxM];
  const bool shared_g = a.sG == 0, shared_h = shared_g && a.sh == 0;
  block_row_scales<T, NT>(a, gs, hs, shared_g, shared_h);
  small::Rows<T> rows;  // thread-local memory, interleaved across the warp by the hardware
  using Prof = typename std::conditional<(V & kSmallProfile) != 0, ClockProfile, small::NoProfile>::type;
  Prof p;
  const long long t_start = device_clock();
  const int64_t nsv = small::saved_scalars(a.m);
  for (;;) {
    const int64_t i = int64_t(atomicAdd(next, 1ULL));
    if (i >= a.batch) break;
    const int8_t st = stage[i];
    if (st != small::kStageStart && st != small::kStageResume) continue;
    p.phase(small::kProfFetch);
    small::ipm_stage<T, NT, Prof>(problem_of(a, i), set, rows, shared_g ? gs : nullptr, shared_h ? hs : nullptr,
                                  small::Saved<T>{saved_v + i * nsv, saved_k + i * small::kSavedInts}, stage + i,
                                  out.x + i * a.n, out.lam + i * a.m, out.status + i, out.iters + i, p);
  }
  flush_profile(p, t_start, prof);
}

// The polish stage (small::polish_stage) of every problem at kStageEarlyPolish or
// kStageFinalPolish: one thread per problem, all of them polishing at the same time.
template <typename T, int NT, int V>
__global__ void __launch_bounds__(kSmallThreads) qp_small_polish_kernel(QPBatch<T> a, Settings<T> set,
                                                                        QPOut<T> out, int8_t* stage, T* saved_v,
                                                                        int32_t* saved_k,
                                                                        unsigned long long* prof) {
  __shared__ T gs[small::kMaxM], hs[small::kMaxM];
  const bool shared_g = a.sG == 0, shared_h = shared_g && a.sh == 0;
  block_row_scales<T, NT>(a, gs, hs, shared_g, shared_h);
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.batch) return;
  const int8_t st = stage[i];
  if (st != small::kStageEarlyPolish && st != small::kStageFinalPolish) return;
  using Prof = typename std::conditional<(V & kSmallProfile) != 0, ClockProfile, small::NoProfile>::type;
  Prof p;
  const long long t_start = device_clock();
  small::Rows<T> rows;
  const int64_t nsv = small::saved_scalars(a.m);
  small::polish_stage<T, NT, Prof>(problem_of(a, i), set, rows, shared_g ? gs : nullptr, shared_h ? hs : nullptr,
                                   small::Saved<T>{saved_v + i * nsv, saved_k + i * small::kSavedInts}, stage + i,
                                   out.x + i * a.n, out.lam + i * a.m, out.status + i, out.iters + i, p);
  flush_profile(p, t_start, prof);
}

// The fused schedule (the default; optlayers/qp_cuda.h): the stages chained in one thread per problem
// (small::solve), persistent threads as above.
template <typename T, int NT, int V>
__global__ void __launch_bounds__(kSmallThreads) qp_small_fused_kernel(QPBatch<T> a, Settings<T> set, QPOut<T> out,
                                                                       unsigned long long* next,
                                                                       unsigned long long* prof) {
  __shared__ T gs[small::kMaxM], hs[small::kMaxM];
  const bool shared_g = a.sG == 0, shared_h = shared_g && a.sh == 0;
  block_row_scales<T, NT>(a, gs, hs, shared_g, shared_h);
  small::Rows<T> rows;
  small::SavedBuf<T> saved;
  using Prof = typename std::conditional<(V & kSmallProfile) != 0, ClockProfile, small::NoProfile>::type;
  Prof p;
  const long long t_start = device_clock();
  for (;;) {
    const int64_t i = int64_t(atomicAdd(next, 1ULL));
    if (i >= a.batch) break;
    p.phase(small::kProfFetch);
    small::solve<T, NT, Prof>(problem_of(a, i), set, rows, shared_g ? gs : nullptr, shared_h ? hs : nullptr,
                              saved.view(), out.x + i * a.n, out.lam + i * a.m, out.status + i, out.iters + i, p);
  }
  flush_profile(p, t_start, prof);
}

template <typename T, int NT>
__global__ void __launch_bounds__(kSmallThreads, 1) kkt_small_kernel(QPBatch<T> a, const T* mask, const T* rhs, T* u,
                                                                  T kkt_reg, int8_t* failed) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.batch) return;
  small::Rows<T> rows;
  const small::Data<T> d{a.Q + i * a.sQ, nullptr, a.G + i * a.sG, nullptr, a.n, a.m};
  const int64_t N = int64_t(a.n) + a.m;
  failed[i] = small::kkt_solve<T, NT>(d, mask + i * a.m, kkt_reg, rhs + i * N, rows, u + i * N) ? 0 : 1;
}

// The warm start's guessed active sets (small::polish_guess), one thread per problem: status kSolved
// with x, λ where a guess (or its correction) is accepted, else kMaxIter (x and λ untouched: the
// caller zeroed them).
template <typename T, int NT>
__global__ void __launch_bounds__(kSmallThreads) active_set_small_kernel(QPBatch<T> a, const T* guess, Settings<T> set,
                                                                         int rounds, T* x, T* lam, int8_t* status) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.batch) return;
  small::Rows<T> rows;
  status[i] = small::polish_guess<T, NT>(problem_of(a, i), set, guess + i * a.m, rows, rounds, x + i * a.n,
                                         lam + i * a.m)
                  ? int8_t(kSolved)
                  : int8_t(kMaxIter);
}


// Calls f(std::integral_constant<int, NT>{}, std::integral_constant<int, V>{}) for n's tile and
// the profile bit of `variant`.
template <typename F>
cudaError_t with_small_kernel(int n, int variant, const F& f) {
  const bool profile = (variant & kSmallProfile) != 0;
  switch (small::tile(n)) {
    case 8:
      return profile ? f(std::integral_constant<int, 8>{}, std::integral_constant<int, kSmallProfile>{})
                     : f(std::integral_constant<int, 8>{}, std::integral_constant<int, 0>{});
    case 12:
      return profile ? f(std::integral_constant<int, 12>{}, std::integral_constant<int, kSmallProfile>{})
                     : f(std::integral_constant<int, 12>{}, std::integral_constant<int, 0>{});
    default:
      return profile ? f(std::integral_constant<int, 16>{}, std::integral_constant<int, kSmallProfile>{})
                     : f(std::integral_constant<int, 16>{}, std::integral_constant<int, 0>{});
  }
}

template <typename T>
cudaError_t launch_small_ipm(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out, const SmallStages<T>& st,
                             int variant, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  if ((variant & kSmallProfile) != 0 && st.prof == nullptr) return cudaErrorInvalidValue;
  return with_small_kernel(a.n, variant, [&](auto nt, auto v) {
    constexpr int NT = decltype(nt)::value, V = decltype(v)::value;
    const int blocks = resident_blocks(qp_small_ipm_kernel<T, NT, V>, (a.batch + kSmallThreads - 1) / kSmallThreads);
    qp_small_ipm_kernel<T, NT, V><<<blocks, kSmallThreads, 0, stream>>>(a, set, out, st.stage, st.saved_v, st.saved_k,
                                                                         st.counter, st.prof);
    return cudaGetLastError();
  });
}

template <typename T>
cudaError_t launch_small_polish(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out,
                                const SmallStages<T>& st, int variant, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  if ((variant & kSmallProfile) != 0 && st.prof == nullptr) return cudaErrorInvalidValue;
  return with_small_kernel(a.n, variant, [&](auto nt, auto v) {
    constexpr int NT = decltype(nt)::value, V = decltype(v)::value;
    const int blocks = int((a.batch + kSmallThreads - 1) / kSmallThreads);
    qp_small_polish_kernel<T, NT, V><<<blocks, kSmallThreads, 0, stream>>>(a, set, out, st.stage, st.saved_v,
                                                                            st.saved_k, st.prof);
    return cudaGetLastError();
  });
}

template <typename T>
cudaError_t launch_qp_small_fused(const QPBatch<T>& a, const Settings<T>& set, const QPOut<T>& out,
                                  unsigned long long* counter, int variant, unsigned long long* prof,
                                  cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  if ((variant & kSmallProfile) != 0 && prof == nullptr) return cudaErrorInvalidValue;
  return with_small_kernel(a.n, variant, [&](auto nt, auto v) {
    constexpr int NT = decltype(nt)::value, V = decltype(v)::value;
    const int blocks = resident_blocks(qp_small_fused_kernel<T, NT, V>, (a.batch + kSmallThreads - 1) / kSmallThreads);
    qp_small_fused_kernel<T, NT, V><<<blocks, kSmallThreads, 0, stream>>>(a, set, out, counter, prof);
    return cudaGetLastError();
  });
}

template <typename T>
cudaError_t launch_kkt_small(const QPBatch<T>& a, const T* mask, const T* rhs, T* u, T kkt_reg, int8_t* failed,
                             cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  const int blocks = int((a.batch + kSmallThreads - 1) / kSmallThreads);
  switch (small::tile(a.n)) {
    case 8: kkt_small_kernel<T, 8><<<blocks, kSmallThreads, 0, stream>>>(a, mask, rhs, u, kkt_reg, failed); break;
    case 12: kkt_small_kernel<T, 12><<<blocks, kSmallThreads, 0, stream>>>(a, mask, rhs, u, kkt_reg, failed); break;
    default: kkt_small_kernel<T, 16><<<blocks, kSmallThreads, 0, stream>>>(a, mask, rhs, u, kkt_reg, failed); break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_active_set_small(const QPBatch<T>& a, const T* guess, const Settings<T>& set, int rounds, T* x,
                                    T* lam, int8_t* status, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  const int blocks = int((a.batch + kSmallThreads - 1) / kSmallThreads);
  switch (small::tile(a.n)) {
    case 8: active_set_small_kernel<T, 8><<<blocks, kSmallThreads, 0, stream>>>(a, guess, set, rounds, x, lam, status); break;
    case 12: active_set_small_kernel<T, 12><<<blocks, kSmallThreads, 0, stream>>>(a, guess, set, rounds, x, lam, status); break;
    default: active_set_small_kernel<T, 16><<<blocks, kSmallThreads, 0, stream>>>(a, guess, set, rounds, x, lam, status); break;
  }
  return cudaGetLastError();
}

// One scalar type's launchers (used by qp_cuda_float.cu / qp_cuda_double.cu).
#define OPTLAYERS_INSTANTIATE_CUDA(T)                                                                         \
  template cudaError_t launch_qp_solve<T>(const QPBatch<T>&, const Settings<T>&, const QPOut<T>&, T*,       \
                                          const LaunchPlan&, cudaStream_t);                                 \
  template cudaError_t launch_kkt_solve<T>(const QPBatch<T>&, const T*, const T*, T*, T, T*, const LaunchPlan&, \
                                           cudaStream_t);                                                   \
  template cudaError_t launch_small_ipm<T>(const QPBatch<T>&, const Settings<T>&, const QPOut<T>&,             \
                                          const SmallStages<T>&, int, cudaStream_t);                        \
  template cudaError_t launch_small_polish<T>(const QPBatch<T>&, const Settings<T>&, const QPOut<T>&,          \
                                             const SmallStages<T>&, int, cudaStream_t);                     \
  template cudaError_t launch_qp_small_fused<T>(const QPBatch<T>&, const Settings<T>&, const QPOut<T>&,        \
                                               unsigned long long*, int, unsigned long long*, cudaStream_t); \
  template cudaError_t launch_kkt_small<T>(const QPBatch<T>&, const T*, const T*, T*, T, int8_t*, cudaStream_t); \
  template cudaError_t launch_active_set_small<T>(const QPBatch<T>&, const T*, const Settings<T>&, int, T*, T*, \
                                                  int8_t*, cudaStream_t);

}  // namespace optlayers
