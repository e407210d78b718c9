// Schema registration of the native QP ops and their CPU kernels (qp_solve's in qp_cpu_solve.h;
// qp_kkt_solve, qp_active_set_solve, qp_backward in qp_cpu_derivatives.cpp; the checks here).
//
//   optlayers::qp_solve(Q, q, G, h, A, b, batch, tol, inf_tol, kkt_reg, polish_tol, polish_start,
//                       step_to_boundary, max_iter, polish, keep_factor)
//       -> (x (B,n), lam (B,m), nu (B,p), status (B,) int8, iterations (B,) int32,
//           factor (B, factor_size) with keep_factor (the polish LU, reused by qp_backward), else (0,))
//   optlayers::qp_kkt_solve(Q, G, A, mask, rhs, kkt_reg) -> u (B, n+m+p)
//   optlayers::qp_check(Q, q, G, h, A, b, psd_tol) -> float64 [13] (see qp_check_cpu)
//   optlayers::qp_scale_stats(Q, q, G, A) -> float64 [5] (see qp_scale_stats_cpu)
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
#include "qp_cpu_common.h"
#include "qp_cpu_solve.h"

namespace optlayers_cpu {

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
  const SolveCall call{Q, q, G, h, A, b, x, lam, nu, status, iters, factor, batch, n, m, p,
                       tol, inf_tol, kkt_reg, polish_tol, polish_start, step_to_boundary, max_iter, polish, keep_factor};
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_solve_cpu", [&] { solve_typed<scalar_t>(call); });
  return {x, lam, nu, status, iters, factor};
}


// The scale statistics of canonical data (each of Q, q, G, A batched (B, …) or shared) into po[0..5):
// [min, max over the problems of σ_i = max(max|Q_i|, max|q_i|), max over the problems of the spread
// of the column scales max_j c_j / min_{c_j > 0} c_j, c_j = max(max_k |Q_kj|, max_r |G_rj| / max|G_r|,
// max_e |A_ej| / max|A_e|), min and max over every nonzero row of G and A of max_j |row_j| (0, 0 when
// there is none)] — what optlayers/_src/qp/scaling.py decides from (zeros for B = 0).
template <typename T>
void scale_stats_into(const at::Tensor& Q, const at::Tensor& q, const at::Tensor& G, const at::Tensor& A, double* po) {
  const int64_t n = q.size(-1), m = G.size(-2), p = A.size(-2);
  int64_t B = 1;
  for (const auto& [t, core] : {std::pair{&Q, 2}, {&q, 1}, {&G, 2}, {&A, 2}})
    if (t->dim() > core) B = t->size(0);
  po[0] = po[1] = po[2] = po[3] = po[4] = 0;
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
  // c_j of the rows of M (rows × n), each row divided by its largest entry, max-ed into c; the
  // smallest nonzero and the largest row maximum into (lo, hi).
  auto rows_into = [n, &row_max](const T* M, int64_t rows, T* __restrict c, T& lo, T& hi) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* Mr = M + r * n;
      const T top = row_max(Mr);
      hi = std::max(hi, top);
      if (top > T(0)) {
        lo = std::min(lo, top);
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
  constexpr T kInf = std::numeric_limits<T>::infinity();
  T row_lo_shared = kInf, row_hi_shared = 0;
  if (!bG) rows_into(G.data_ptr<T>(), m, c_shared.data(), row_lo_shared, row_hi_shared);
  if (!bA) rows_into(A.data_ptr<T>(), p, c_shared.data(), row_lo_shared, row_hi_shared);
  std::vector<double> sig(B), spread(B), row_lo(B), row_hi(B);
  // Chunks of ~16k entries: at B = 32, n = 20 (900 entries a problem) both cores take part.
  const int64_t per_problem = n * ((bQ ? n : 0) + (bG ? m : 0) + (bA ? p : 0)) + 1;
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / per_problem), [&](int64_t i0, int64_t i1) {
    std::vector<T> c(n);
    for (int64_t i = i0; i < i1; ++i) {
      c = c_shared;
      T rlo = row_lo_shared, rhi = row_hi_shared;
      if (bG) rows_into(G.data_ptr<T>() + i * m * n, m, c.data(), rlo, rhi);
      if (bA) rows_into(A.data_ptr<T>() + i * p * n, p, c.data(), rlo, rhi);
      row_lo[i] = double(rlo);
      row_hi[i] = double(rhi);
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
  po[3] = row_lo[0];
  po[4] = row_hi[0];
  for (int64_t i = 1; i < B; ++i) {
    po[0] = std::min(po[0], sig[i]);
    po[1] = std::max(po[1], sig[i]);
    po[2] = std::max(po[2], spread[i]);
    po[3] = std::min(po[3], row_lo[i]);
    po[4] = std::max(po[4], row_hi[i]);
  }
  if (!(po[3] < std::numeric_limits<double>::infinity())) po[3] = 0;  // no nonzero row
}

// Value checks of solve_qp's inputs in one pass (the C++ form of problem._check_values):
// returns float64 [nonfinite Q, q, G, h, A, b (0/1 each), max relative asymmetry of Q,
// index of the first Q (in its own batch) whose Cholesky of Q + psd_tol·max(1, max|Q|)·I fails, or −1,
// then the five scale statistics of scale_stats_into] — of canonical data (each field batched or shared).
at::Tensor qp_check_cpu(const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
                        const at::Tensor& A_, const at::Tensor& b_, double psd_tol) {
  std::array<at::Tensor, 6> ins{Q_.contiguous(), q_.contiguous(), G_.contiguous(), h_.contiguous(),
                                A_.contiguous(), b_.contiguous()};
  auto out = at::zeros({13}, at::kDouble);
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

// qp_scale_stats(Q, q, G, A) -> float64 [5]: scale_stats_into of canonical CPU data (what qp_check
// also returns; for solve_qp(check_inputs=False)).
at::Tensor qp_scale_stats_cpu(const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& A_) {
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), A = A_.contiguous();
  auto out = at::zeros({5}, at::kDouble);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "optlayers_qp_scale_stats_cpu",
                             [&] { scale_stats_into<scalar_t>(Q, q, G, A, out.data_ptr<double>()); });
  return out;
}

}  // namespace optlayers_cpu

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
  m.impl("qp_solve", &optlayers_cpu::qp_solve_cpu);
  m.impl("qp_kkt_solve", &optlayers_cpu::qp_kkt_solve_cpu);
  m.impl("qp_backward", &optlayers_cpu::qp_backward_cpu);
  m.impl("qp_check", &optlayers_cpu::qp_check_cpu);
  m.impl("qp_scale_stats", &optlayers_cpu::qp_scale_stats_cpu);
  m.impl("qp_active_set_solve", &optlayers_cpu::qp_active_set_solve_cpu);
}
