// CPU implementation and schema registration of the native QP ops.
//
//   optlayers::qp_solve(Q, q, G, h, A, b, batch, tol, inf_tol, kkt_reg, polish_tol, polish_start,
//                       step_to_boundary, max_iter, polish, keep_factor)
//       -> (x (B,n), lam (B,m), nu (B,p), status (B,) int8, iterations (B,) int32,
//           factor (B, factor_size) with keep_factor (the polish LU, reused by qp_backward), else (0,))
//   optlayers::qp_kkt_solve(Q, G, A, mask, rhs, kkt_reg) -> u (B, n+m+p)
//   optlayers::qp_check(Q, q, G, h, A, b, psd_tol) -> float64 [11] (see qp_check_cpu)
//   optlayers::qp_scale_stats(Q, q, G, A) -> float64 [3] (see qp_scale_stats_cpu)
//   optlayers::qp_backward(Q, q, G, h, A, b, x, lam, nu, status, factor, gx?, glam?, gnu?, kkt_reg,
//                          needs=63)
//       -> (dQ, dq, dG, dh, dA, db), each shaped like its input (shared inputs get the batch sum);
//          bit k of needs clear: output k is empty and not computed
//   optlayers::qp_active_set_solve(Q, q, G, h, A, b, guess, kkt_reg, polish_tol, rounds, keep_factor)
//       -> (x, lam, nu, status, factor): the warm start's guessed active sets (CPU only; see below;
//          factor as qp_solve's)
//
// Data tensors are either batched (leading dim B) or shared (no batch dim; read from one copy).
// The batch is shared out dynamically (for_each_dynamic): each of at::parallel_for's threads owns one
// workspace and takes the next block of problems from an atomic counter, so problems that need
// more iterations, or a thread the OS deschedules on a busy machine, do not leave the others
// waiting at the end (a static split measured 2.4× slower than one thread on a loaded 2-core box).
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

