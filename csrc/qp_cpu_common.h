// Shared by the CPU translation units of the native QP ops (qp_cpu.cpp, qp_cpu_solve_float.cpp,
// qp_cpu_solve_double.cpp, qp_cpu_derivatives.cpp): includes, the batch-parallel loops, the routing
// rules and the input checks (file-local copies per unit), and the ops' declarations.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <array>
#include <cstdlib>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "optlayers/qp_ipm.h"
#include "optlayers/qp_lanes.h"
#include "optlayers/qp_small.h"

namespace {


// A shared G gets its row outer products precomputed (m·n(n+1)/2 numbers, packed lower
// triangles) up to this size (2 MiB in float64, about an L2 cache); see Problem::G_outer.
constexpr int64_t kOuterProductsMax = int64_t(1) << 18;

// Calls body(i, work) for i in [0, count) on at::parallel_for's threads, handing out blocks of
// indices dynamically; `work` is a per-thread buffer of `ws` scalars.
template <typename T, typename F>
void for_each_dynamic(int64_t count, int64_t ws, const F& body) {
  if (count <= 0) return;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t block = std::max<int64_t>(1, count / (threads * 16));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, count), 1, [&](int64_t, int64_t) {
    std::vector<T> work(std::max<int64_t>(ws, 1));
    for (;;) {
      const int64_t i0 = next.fetch_add(block);
      if (i0 >= count) break;
      const int64_t i1 = std::min(count, i0 + block);
      for (int64_t i = i0; i < i1; ++i) body(i, work.data());
    }
  });
}

// Batch-interleaved solver (optlayers/qp_lanes.h: interior point, polish and backward) for
// problems with inequalities: used when n ≤ kLanesMaxN, m + p ≤ kLanesMaxM and the batch fills at
// least two blocks of lanes. OPTLAYERS_CPU_LANES=0 turns it off, =1 forces it for every batch
// with m > 0 up to m + p = kLanesForcedMaxM (tests, benchmarks).
// The lane workspace grows with (m + p)·n and n² (the interior point's G̃ and K, the KKT solve's
// raw rows and Cholesky factor; it grew with (m + p)² before the block KKT solve replaced the
// range-space method), bounded by kLanesMaxM automatically and kLanesForcedMaxM when forced.
// kLanesMaxN from fwd+bwd timings on the 2-core AVX-512 machine (float64, lanes vs serial,
// benchmarks/native_lanes.py, results/native_lanes_cpu.txt; latest run): lanes 1.5–1.9× faster from
// n = 20 to 50 (m + p ≤ 128), 1.23× at B=128 n=64 m=64 p=10, 1.17× at n=80 m=80 p=10, 1.03× at B=64
// n=100 m=100 p=10 (a tie) and 0.43× at B=8 n=200 m=200 p=50.
constexpr int kLanesMaxN = 80;
constexpr int kLanesMaxM = 128;
constexpr int kLanesForcedMaxM = 1024;

inline bool use_lanes(int n, int m, int p, int64_t batch, int width) {
  if (m == 0 || m + p > kLanesForcedMaxM) return false;
  const char* v = std::getenv("OPTLAYERS_CPU_LANES");
  if (v != nullptr && v[0] == '0') return false;
  if (v != nullptr && v[0] == '1') return true;
  return n <= kLanesMaxN && m + p <= kLanesMaxM && batch >= 2 * int64_t(width);
}

// Calls body(block, vec_work, scalar_work) for the blocks [0, blocks) on at::parallel_for's
// threads, handed out dynamically as in for_each_dynamic; each thread owns an aligned vector
// workspace (`nv` SIMD vectors) and a scalar one (`ns` scalars).
template <typename T, typename F>
void for_each_block(int64_t blocks, int64_t nv, int64_t ns, const F& body) {
  using V = typename optlayers::lanes::Vec<T>::type;
  if (blocks <= 0) return;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t grab = std::max<int64_t>(1, blocks / (threads * 16));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, blocks), 1, [&](int64_t, int64_t) {
    std::vector<V> vw(std::max<int64_t>(nv, 1));  // over-aligned element type: aligned allocation (C++17)
    std::vector<T> sw(std::max<int64_t>(ns, 1));
    for (;;) {
      const int64_t b0 = next.fetch_add(grab);
      if (b0 >= blocks) break;
      const int64_t b1 = std::min(blocks, b0 + grab);
      for (int64_t b = b0; b < b1; ++b) body(b, vw.data(), sw.data());
    }
  });
}

