// Definitions of qp_cpu_solve.h, included by the per-type units only.
#pragma once
#include "qp_cpu_solve.h"

namespace optlayers_cpu {

// float32 problems left unsolved (kMaxIter, kNumericalError) are finished in double, where the
// float32 data are exact, with float64's tolerances (tolerances.py):
// 1. a kMaxIter problem's final polish once more in double, from the same iterate (x, λ, ν of a
//    kMaxIter problem are the lowest-merit iterate: a rejected polish writes nothing). At a
//    degenerate vertex (more active rows than variables, a float32 grasp QP with a zero-force
//    contact) the active-set KKT system is singular up to its regularization and float's LU missed
//    the acceptance test on the right active set. The test is kFloat32InFloat64PolishTol (1e-6),
//    looser than double's: rows pinning a vertex from both sides, equal only up to float rounding,
//    are inconsistent by ~1e-8 in double; and tighter than float's 5e-5, which accepted a wrong
//    guess's regularized compromise (see qp_ipm.h);
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
    const optlayers::Settings<double> pol{0.0, 0.0, F64::kkt_reg, std::min(polish_tol, optlayers::kFloat32InFloat64PolishTol),
                                          0.0, 0, true, 0.0};
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

// A converged double problem whose final polish rejected every guess keeps the interior point's
// iterate (SOLVED at the tolerance, not at round-off): some row has λ > 0 and a slack above
// √polish_tol (1 + ‖h‖∞), which a polished point never has (λ = 0 exactly off its active set).
// Such problems are solved once more from scratch at kRetryTolFactor × the tolerance and polished
// (rows whose λ and s were both 1e-6 … 1e-4 at the end separate in a few more iterations); the
// result is taken only where it is SOLVED and polished. Iterations add up; the kept factor is the
// new solve's. Same rule as torch_ipm.py::_finish_unpolished (active_set.py::unpolished,
// RETRY_TOL_FACTOR; optlayers::kRetryTolFactor), and as qp_cuda_binding.cpp::finish_unpolished on
// the GPU. About 1 in 27,000 grasp QPs (benchmarks/polish_rate.py).

template <typename T>
bool left_unpolished(const optlayers::Problem<T>& d, const T* x, const T* lam, double polish_tol) {
  double hn = 0;
  for (int r = 0; r < d.m; ++r) hn = std::max(hn, std::abs(double(d.h[r])));
  const double gap = std::sqrt(polish_tol) * (1 + hn);
  for (int r = 0; r < d.m; ++r) {
    if (!(lam[r] > T(0))) continue;
    double gx = 0;
    for (int j = 0; j < d.n; ++j) gx += double(d.G[int64_t(r) * d.n + j]) * double(x[j]);
    if (double(d.h[r]) - gx > gap) return true;
  }
  return false;
}

template <typename T>
void finish_unpolished(int64_t batch, int n, int m, int p, const optlayers::Settings<T>& set, const T* pQ,
                       const T* pq, const T* pG, const T* ph, const T* pA, const T* pb, int64_t sQ, int64_t sq,
                       int64_t sG, int64_t sh, int64_t sA, int64_t sb, T* px, T* pl, T* pn, int8_t* ps, int32_t* pi,
                       T* pf, int64_t fs) {
  if constexpr (std::is_same<T, double>::value) {
    if (m == 0) return;
    auto problem = [&](int64_t i) {
      return optlayers::Problem<T>{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, pA + i * sA, pb + i * sb, n, m, p};
    };
    // The test costs a dot product per row with λ > 0 (the active rows of a polished point): ~1 ms
    // serially for 4,800 grasp QPs, 3% of their solve, hence over the threads.
    std::vector<uint8_t> flag(batch, 0);
    at::parallel_for(0, batch, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        flag[i] = ps[i] == optlayers::kSolved && left_unpolished(problem(i), px + i * n, pl + i * m, double(set.polish_tol));
    });
    std::vector<int64_t> left;
    for (int64_t i = 0; i < batch; ++i)
      if (flag[i]) left.push_back(i);
    if (left.empty()) return;
    optlayers::Settings<T> tighter = set;
    tighter.tol = set.tol * T(optlayers::kRetryTolFactor);
    const int64_t ws = optlayers::workspace_size(n, m, p);
    for_each_dynamic<T>(int64_t(left.size()), ws + n + m + p + (pf ? fs : 0), [&](int64_t k, T* work) {
      const int64_t i = left[k];
      T* x = work + ws;
      T* lam = x + n;
      T* nu = lam + m;
      T* keep = pf ? nu + p : nullptr;
      int8_t status = optlayers::kMaxIter;
      int32_t iters = 0;
      const optlayers::Problem<T> d = problem(i);
      optlayers::solve_qp(optlayers::SerialGroup{}, d, tighter, work, x, lam, nu, &status, &iters,
                          static_cast<T*>(nullptr), keep);
      if (status != optlayers::kSolved || left_unpolished(d, x, lam, double(set.polish_tol))) return;
      std::copy(x, x + n, px + i * n);
      std::copy(lam, lam + m, pl + i * m);
      std::copy(nu, nu + p, pn + i * p);
      if (pf != nullptr) std::copy(keep, keep + fs, pf + i * fs);
      pi[i] += iters;
    });
  }
}

template <typename T>
void solve_typed(const SolveCall& c) {
  const at::Tensor &Q = c.Q, &q = c.q, &G = c.G, &h = c.h, &A = c.A, &b = c.b;
  at::Tensor &x = c.x, &lam = c.lam, &nu = c.nu, &status = c.status, &iters = c.iters, &factor = c.factor;
  const int64_t batch = c.batch, max_iter = c.max_iter;
  const int n = c.n, m = c.m, p = c.p;
  const double tol = c.tol, inf_tol = c.inf_tol, kkt_reg = c.kkt_reg, polish_tol = c.polish_tol;
  const double polish_start = c.polish_start, step_to_boundary = c.step_to_boundary;
  const bool polish = c.polish, keep_factor = c.keep_factor;
  const int64_t fs = optlayers::factor_size(n, m, p);
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
  if (polish && small_emulation(n, m, p) < 2) {  // (=2 and =3: the small kernel's own outcome, for tests)
    finish_left_in_double<T>(batch, n, m, p, int(max_iter), polish_tol, pQ, pq, pG, ph, pA, pb, sQ, sq, sG, sh, sA,
                             sb, px, pl, pn, ps, pi, pf, fs);
    finish_unpolished<T>(batch, n, m, p, set, pQ, pq, pG, ph, pA, pb, sQ, sq, sG, sh, sA, sb, px, pl, pn, ps, pi,
                         pf, fs);
  }
}

}  // namespace optlayers_cpu