bool use_lanes(int n, int m, int p, int64_t batch, int width) {
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
int small_emulation(int n, int m, int p) {
  const char* v = std::getenv("OPTLAYERS_CPU_SMALL");
  if (v == nullptr || !optlayers::small::eligible(n, m, p)) return 0;
  return v[0] == '1' ? 1 : v[0] == '2' ? 2 : v[0] == '3' ? 3 : 0;
}

// The active-set KKT solve (qp_kkt_solve) of an eligible problem takes small::kkt_solve, its
// n×n double-precision Cholesky with refinement, by default (OPTLAYERS_CPU_SMALL=0: the serial
// path's compact LU instead, for tests): same solution to round-off, and on 4,800 grasp QPs
// (n = 12, m = 41) 7.8 ms instead of 18.4 on this 2-core machine. It serves the warm start's guess
// and forward-mode products; the reverse-mode backward has its own fused path (qp_backward_cpu).
bool small_kkt(int n, int m, int p) {
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

int64_t stride_of(const at::Tensor& t, int64_t core_dims) {
  // From the shape, not numel() / size(0): an empty batch (size(0) = 0) must not divide by zero.
  if (t.dim() <= core_dims) return 0;
  int64_t s = 1;
  for (int64_t d = 1; d < t.dim(); ++d) s *= t.size(d);
  return s;
}

void check_data(const at::Tensor& t, const char* name, int64_t core_dims, int64_t batch, at::ScalarType st) {
  TORCH_CHECK(t.dim() == core_dims || t.dim() == core_dims + 1, "optlayers native: ", name,
              " must have ", core_dims, " (shared) or ", core_dims + 1, " (batched) dims; got ", t.dim());
  TORCH_CHECK(t.dim() == core_dims || t.size(0) == batch, "optlayers native: ", name,
              " has batch size ", t.size(0), " but batch is ", batch);
  TORCH_CHECK(t.scalar_type() == st, "optlayers native: ", name, " has dtype ", t.scalar_type(),
              " but q has ", st);
}

// float32 problems left unsolved (kMaxIter, kNumericalError) are finished in double, where the
// float32 data are exact, with float64's tolerances (tolerances.py):
// 1. a kMaxIter problem's final polish once more in double, from the same iterate (x, λ, ν of a
//    kMaxIter problem are the lowest-merit iterate: a rejected polish writes nothing). At a
//    degenerate vertex (more active rows than variables, a float32 grasp QP with a zero-force
//    contact) the active-set KKT system is singular up to its regularization and float's LU missed
//    the acceptance test on the right active set. The test keeps float's tolerance (polish_tol, as
//    given): the answer is rounded to float anyway, and rows pinning a vertex from both sides, equal
//    only up to float rounding, are inconsistent by ~1e-8 in double;
// 2. where that fails (or the problem broke down), the whole interior point in double from scratch:
//    on degenerate float32 vertices the float iterate's active-set guess itself was wrong (3 of 256
//    hard_qps("degenerate_vertex") problems; double solves each).
// Only a kSolved outcome is taken (rounded to float): a double certificate of infeasibility would
// judge the rounded data at double's tolerances (vertices pinned by rows equal up to float rounding
// are infeasible by ~1e-8 there but feasible at float's), so other outcomes keep float's status.
// A caller who lowered max_iter below its default keeps MAX_ITER for the problems that used the
// whole budget (as certificates.py::unfinished). An accepted problem has no kept factor (the
// backward refactors); its iterations add up. Same rule as the PyTorch backend
// (torch_ipm.py::_finish_in_float64); on CUDA, qp_cuda_binding.cpp does step 2.

template <typename T>
void finish_left_in_double(int64_t batch, int n, int m, int p, int max_iter, double polish_tol, const T* pQ,
                           const T* pq, const T* pG, const T* ph, const T* pA, const T* pb, int64_t sQ, int64_t sq,
                           int64_t sG, int64_t sh, int64_t sA, int64_t sb, T* px, T* pl, T* pn, int8_t* ps, int32_t* pi,
                           T* pf, int64_t fs) {
  if constexpr (std::is_same<T, float>::value) {
    std::vector<int64_t> left;
    for (int64_t i = 0; i < batch; ++i)
      if ((ps[i] == optlayers::kMaxIter || ps[i] == optlayers::kNumericalError) &&
          (max_iter >= optlayers::kDefaultMaxIter || pi[i] < max_iter))  // a lowered budget is kept
        left.push_back(i);
    if (left.empty()) return;
    using F64 = optlayers::Float64Defaults;
    const optlayers::Settings<double> pol{0.0, 0.0, F64::kkt_reg, polish_tol, 0.0, 0, true, 0.0};
    const optlayers::Settings<double> full{F64::tol, F64::inf_tol, F64::kkt_reg, F64::polish_tol, F64::step_to_boundary,
                                           max_iter, true, F64::polish_start};
    const int64_t sizes[] = {int64_t(n) * n, n, int64_t(m) * n, m, int64_t(p) * n, p, n, m, p,
                             std::max(optlayers::polish_workspace_size(n, m, p), optlayers::workspace_size(n, m, p))};
    int64_t total = 0;
    for (const int64_t k : sizes) total += k;
    at::parallel_for(0, int64_t(left.size()), 1, [&](int64_t k0, int64_t k1) {
      std::vector<double> buf(total);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t i = left[k];
        double* c = buf.data();
        auto put = [&](const T* src, int64_t len) {
          double* dst = c;
          for (int64_t e = 0; e < len; ++e) dst[e] = double(src[e]);
          c += len;
          return dst;
        };
        const double* Q = put(pQ + i * sQ, sizes[0]);
        const double* q = put(pq + i * sq, sizes[1]);
        const double* G = put(pG + i * sG, sizes[2]);
        const double* h = put(ph + i * sh, sizes[3]);
        const double* A = put(pA + i * sA, sizes[4]);
        const double* b = put(pb + i * sb, sizes[5]);
        double* x = put(px + i * n, n);
        double* lam = put(pl + i * m, m);
        double* nu = put(pn + i * p, p);
        const optlayers::Problem<double> d{Q, q, G, h, A, b, n, m, p};
        int8_t status = optlayers::kMaxIter;
        int32_t iters = 0;
        bool done = ps[i] == optlayers::kMaxIter && optlayers::polish(optlayers::SerialGroup{}, d, pol, c, x, lam, nu, &status);
        if (!done) {
          optlayers::solve_qp(optlayers::SerialGroup{}, d, full, c, x, lam, nu, &status, &iters);
          done = status == optlayers::kSolved;
        }
        if (!done) continue;
        for (int j = 0; j < n; ++j) px[i * n + j] = T(x[j]);
        for (int r = 0; r < m; ++r) pl[i * m + r] = T(lam[r]);
        for (int e = 0; e < p; ++e) pn[i * p + e] = T(nu[e]);
        ps[i] = optlayers::kSolved;
        pi[i] += iters;
        if (pf != nullptr) pf[i * fs + fs - 1] = T(-1);  // no kept factor
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, int64_t batch, double tol, double inf_tol,
    double kkt_reg, double polish_tol, double polish_start, double step_to_boundary, int64_t max_iter,
    bool polish, bool keep_factor) {
  const auto st = q_.scalar_type();
  check_data(Q_, "Q", 2, batch, st); check_data(q_, "q", 1, batch, st);
  check_data(G_, "G", 2, batch, st); check_data(h_, "h", 1, batch, st);
  check_data(A_, "A", 2, batch, st); check_data(b_, "b", 1, batch, st);
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), h = h_.contiguous();
  auto A = A_.contiguous(), b = b_.contiguous();
  const int n = q.size(-1), m = h.size(-1), p = b.size(-1);
  auto opts = q.options();
  auto x = at::empty({batch, n}, opts), lam = at::empty({batch, m}, opts), nu = at::empty({batch, p}, opts);
  auto status = at::empty({batch}, opts.dtype(at::kChar));
  auto iters = at::empty({batch}, opts.dtype(at::kInt));
  const int64_t fs = optlayers::factor_size(n, m, p);
  auto factor = keep_factor ? at::empty({batch, fs}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_solve_cpu", [&] {
    using T = scalar_t;
    const optlayers::Settings<T> set{T(tol), T(inf_tol), T(kkt_reg), T(polish_tol), T(step_to_boundary), int(max_iter),
                                     polish, T(polish_start)};
    const int64_t sQ = stride_of(Q, 2), sq = stride_of(q, 1), sG = stride_of(G, 2), sh = stride_of(h, 1);
    const int64_t sA = stride_of(A, 2), sb = stride_of(b, 1);
    const T *pQ = Q.data_ptr<T>(), *pq = q.data_ptr<T>(), *pG = G.data_ptr<T>(), *ph = h.data_ptr<T>();
    const T *pA = A.data_ptr<T>(), *pb = b.data_ptr<T>();
    T *px = x.data_ptr<T>(), *pl = lam.data_ptr<T>(), *pn = nu.data_ptr<T>();
    int8_t* ps = status.data_ptr<int8_t>();
    int32_t* pi = iters.data_ptr<int32_t>();
    T* pf = keep_factor ? factor.data_ptr<T>() : nullptr;
    [&] {  // the solve (three paths), then the float32 polish in double below
    if (const int emulation = small_emulation(n, m, p)) {
      // The stages batch by batch, as the CUDA staged schedule launches them (this exercises the
      // saved-iterate layout and the rounds), or with emulation 3 chained per problem (small::solve,
      // the CUDA default): the same arithmetic in the same order.
      namespace sm = optlayers::small;
      std::vector<int8_t> stage(batch, sm::kStageStart);
      const int64_t nsv = sm::saved_scalars(m);
      std::vector<T> saved_v(batch * nsv);
      std::vector<int32_t> saved_k(batch * sm::kSavedInts);
      with_small_tile(n, [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        if (emulation == 3) {  // the fused schedule
          for_each_dynamic<T>(batch, 1, [&](int64_t i, T*) {
            thread_local sm::Rows<T> rows;
            thread_local sm::SavedBuf<T> saved;
            const sm::Data<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, n, m};
            sm::solve<T, NT>(d, set, rows, nullptr, nullptr, saved.view(), px + i * n, pl + i * m, ps + i, pi + i);
            stage[i] = sm::kStageDone;
          });
          return;
        }
        for (int round = 0; round < sm::kMaxRounds; ++round) {
          for (const bool polish_round : {false, true}) {
            for_each_dynamic<T>(batch, 1, [&](int64_t i, T*) {
              const int8_t st = stage[i];
              const bool ipm = st == sm::kStageStart || st == sm::kStageResume;
              const bool pol = st == sm::kStageEarlyPolish || st == sm::kStageFinalPolish;
              if (polish_round ? !pol : !ipm) return;
              thread_local sm::Rows<T> rows;
              sm::NoProfile none;
              const sm::Data<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, n, m};
              const sm::Saved<T> sv{saved_v.data() + i * nsv, saved_k.data() + i * sm::kSavedInts};
              if (polish_round)
                sm::polish_stage<T, NT>(d, set, rows, nullptr, nullptr, sv, &stage[i], px + i * n, pl + i * m,
                                        ps + i, pi + i, none);
              else
                sm::ipm_stage<T, NT>(d, set, rows, nullptr, nullptr, sv, &stage[i], px + i * n, pl + i * m, ps + i,
                                     pi + i, none);
            });
          }
          if (std::none_of(stage.begin(), stage.end(), [](int8_t st) { return st == sm::kStageResume; })) break;
        }
      });
      for (int64_t i = 0; i < batch; ++i)  // beyond kMaxRounds (not reached: see kMaxRounds)
        if (stage[i] != sm::kStageDone) ps[i] = sm::kRetry;
      if (pf != nullptr) {  // no kept factor for these problems (the retried ones get theirs below)
        factor.zero_();
        for (int64_t i = 0; i < batch; ++i) pf[i * fs + fs - 1] = T(-1);
      }
      if (emulation >= 2) return;  // tests: see what the small kernel leaves
      std::vector<int64_t> retry;
      for (int64_t i = 0; i < batch; ++i)
        if (ps[i] == optlayers::small::kRetry) retry.push_back(i);
      for_each_dynamic<T>(int64_t(retry.size()), optlayers::workspace_size(n, m, p), [&](int64_t k, T* work) {
        const int64_t i = retry[k];
        optlayers::Problem<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, pA + i * sA, pb + i * sb, n, m, p};
        optlayers::solve_qp(optlayers::SerialGroup{}, d, set, work, px + i * n, pl + i * m, pn + i * p, ps + i, pi + i,
                            static_cast<T*>(nullptr), pf ? pf + i * fs : nullptr);
      });
      return;
    }
    constexpr int W = optlayers::lanes::width<T>();
    if (use_lanes(n, m, p, batch, W)) {
      const optlayers::lanes::BatchData<T> bd{pQ, pq, pG, ph, pA, pb, sQ, sq, sG, sh, sA, sb, n, m, p};
      for_each_block<T>((batch + W - 1) / W, optlayers::lanes::block_vectors(n, m, p),
                        optlayers::lanes::polish_scalars(n, m, p), [&](int64_t blk, auto* vw, T* sw) {
        const int64_t i0 = blk * W;
        const int count = int(std::min<int64_t>(W, batch - i0));
        optlayers::lanes::solve_block<T>(bd, i0, count, set, vw, sw, px + i0 * n, pl + i0 * m, pn + i0 * p, ps + i0,
                                         pi + i0, pf ? pf + i0 * fs : nullptr);
      });
      return;
    }
    // The serial path (the lanes form K from G̃ directly and need no outer products).
    const int64_t ws = optlayers::workspace_size(n, m, p);
    std::vector<T> outer;
    const int64_t np = int64_t(n) * (n + 1) / 2;
    const int64_t lanes = 64 / int64_t(sizeof(T));
    const int64_t onp = (np + lanes - 1) / lanes * lanes;  // packed rows padded to whole SIMD vectors
    if (sG == 0 && m * onp <= kOuterProductsMax) {
      outer.assign(m * onp, T(0));
      for (int r = 0; r < m; ++r)
        for (int i = 0; i < n; ++i)
          for (int j = 0; j <= i; ++j) outer[r * onp + int64_t(i) * (i + 1) / 2 + j] = pG[r * n + i] * pG[r * n + j];
    }
    const T* pO = outer.empty() ? nullptr : outer.data();
    for_each_dynamic<T>(batch, ws, [&](int64_t i, T* work) {
      optlayers::SerialGroup g;
      optlayers::Problem<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, pA + i * sA, pb + i * sb, n, m, p, pO, onp};
      optlayers::solve_qp(g, d, set, work, px + i * n, pl + i * m, pn + i * p, ps + i, pi + i, static_cast<T*>(nullptr),
                          pf ? pf + i * fs : nullptr);
    });
    }();
    if (polish && small_emulation(n, m, p) < 2)  // (=2 and =3: the small kernel's own outcome, for tests)
      finish_left_in_double<T>(batch, n, m, p, int(max_iter), polish_tol, pQ, pq, pG, ph, pA, pb, sQ, sq, sG, sh, sA,
                               sb, px, pl, pn, ps, pi, pf, fs);
  });
  return {x, lam, nu, status, iters, factor};
}