// Host emulation of the CUDA small-problem kernel (optlayers/qp_small.h: one thread per problem):
// OPTLAYERS_CPU_SMALL=1 runs it on the CPU for every eligible batch (n ≤ 16, m ≤ 128, p = 0), with
// the serial path as the fallback for the problems it leaves (status kRetry), exactly as the CUDA
// op falls back to its thread-group kernel. A test hook (tests/native/test_native_small.py): the
// GPU code is checked on machines without a GPU. Off by default; the CPU's own paths are faster.
// OPTLAYERS_CPU_SMALL=2: the same without the fallback (status −1 marks what it would re-solve).
// Both run the stages batch by batch, as the CUDA kernel's staged schedule launches them;
// OPTLAYERS_CPU_SMALL=3 chains them per problem (small::solve), as its default fused schedule
// does, without the fallback. Returns 0 (off or not eligible), 1, 2 or 3.
inline int small_emulation(int n, int m, int p) {
  const char* v = std::getenv("OPTLAYERS_CPU_SMALL");
  if (v == nullptr || !optlayers::small::eligible(n, m, p)) return 0;
  return v[0] == '1' ? 1 : v[0] == '2' ? 2 : v[0] == '3' ? 3 : 0;
}

// The active-set KKT solve (qp_kkt_solve) of an eligible problem takes small::kkt_solve, its
// n×n double-precision Cholesky with refinement, by default (OPTLAYERS_CPU_SMALL=0: the serial
// path's compact LU instead, for tests): same solution to round-off, and on 4,800 grasp QPs
// (n = 12, m = 41) 7.8 ms instead of 18.4 on this 2-core machine. It serves the warm start's guess
// and forward-mode products; the reverse-mode backward has its own fused path (qp_backward_cpu).
inline bool small_kkt(int n, int m, int p) {
  const char* v = std::getenv("OPTLAYERS_CPU_SMALL");
  return optlayers::small::eligible(n, m, p) && !(v != nullptr && v[0] == '0');
}

// Calls f(std::integral_constant<int, NT>{}) for the small kernel's tile of n.
template <typename F>
void with_small_tile(int n, const F& f) {
  switch (optlayers::small::tile(n)) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 12: f(std::integral_constant<int, 12>{}); break;
    default: f(std::integral_constant<int, 16>{}); break;
  }
}

inline int64_t stride_of(const at::Tensor& t, int64_t core_dims) {
  // From the shape, not numel() / size(0): an empty batch (size(0) = 0) must not divide by zero.
  if (t.dim() <= core_dims) return 0;
  int64_t s = 1;
  for (int64_t d = 1; d < t.dim(); ++d) s *= t.size(d);
  return s;
}

inline void check_data(const at::Tensor& t, const char* name, int64_t core_dims, int64_t batch, at::ScalarType st) {
  TORCH_CHECK(t.dim() == core_dims || t.dim() == core_dims + 1, "optlayers native: ", name,
              " must have ", core_dims, " (shared) or ", core_dims + 1, " (batched) dims; got ", t.dim());
  TORCH_CHECK(t.dim() == core_dims || t.size(0) == batch, "optlayers native: ", name,
              " has batch size ", t.size(0), " but batch is ", batch);
  TORCH_CHECK(t.scalar_type() == st, "optlayers native: ", name, " has dtype ", t.scalar_type(),
              " but q has ", st);
}

}  // namespace

namespace optlayers_cpu {

// The CPU ops (registered in qp_cpu.cpp), in several translation units that the build compiles in
// parallel (11.7 / 26 / 46 s for qp_cpu / derivatives / solve on 2 cores before solve was split by
// scalar type): qp_cpu.cpp (qp_solve's checks and dispatch, qp_check, qp_scale_stats, schemas,
// registration), qp_cpu_solve_{float,double}.cpp (qp_solve's kernel, qp_cpu_solve.h),
// qp_cpu_derivatives.cpp (qp_kkt_solve, qp_active_set_solve, qp_backward).

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, int64_t batch, double tol, double inf_tol,
    double kkt_reg, double polish_tol, double polish_start, double step_to_boundary, int64_t max_iter,
    bool polish, bool keep_factor);

at::Tensor qp_kkt_solve_cpu(const at::Tensor& Q_, const at::Tensor& G_, const at::Tensor& A_,
                            const at::Tensor& mask_, const at::Tensor& rhs_, double kkt_reg);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_active_set_solve_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_, const at::Tensor& A_,
    const at::Tensor& b_, const at::Tensor& guess_, double kkt_reg, double polish_tol, int64_t rounds,
    bool keep_factor);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_backward_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, const at::Tensor& x_, const at::Tensor& lam_,
    const at::Tensor& nu_, const at::Tensor& status_, const at::Tensor& factor_, const std::optional<at::Tensor>& gx_,
    const std::optional<at::Tensor>& glam_, const std::optional<at::Tensor>& gnu_, double kkt_reg, int64_t needs);

at::Tensor qp_check_cpu(const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
                        const at::Tensor& A_, const at::Tensor& b_, double psd_tol);

at::Tensor qp_scale_stats_cpu(const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& A_);

}  // namespace optlayers_cpu