at::Tensor qp_kkt_solve_cpu(const at::Tensor& Q_, const at::Tensor& G_, const at::Tensor& A_,
                            const at::Tensor& mask_, const at::Tensor& rhs_, double kkt_reg) {
  const auto st = rhs_.scalar_type();
  const int64_t batch = rhs_.size(0);
  check_data(Q_, "Q", 2, batch, st); check_data(G_, "G", 2, batch, st); check_data(A_, "A", 2, batch, st);
  check_data(mask_, "mask", 1, batch, st);
  auto Q = Q_.contiguous(), G = G_.contiguous(), A = A_.contiguous(), mask = mask_.contiguous();
  auto rhs = rhs_.contiguous();
  const int n = Q.size(-1), m = G.size(-2), p = A.size(-2);
  TORCH_CHECK(rhs.size(1) == n + m + p, "optlayers native: rhs must have n+m+p columns");
  auto u = at::empty_like(rhs);
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_kkt_solve_cpu", [&] {
    using T = scalar_t;
    const int64_t sQ = stride_of(Q, 2), sG = stride_of(G, 2), sA = stride_of(A, 2);
    const T *pQ = Q.data_ptr<T>(), *pG = G.data_ptr<T>(), *pA = A.data_ptr<T>();
    const T *pm = mask.data_ptr<T>(), *pr = rhs.data_ptr<T>();
    T* pu = u.data_ptr<T>();
    const int64_t N = n + m + p;
    const int64_t ws = optlayers::workspace_size(n, m, p);
    if (small_kkt(n, m, p)) {
      with_small_tile(n, [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        for_each_dynamic<T>(batch, ws, [&](int64_t i, T* work) {
          thread_local optlayers::small::Rows<T> rows;
          const optlayers::small::Data<T> d{pQ + i * sQ, nullptr, pG + i * sG, nullptr, n, m};
          if (optlayers::small::kkt_solve<T, NT>(d, pm + i * m, T(kkt_reg), pr + i * N, rows, pu + i * N)) return;
          optlayers::Problem<T> dp{pQ + i * sQ, nullptr, pG + i * sG, nullptr, pA + i * sA, nullptr, n, m, p};
          optlayers::kkt_solve(optlayers::SerialGroup{}, dp, pm + i * m, T(kkt_reg), pr + i * N, pu + i * N, work);
        });
      });
      return;
    }
    for_each_dynamic<T>(batch, ws, [&](int64_t i, T* work) {
      optlayers::SerialGroup g;
      optlayers::Problem<T> d{pQ + i * sQ, nullptr, pG + i * sG, nullptr, pA + i * sA, nullptr, n, m, p};
      optlayers::kkt_solve(g, d, pm + i * m, T(kkt_reg), pr + i * N, pu + i * N, work);
    });
  });
  return u;
}


// Warm start (optlayers/_src/qp/warm_start.py): per problem, the KKT system of a guessed active set
// (guess (B, m), nonzero = active) through the polish — its solve, acceptance test (primal
// feasibility, multiplier signs and KKT residual to polish_tol, exactly the interior point's final
// test), the NNLS multiplier repair, and rounds − 1 corrected guesses (violated rows join, rows with
// negative multipliers leave). Status SOLVED with x, λ, ν where a guess is accepted; MAX_ITER (x, λ,
// ν zero) where none is: the caller solves those from scratch. With keep_factor the accepted
// polish LU is kept as qp_solve keeps it (for qp_backward; k = −1 where there is none). The polish
// reads its guess as {r : λ̂_r > h_r − g_rᵀx}; it gets x = 0 and λ̂_r = ±∞, so the guess is exactly
// the given one (its multiplier-shifted second solve, which needs a finite λ̂, changes nothing).
// float64 batches the lanes path takes (use_lanes) are polished W problems a block
// (qp_lanes.h::guess_block, as qp_solve polishes them); otherwise problems with n ≤ 16, m ≤ 128,
// p = 0 take qp_small.h's polish (double precision, n×n Cholesky), the rest qp_ipm.h's (compact
// LU); the small-problem shift-less duplicate solve is skipped. One op call, no Python per round:
// it replaced ~20 tensor ops a round around qp_kkt_solve (benchmarks/warm_start.py).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_active_set_solve_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_, const at::Tensor& A_,
    const at::Tensor& b_, const at::Tensor& guess_, double kkt_reg, double polish_tol, int64_t rounds,
    bool keep_factor) {
  const auto st = q_.scalar_type();
  const int64_t batch = guess_.dim() == 2 ? guess_.size(0) : -1;
  TORCH_CHECK(batch >= 0, "optlayers native: guess must be (batch, m)");
  check_data(Q_, "Q", 2, batch, st); check_data(q_, "q", 1, batch, st);
  check_data(G_, "G", 2, batch, st); check_data(h_, "h", 1, batch, st);
  check_data(A_, "A", 2, batch, st); check_data(b_, "b", 1, batch, st);
  check_data(guess_, "guess", 1, batch, st);
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), h = h_.contiguous();
  auto A = A_.contiguous(), b = b_.contiguous(), guess = guess_.contiguous();
  const int n = q.size(-1), m = h.size(-1), p = b.size(-1);
  TORCH_CHECK(m > 0 && guess.size(1) == m, "optlayers native: guess must be (batch, m) with m > 0");
  TORCH_CHECK(rounds >= 1, "optlayers native: rounds must be positive");
  auto opts = q.options();
  auto x = at::zeros({batch, n}, opts), lam = at::zeros({batch, m}, opts), nu = at::zeros({batch, p}, opts);
  auto status = at::full({batch}, int8_t(optlayers::kMaxIter), opts.dtype(at::kChar));
  const int64_t fs = optlayers::factor_size(n, m, p);
  auto factor = keep_factor ? at::zeros({batch, fs}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_active_set_solve_cpu", [&] {
    using T = scalar_t;
    optlayers::Settings<T> set{T(0), T(0), T(kkt_reg), T(polish_tol), T(0), 0, true, T(0)};
    const int64_t sQ = stride_of(Q, 2), sq = stride_of(q, 1), sG = stride_of(G, 2), sh = stride_of(h, 1);
    const int64_t sA = stride_of(A, 2), sb = stride_of(b, 1);
    const T *pQ = Q.data_ptr<T>(), *pq = q.data_ptr<T>(), *pG = G.data_ptr<T>(), *ph = h.data_ptr<T>();
    const T *pA = A.data_ptr<T>(), *pb = b.data_ptr<T>(), *pg = guess.data_ptr<T>();
    T *px = x.data_ptr<T>(), *pl = lam.data_ptr<T>(), *pn = nu.data_ptr<T>();
    int8_t* ps = status.data_ptr<int8_t>();
    T* pf = keep_factor ? factor.data_ptr<T>() : nullptr;
    const T inf = std::numeric_limits<T>::infinity();
    constexpr int W = optlayers::lanes::width<T>();
    // Problem i through qp_small.h's polish (status SOLVED where accepted); nt: the tile.
    auto small_guess = [&](auto nt, int64_t i) {
      namespace sm = optlayers::small;
      thread_local sm::Rows<T> rows;
      const sm::Data<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, n, m};
      if (sm::polish_guess<T, decltype(nt)::value>(d, set, pg + i * m, rows, int(rounds), px + i * n, pl + i * m))
        ps[i] = optlayers::kSolved;
    };
    if (pf == nullptr && optlayers::lanes::block_kkt<T>() && use_lanes(n, m, p, batch, W)) {
      // float64 batches of small problems: W problems a block through the lanes' polish
      // (qp_lanes.h::guess_block), as qp_solve polishes them. Lanes the block does not accept go
      // on to qp_small.h's polish where it takes them (its n×n Cholesky: on 4,800 grasp QPs,
      // whose degenerate guesses are often rejected by the block round, the op took 22.9 ms with
      // the serial LU polish there), else to the serial polish.
      const optlayers::lanes::BatchData<T> bd{pQ, pq, pG, ph, pA, pb, sQ, sq, sG, sh, sA, sb, n, m, p};
      const bool small_rest = optlayers::small::eligible(n, m, p);
      with_small_tile(n, [&](auto nt) {
        for_each_block<T>((batch + W - 1) / W, optlayers::lanes::block_vectors(n, m, p),
                          optlayers::lanes::polish_scalars(n, m, p), [&](int64_t blk, auto* vw, T* sw) {
          const int64_t i0 = blk * W;
          const int count = int(std::min<int64_t>(W, batch - i0));
          optlayers::lanes::guess_block<T>(bd, i0, count, pg + i0 * m, set, vw, sw, px + i0 * n, pl + i0 * m,
                                           pn + i0 * p, ps + i0, int(rounds), !small_rest);
          if (!small_rest) return;
          for (int64_t i = i0; i < i0 + count; ++i)
            if (ps[i] != optlayers::kSolved) small_guess(nt, i);
        });
      });
      return;
    }
    if (optlayers::small::eligible(n, m, p)) {
      if (pf != nullptr) {  // qp_small.h's polish keeps no LU: k = −1 marks "no usable factor"
        for (int64_t i = 0; i < batch; ++i) pf[i * fs + fs - 1] = T(-1);
      }
      with_small_tile(n, [&](auto nt) { for_each_dynamic<T>(batch, 1, [&](int64_t i, T*) { small_guess(nt, i); }); });
      return;
    }
    for_each_dynamic<T>(batch, optlayers::polish_workspace_size(n, m, p), [&](int64_t i, T* work) {
      optlayers::SerialGroup g;
      optlayers::Problem<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, pA + i * sA, pb + i * sb, n, m, p};
      T* xi = px + i * n;
      T* li = pl + i * m;
      for (int r = 0; r < m; ++r) li[r] = pg[i * m + r] != T(0) ? inf : -inf;
      int8_t st_i = optlayers::kMaxIter;
      T* keep = pf != nullptr ? pf + i * fs : nullptr;
      if (optlayers::polish(g, d, set, work, xi, li, pn + i * p, &st_i, int(rounds), keep)) {
        ps[i] = optlayers::kSolved;
        return;
      }
      if (keep != nullptr) keep[fs - 1] = T(-1);
      for (int j = 0; j < n; ++j) xi[j] = T(0);
      for (int r = 0; r < m; ++r) li[r] = T(0);
      for (int e = 0; e < p; ++e) pn[i * p + e] = T(0);
    });
  });
  return {x, lam, nu, status, factor};
}

// Reverse-mode gradients of qp_solve (see optlayers::kkt_backward). Problems with status ≠ 0
// contribute nothing. Shared inputs are summed over the batch: the batch is cut into a fixed
// number of contiguous chunks (independent of the thread count), each chunk sums into its own
// buffer, and the buffers are added in chunk order, so results do not depend on scheduling.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_backward_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, const at::Tensor& x_, const at::Tensor& lam_,
    const at::Tensor& nu_, const at::Tensor& status_, const at::Tensor& factor_, const std::optional<at::Tensor>& gx_,
    const std::optional<at::Tensor>& glam_, const std::optional<at::Tensor>& gnu_, double kkt_reg, int64_t needs) {
  const auto st = x_.scalar_type();
  const int64_t batch = x_.size(0);
  check_data(Q_, "Q", 2, batch, st); check_data(q_, "q", 1, batch, st);
  check_data(G_, "G", 2, batch, st); check_data(h_, "h", 1, batch, st);
  check_data(A_, "A", 2, batch, st); check_data(b_, "b", 1, batch, st);
  TORCH_CHECK(status_.scalar_type() == at::kChar && status_.numel() == batch, "optlayers native: bad status");
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), h = h_.contiguous();
  auto A = A_.contiguous(), b = b_.contiguous(), x = x_.contiguous(), lam = lam_.contiguous();
  auto nu = nu_.contiguous(), status = status_.contiguous(), factor = factor_.contiguous();
  auto opt = [](const std::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); };
  auto gx = opt(gx_), glam = opt(glam_), gnu = opt(gnu_);
  const int n = x.size(1), m = lam.size(1), p = nu.size(1);
  std::array<at::Tensor, 6> ins{Q, q, G, h, A, b};
  std::array<at::Tensor, 6> outs;
  // Bit k of `needs`: gradient k wanted (else an empty tensor, and its outer products are skipped:
  // ∇Q and ∇G are B·n² and B·m·n numbers, most of the work when only ∇q is wanted).
  auto wanted = [&](int k) { return ((needs >> k) & 1) != 0; };
  for (int k = 0; k < 6; ++k) outs[k] = wanted(k) ? at::zeros_like(ins[k]) : at::empty({0}, ins[k].options());
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_backward_cpu", [&] {
    using T = scalar_t;
    std::array<int64_t, 6> stride;
    std::array<int64_t, 6> core;  // elements of one problem's slice
    std::array<T*, 6> out_ptr;
    std::array<const T*, 6> in_ptr;
    for (int k = 0; k < 6; ++k) {
      const int64_t cd = (k % 2 == 0) ? 2 : 1;
      stride[k] = stride_of(ins[k], cd);
      core[k] = ins[k].dim() > cd ? stride[k] : ins[k].numel();
      out_ptr[k] = wanted(k) ? outs[k].data_ptr<T>() : nullptr;
      in_ptr[k] = ins[k].data_ptr<T>();
    }
    const T *px = x.data_ptr<T>(), *pl = lam.data_ptr<T>(), *pn = nu.data_ptr<T>();
    const int8_t* ps = status.data_ptr<int8_t>();
    const int64_t fs = optlayers::factor_size(n, m, p);
    TORCH_CHECK(factor.numel() == 0 || (factor.dim() == 2 && factor.size(0) == batch && factor.size(1) == fs &&
                                        factor.scalar_type() == st),
                "optlayers native: factor must be empty or (batch, ", fs, ")");
    const T* pf = factor.numel() ? factor.data_ptr<T>() : nullptr;
    const T* pgx = gx.defined() ? gx.data_ptr<T>() : nullptr;
    const T* pgl = glam.defined() ? glam.data_ptr<T>() : nullptr;
    const T* pgn = gnu.defined() ? gnu.data_ptr<T>() : nullptr;
    // Chunk buffers only for shared inputs.
    int64_t shared_elems = 0;
    std::array<int64_t, 6> shared_off;
    for (int k = 0; k < 6; ++k) {
      shared_off[k] = shared_elems;
      if (stride[k] == 0 && wanted(k)) shared_elems += core[k];
    }
    // Where problem i's gradients go: its own slice, or chunk buffer `buf` for shared inputs (null:
    // not wanted).
    auto outputs = [&](int64_t i, T* buf) {
      std::array<T*, 6> o;
      for (int k = 0; k < 6; ++k)
        o[k] = !wanted(k) ? nullptr : stride[k] ? out_ptr[k] + i * stride[k] : buf + shared_off[k];
      return o;
    };
    constexpr int W = optlayers::lanes::width<T>();
    const bool lanes = pf == nullptr && optlayers::lanes::block_kkt<T>() && use_lanes(n, m, p, batch, W);
    // Chunks: of whole blocks for the lanes, of problems otherwise.
    const int64_t blocks = (batch + W - 1) / W;
    const int64_t units = lanes ? blocks : batch;
    const int64_t chunks = shared_elems > 0 ? std::min<int64_t>(units, 32) : std::min<int64_t>(units, lanes ? units : 1024);
    std::vector<T> acc(shared_elems > 0 ? chunks * shared_elems : 0, T(0));
    auto chunk_buf = [&](int64_t c) { return acc.empty() ? static_cast<T*>(nullptr) : acc.data() + c * shared_elems; };
    if (lanes) {
      const optlayers::lanes::BatchData<T> bd{in_ptr[0], in_ptr[1], in_ptr[2], in_ptr[3], in_ptr[4], in_ptr[5],
                                              stride[0], stride[1], stride[2], stride[3], stride[4], stride[5],
                                              n, m, p};
      for_each_block<T>(chunks, optlayers::lanes::block_vectors(n, m, p), optlayers::lanes::polish_scalars(n, m, p),
                        [&](int64_t c, auto* vw, T* sw) {
        T* buf = chunk_buf(c);
        auto out = [&](int64_t i) { return outputs(i, buf); };
        for (int64_t blk = blocks * c / chunks; blk < blocks * (c + 1) / chunks; ++blk) {
          const int64_t i0 = blk * W;
          optlayers::lanes::backward_block<T>(bd, px, pl, pn, ps, pgx, pgl, pgn, i0,
                                              int(std::min<int64_t>(W, batch - i0)), T(kkt_reg), vw, sw, out);
        }
      });
    } else {
      const int64_t ws = optlayers::backward_workspace_size(n, m, p);
      for_each_dynamic<T>(chunks, ws, [&](int64_t c, T* work) {
        optlayers::SerialGroup g;
        const int64_t i0 = batch * c / chunks, i1 = batch * (c + 1) / chunks;
        T* buf = chunk_buf(c);
        for (int64_t i = i0; i < i1; ++i) {
          if (ps[i] != 0) continue;
          const auto o = outputs(i, buf);
          optlayers::Problem<T> d{in_ptr[0] + i * stride[0], in_ptr[1] + i * stride[1], in_ptr[2] + i * stride[2],
                                  in_ptr[3] + i * stride[3], in_ptr[4] + i * stride[4], in_ptr[5] + i * stride[5],
                                  n, m, p};
          optlayers::kkt_backward(g, d, px + i * n, pl + i * m, pn + i * p, pgx ? pgx + i * n : nullptr,
                                  pgl ? pgl + i * m : nullptr, pgn ? pgn + i * p : nullptr, T(kkt_reg), o[0], o[1],
                                  o[2], o[3], o[4], o[5], work, pf ? pf + i * fs : nullptr);
        }
      });
    }
    for (int k = 0; k < 6; ++k) {
      if (stride[k] != 0 || !wanted(k)) continue;
      T* dst = out_ptr[k];
      for (int64_t c = 0; c < chunks; ++c) {
        const T* src = acc.data() + c * shared_elems + shared_off[k];
        for (int64_t e = 0; e < core[k]; ++e) dst[e] += src[e];
      }
    }
  });
  return {outs[0], outs[1], outs[2], outs[3], outs[4], outs[5]};
}


// The scale statistics of canonical data (each of Q, q, G, A batched (B, …) or shared) into po[0..3):
// [min, max over the problems of σ_i = max(max|Q_i|, max|q_i|), max over the problems of the spread
// of the column scales max_j c_j / min_{c_j > 0} c_j, c_j = max(max_k |Q_kj|, max_r |G_rj| / max|G_r|,
// max_e |A_ej| / max|A_e|)] — what optlayers/_src/qp/scaling.py decides from (zeros for B = 0).
template <typename T>
void scale_stats_into(const at::Tensor& Q, const at::Tensor& q, const at::Tensor& G, const at::Tensor& A, double* po) {
  const int64_t n = q.size(-1), m = G.size(-2), p = A.size(-2);
  int64_t B = 1;
  for (const auto& [t, core] : {std::pair{&Q, 2}, {&q, 1}, {&G, 2}, {&A, 2}})
    if (t->dim() > core) B = t->size(0);
  po[0] = po[1] = po[2] = 0;
  if (B == 0 || n == 0) return;
  const bool bQ = Q.dim() > 2, bq = q.dim() > 1, bG = G.dim() > 2, bA = A.dim() > 2;
  // (Branch-free max loops with OpenMP SIMD max reductions: this pass runs on every call.)
  auto row_max = [n](const T* Mr) {
    T top = 0;
    OL_PRAGMA(omp simd reduction(max : top))
    for (int64_t j = 0; j < n; ++j) {
      const T v = Mr[j] < T(0) ? -Mr[j] : Mr[j];
      top = v > top ? v : top;
    }
    return top;
  };
  // c_j of the rows of M (rows × n), each row divided by its largest entry, max-ed into c.
  auto rows_into = [n, &row_max](const T* M, int64_t rows, T* __restrict c) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* Mr = M + r * n;
      const T top = row_max(Mr);
      if (top > T(0)) {
        const T inv = T(1) / top;
        OL_PRAGMA(omp simd)
        for (int64_t j = 0; j < n; ++j) {
          const T v = (Mr[j] < T(0) ? -Mr[j] : Mr[j]) * inv;
          c[j] = v > c[j] ? v : c[j];
        }
      }
    }
  };
  // Shared G and A: their column scales once.
  std::vector<T> c_shared(n, T(0));
  if (!bG) rows_into(G.data_ptr<T>(), m, c_shared.data());
  if (!bA) rows_into(A.data_ptr<T>(), p, c_shared.data());
  std::vector<double> sig(B), spread(B);
  // Chunks of ~16k entries: at B = 32, n = 20 (900 entries a problem) both cores take part.
  const int64_t per_problem = n * ((bQ ? n : 0) + (bG ? m : 0) + (bA ? p : 0)) + 1;
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / per_problem), [&](int64_t i0, int64_t i1) {
    std::vector<T> c(n);
    for (int64_t i = i0; i < i1; ++i) {
      c = c_shared;
      if (bG) rows_into(G.data_ptr<T>() + i * m * n, m, c.data());
      if (bA) rows_into(A.data_ptr<T>() + i * p * n, p, c.data());
      const T* Qi = Q.data_ptr<T>() + (bQ ? i * n * n : 0);
      const T* qi = q.data_ptr<T>() + (bq ? i * n : 0);
      // Q is symmetric (checked unless check_inputs=False; else only this statistic is off), so
      // column j's largest entry is row j's.
      T s = row_max(qi);
      for (int64_t j = 0; j < n; ++j) {
        const T v = row_max(Qi + j * n);
        s = std::max(s, v);
        c[j] = std::max(c[j], v);
      }
      T hi = 0, lo = std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        hi = std::max(hi, c[j]);
        if (c[j] > T(0)) lo = std::min(lo, c[j]);
      }
      sig[i] = double(s);
      spread[i] = hi > T(0) ? double(hi / lo) : 1.0;
    }
  });
  po[0] = po[1] = sig[0];
  po[2] = spread[0];
  for (int64_t i = 1; i < B; ++i) {
    po[0] = std::min(po[0], sig[i]);
    po[1] = std::max(po[1], sig[i]);
    po[2] = std::max(po[2], spread[i]);
  }
}

// Value checks of solve_qp's inputs in one pass (the C++ form of problem._check_values):
// returns float64 [nonfinite Q, q, G, h, A, b (0/1 each), max relative asymmetry of Q,
// index of the first Q (in its own batch) whose Cholesky of Q + psd_tol·max(1, max|Q|)·I fails, or −1,
// then the three scale statistics of scale_stats_into] — of canonical data (each field batched or shared).
at::Tensor qp_check_cpu(const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
                        const at::Tensor& A_, const at::Tensor& b_, double psd_tol) {
  std::array<at::Tensor, 6> ins{Q_.contiguous(), q_.contiguous(), G_.contiguous(), h_.contiguous(),
                                A_.contiguous(), b_.contiguous()};
  auto out = at::zeros({11}, at::kDouble);
  double* po = out.data_ptr<double>();
  po[7] = -1;
  AT_DISPATCH_FLOATING_TYPES(q_.scalar_type(), "optlayers_qp_check_cpu", [&] {
    using T = scalar_t;
    for (int k = 0; k < 6; ++k) {
      const T* v = ins[k].data_ptr<T>();
      const int64_t len = ins[k].numel();
      T acc = 0;  // Σ 0·v is 0 for finite data and NaN as soon as one entry is NaN or ±Inf
      // (any summation order gives the same verdict: SIMD partial sums, not one add chain)
      OL_SIMD_SUM(acc)
      for (int64_t e = 0; e < len; ++e) acc += v[e] * T(0);
      po[k] = (acc == acc) ? 0.0 : 1.0;
    }
    const at::Tensor& Q = ins[0];
    const int n = Q.size(-1);
    const int64_t count = Q.dim() > 2 ? Q.size(0) : 1;
    const T* pQ = Q.data_ptr<T>();
    std::vector<double> asym(count, 0.0);
    std::vector<int64_t> bad(count, 0);
    // Q number c: its scale max(1, max|Q|), and its relative asymmetry stored in asym[c].
    auto scale_and_asymmetry = [&](int64_t c) {
      const T* M = pQ + c * int64_t(n) * n;
      T scale = 1, worst = 0;
      for (int64_t e = 0; e < int64_t(n) * n; ++e) scale = std::max(scale, std::abs(M[e]));
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < i; ++j) worst = std::max(worst, std::abs(M[i * n + j] - M[j * n + i]));
      asym[c] = double(worst / scale);
      return scale;
    };
    // Many small Q (n ≤ 64): the PSD test of W matrices at once, one per SIMD lane (the lanes
    // Cholesky of qp_lanes.h, same test: a pivot of Q + psd_tol·scale·I not positive); the same
    // scale and asymmetry numbers as the loop below.
    constexpr int W = optlayers::lanes::width<T>();
    if (n <= 64 && count >= 2 * W) {
      using V = typename optlayers::lanes::Vec<T>::type;
      const int64_t blocks = (count + W - 1) / W;
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        std::vector<V> K(int64_t(n) * n), dinv(n);
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t i0 = blk * W;
          const int cnt = int(std::min<int64_t>(W, count - i0));
          V shift{};
          for (int l = 0; l < W; ++l) {  // lanes past cnt repeat the last matrix
            const int64_t c = i0 + (l < cnt ? l : cnt - 1);
            const T* M = pQ + c * int64_t(n) * n;
            shift[l] = T(psd_tol) * scale_and_asymmetry(c);
            for (int64_t e = 0; e < int64_t(n) * n; ++e) K[e][l] = M[e];
          }
          for (int i = 0; i < n; ++i) K[int64_t(i) * n + i] += shift;
          const auto ok = optlayers::lanes::chol<T>(K.data(), dinv.data(), n, V{});
          for (int l = 0; l < cnt; ++l) bad[i0 + l] = ok[l] ? 0 : 1;
        }
      });
    } else
    at::parallel_for(0, count, 1, [&](int64_t c0, int64_t c1) {
      std::vector<T> L(int64_t(n) * n);
      for (int64_t c = c0; c < c1; ++c) {
        const T* M = pQ + c * int64_t(n) * n;
        const T shift = T(psd_tol) * scale_and_asymmetry(c);
        for (int64_t e = 0; e < int64_t(n) * n; ++e) L[e] = M[e];
        for (int i = 0; i < n; ++i) L[i * n + i] += shift;
        optlayers::SerialGroup g;
        bad[c] = optlayers::cholesky(g, L.data(), n) ? 0 : 1;
      }
    });
    for (int64_t c = 0; c < count; ++c) {
      po[6] = std::max(po[6], asym[c]);
      if (bad[c] && po[7] < 0) po[7] = double(c);
    }
    scale_stats_into<T>(ins[0], ins[1], ins[2], ins[4], po + 8);
  });
  return out;
}

// qp_scale_stats(Q, q, G, A) -> float64 [3]: scale_stats_into of canonical CPU data (what qp_check
// also returns; for solve_qp(check_inputs=False)).
at::Tensor qp_scale_stats_cpu(const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& A_) {
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), A = A_.contiguous();
  auto out = at::zeros({3}, at::kDouble);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "optlayers_qp_scale_stats_cpu",
                             [&] { scale_stats_into<scalar_t>(Q, q, G, A, out.data_ptr<double>()); });
  return out;
}

}  // namespace

TORCH_LIBRARY(optlayers, m) {
  m.def("qp_solve(Tensor Q, Tensor q, Tensor G, Tensor h, Tensor A, Tensor b, int batch, float tol, "
        "float inf_tol, float kkt_reg, float polish_tol, float polish_start, float step_to_boundary, int max_iter, "
        "bool polish, bool keep_factor) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("qp_kkt_solve(Tensor Q, Tensor G, Tensor A, Tensor mask, Tensor rhs, float kkt_reg) -> Tensor");
  m.def("qp_check(Tensor Q, Tensor q, Tensor G, Tensor h, Tensor A, Tensor b, float psd_tol) -> Tensor");
  m.def("qp_scale_stats(Tensor Q, Tensor q, Tensor G, Tensor A) -> Tensor");
  m.def("qp_active_set_solve(Tensor Q, Tensor q, Tensor G, Tensor h, Tensor A, Tensor b, Tensor guess, "
        "float kkt_reg, float polish_tol, int rounds, bool keep_factor) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("qp_backward(Tensor Q, Tensor q, Tensor G, Tensor h, Tensor A, Tensor b, Tensor x, Tensor lam, "
        "Tensor nu, Tensor status, Tensor factor, Tensor? gx, Tensor? glam, Tensor? gnu, float kkt_reg, "
        "int needs=63) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(optlayers, CPU, m) {
  m.impl("qp_solve", &qp_solve_cpu);
  m.impl("qp_kkt_solve", &qp_kkt_solve_cpu);
  m.impl("qp_backward", &qp_backward_cpu);
  m.impl("qp_check", &qp_check_cpu);
  m.impl("qp_scale_stats", &qp_scale_stats_cpu);
  m.impl("qp_active_set_solve", &qp_active_set_solve_cpu);
}
