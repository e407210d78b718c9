// optlayers native QP kernel, small problems on the GPU: one CUDA thread per problem, the problem's
// reduced matrix in registers. Header-only and torch-free (host + device), like qp_ipm.h.
//
// Why: the thread-group kernels (qp_cuda_kernels.cuh) spread one problem over a warp or a block and
// keep everything in a global-memory workspace; for the robotics sizes (n ≈ 12–16, m ≈ 40–60) their
// loops are too short to use the group, and every step is a chain of synchronizations and global
// loads (H100: ~1.5 ms a problem on its warp, 48,000 grasp QPs in ~50 ms). Here a thread owns a
// problem: the packed n×n matrix K, its Cholesky factor and the n-vectors live in registers (n is a
// compile-time tile NT ∈ {8, 12, 16}; a smaller n is padded with decoupled unit variables, which
// stay exactly zero), and the m-vectors in thread-local arrays, which CUDA interleaves across the
// threads of a warp, so that every access with a common row index is one coalesced transaction.
// Shared data (one Q or G for the batch) is read at one address by all threads (a broadcast).
//
// Scope: inequality-constrained problems (p = 0) with 1 ≤ n ≤ kMaxN and 1 ≤ m ≤ kMaxM. The
// interior point is qp_ipm.h::solve_qp step for step (row scaling, initial point, Mehrotra
// predictor-corrector on K = Q + G̃ᵀWG̃ + δI, regularization retry, early polish attempts, stopping
// and stall rules), the polish is qp_ipm.h::polish's (guess, the multiplier-shifted second try, the
// NNLS multiplier repair, correction rounds, same acceptance test), computed in double precision
// for either storage type; a converged problem whose polish fails keeps its interior-point iterate
// (status SOLVED), as in solve_qp. This kernel finishes what converges: a problem that ends any
// other way (infeasible, unbounded, stalled, iteration limit, failed factorization — unless the
// polish then succeeds) gets status kRetry, and the caller re-solves it from the start with the
// thread-group kernel, so statuses and the hard cases keep their meaning.
// The same holds for the backward solve (kkt): a failed factorization returns false.
//
// Active-set KKT systems (polish, backward) are solved without the k×k Schur complement of the
// range-space method (k, the active rows, can reach m): the regularized system
//   [Q + δI  G_𝒜ᵀ; G_𝒜  −δI] (u_x, u_λ) = (r₁, r₂)   ⇔   (Q + δI + G_𝒜ᵀG_𝒜/δ) u_x = r₁ + G_𝒜ᵀr₂/δ,
//   u_λ = (G_𝒜u_x − r₂)/δ,
// an n×n Cholesky in registers, is the same matrix as qp_ipm.h's compact LU; as there, its solution
// is refined against the exact (δ = 0) matrix, so the result is that of the exact system whenever
// that is nonsingular (double precision: δ ≥ 1e-11 × the data scale keeps the refinement
// contracting).
#pragma once

#include <cstdint>

#include "optlayers/qp_ipm.h"

#if defined(__CUDACC__)
#define OL_UNROLL _Pragma("unroll")
#else
#define OL_UNROLL
#endif

namespace optlayers {
namespace small {

constexpr int kMaxN = 16;
constexpr int kMaxM = 128;
// Status of a problem this kernel leaves to the thread-group kernel.
constexpr int8_t kRetry = -1;

// Instrumentation hooks of the stages (a diagnostic variant of the CUDA kernels, qp_cuda_kernels.cuh's
// ClockProfile, used by benchmarks/gpu_small_variants.py): phase(k) charges the time since the last
// mark to slot k, count(k, v) adds v to slot k. The default does nothing and compiles away.
enum ProfileSlot : int {
  kProfSetup = 0,    // row scales, initial point
  kProfResidual,     // residuals and stopping tests at the top of an iteration
  kProfFactor,       // forming and factoring K
  kProfStep,         // predictor-corrector passes
  kProfPolish,       // polish calls (early and final)
  kProfPolishCalls,  // counts from here on
  kProfProblems,
  kProfIterations,
  kProfTotal,        // whole kernel per thread (cycles)
  kProfFetch,        // fetching the next problem
  kProfSlots
};
struct NoProfile {
  OL_HD OL_INLINE void phase(int) {}
  OL_HD OL_INLINE void count(int, long long = 1) {}
};

OL_HD OL_INLINE bool eligible(int n, int m, int p) { return n >= 1 && n <= kMaxN && m >= 1 && m <= kMaxM && p == 0; }
// The compile-time tile for n.
OL_HD OL_INLINE int tile(int n) { return n <= 8 ? 8 : (n <= 12 ? 12 : 16); }

template <int NT>
struct Tri {
  static constexpr int size = NT * (NT + 1) / 2;
};
// Packed lower triangle, row by row: (i, j ≤ i).
OL_HD OL_INLINE constexpr int tri(int i, int j) { return i * (i + 1) / 2 + j; }

// One problem's data, padded to NT variables: Q_ii = 1, q_i = 0, G_ri = 0 for i ≥ n.
template <typename T>
struct Data {
  const T *Q, *q, *G, *h;
  int n, m;
  OL_HD OL_INLINE T Qv(int i, int j) const {
    return (i < n && j < n) ? Q[int64_t(i) * n + j] : (i == j ? T(1) : T(0));
  }
  OL_HD OL_INLINE T qv(int j) const { return j < n ? q[j] : T(0); }
};

template <typename T, int NT>
OL_HD OL_INLINE void load_row(const Data<T>& d, int r, T (&g)[NT]) {
  OL_UNROLL
  for (int j = 0; j < NT; ++j) g[j] = j < d.n ? d.G[int64_t(r) * d.n + j] : T(0);
}

template <typename U, typename T, int NT>
OL_HD OL_INLINE U dot_row(const T (&g)[NT], const U (&v)[NT]) {
  U acc = 0;
  OL_UNROLL
  for (int j = 0; j < NT; ++j) acc += U(g[j]) * v[j];
  return acc;
}

// K ← Q + δI + Σ_r c_r g_r g_rᵀ (packed lower, arithmetic in U); rows with c_r = 0 are skipped.
template <typename U, typename T, int NT, typename Coef>
OL_HD OL_INLINE void form(const Data<T>& d, const Coef& coef, U delta, U (&K)[Tri<NT>::size]) {
  OL_UNROLL
  for (int i = 0; i < NT; ++i) {
    OL_UNROLL
    for (int j = 0; j <= i; ++j) K[tri(i, j)] = U(d.Qv(i, j)) + (i == j ? delta : U(0));
  }
  // The next row's coefficient is loaded before this row's update: its (thread-local memory)
  // loads then overlap the n(n+1)/2 multiply-adds instead of stalling the next iteration.
  U c = d.m > 0 ? coef(0) : U(0);
  for (int r = 0; r < d.m; ++r) {
    const U c_next = r + 1 < d.m ? coef(r + 1) : U(0);
    if (c != U(0)) {
      T g[NT];
      load_row<T, NT>(d, r, g);
      OL_UNROLL
      for (int i = 0; i < NT; ++i) {
        const U a = c * U(g[i]);
        OL_UNROLL
        for (int j = 0; j <= i; ++j) K[tri(i, j)] += a * U(g[j]);
      }
    }
    c = c_next;
  }
}

// Row scale of G's row r: 1/‖g_r‖ (1 for a zero row), as qp_ipm.h::solve_qp.
template <typename T, int NT>
OL_HD OL_INLINE T row_scale(const Data<T>& d, int r) {
  T g[NT];
  load_row<T, NT>(d, r, g);
  T acc = 0;
  OL_UNROLL
  for (int j = 0; j < NT; ++j) acc += g[j] * g[j];
  return acc > T(0) ? T(1) / ol_sqrt(acc) : T(1);
}

// In-place Cholesky K = LLᵀ (packed lower). False if a pivot is not positive (the same test as
// qp_ipm.h::cholesky); branch-free, so it unrolls completely.
template <typename U, int NT>
OL_HD OL_INLINE bool chol(U (&K)[Tri<NT>::size]) {
  bool ok = true;
  OL_UNROLL
  for (int j = 0; j < NT; ++j) {
    U dj = K[tri(j, j)];
    OL_UNROLL
    for (int k = 0; k < j; ++k) dj -= K[tri(j, k)] * K[tri(j, k)];
    ok = ok && (dj > U(0));
    const U l = ol_sqrt(dj > U(0) ? dj : U(1));
    const U inv = U(1) / l;
    K[tri(j, j)] = inv;  // the inverse diagonal: the solves multiply
    OL_UNROLL
    for (int i = j + 1; i < NT; ++i) {
      U v = K[tri(i, j)];
      OL_UNROLL
      for (int k = 0; k < j; ++k) v -= K[tri(i, k)] * K[tri(j, k)];
      K[tri(i, j)] = v * inv;
    }
  }
  return ok;
}

// r ← (LLᵀ)⁻¹ r for the factor of chol (inverse diagonal).
template <typename U, int NT>
OL_HD OL_INLINE void chol_solve(const U (&L)[Tri<NT>::size], U (&r)[NT]) {
  OL_UNROLL
  for (int i = 0; i < NT; ++i) {
    U v = r[i];
    OL_UNROLL
    for (int k = 0; k < i; ++k) v -= L[tri(i, k)] * r[k];
    r[i] = v * L[tri(i, i)];
  }
  OL_UNROLL
  for (int i = NT - 1; i >= 0; --i) {
    U v = r[i];
    OL_UNROLL
    for (int k = i + 1; k < NT; ++k) v -= L[tri(k, i)] * r[k];
    r[i] = v * L[tri(i, i)];
  }
}

// Factor K (formed with coefficients `coef`), growing the shift once on failure as
// qp_ipm.h::factor_reduced does.
template <typename T, int NT, typename Coef>
OL_HD OL_INLINE bool factor(const Data<T>& d, const Coef& coef, T delta, T (&K)[Tri<NT>::size]) {
  form<T, T, NT>(d, coef, delta, K);
  if (chol<T, NT>(K)) return true;
  form<T, T, NT>(d, coef, delta, K);
  T mx = 0;
  OL_UNROLL
  for (int i = 0; i < NT; ++i)
    if (i < d.n) mx = ol_max(mx, K[tri(i, i)]);
  const T extra = retry_shift(delta, mx) - delta;
  OL_UNROLL
  for (int i = 0; i < NT; ++i) K[tri(i, i)] += extra;
  return chol<T, NT>(K);
}

// Per-thread arrays over the m rows (thread-local memory on the GPU).
// The interior point keeps only s and z per row (see predictor_corrector), plus the row scales and
// h̃ when they are not shared by the batch.
template <typename T>
struct Rows {
  T s[kMaxM], z[kMaxM], gs_own[kMaxM], hs_own[kMaxM];
  double ul[kMaxM], e2[kMaxM];  // KKT solves: u_λ and the residual's λ part (active rows)
  uint8_t act[kMaxM];           // active-set guess
  uint8_t neg0[kMaxM];          // polish: active rows with a negative unshifted multiplier
  uint8_t pas[kMaxM];           // multiplier repair: the Lawson–Hanson passive set
  double ux0[kMaxN];            // polish → repair: attempt 0's x
  double repair_tol;            // polish → repair: the stationarity tolerance
  const T* gs;  // row scales 1/‖g_r‖: gs_own, or one copy for the batch when G is shared
  const T* hs;  // scaled h̃ = h ∘ gs: hs_own, or one copy when G and h are shared
};

// ------------------------------------------------------------------------------------------------
// Active-set KKT solves in double precision (see the header comment).

template <typename T, int NT>
struct KKT {
  double M[Tri<NT>::size];  // Cholesky factor of Q + δI + G_𝒜ᵀG_𝒜/δ
  double delta;
};

template <typename T, int NT>
OL_HD OL_INLINE bool kkt_factor(const Data<T>& d, const uint8_t* act, double delta, KKT<T, NT>& f) {
  f.delta = delta;
  const double inv = 1.0 / delta;
  form<double, T, NT>(d, [&](int r) { return act[r] ? inv : 0.0; }, delta, f.M);
  return chol<double, NT>(f.M);
}

// (u_x, u_λ) ← K_δ⁻¹ (r₁, r₂) over the active rows; r₂ in e2 (read only).
template <typename T, int NT>
OL_HD OL_INLINE void kkt_apply(const Data<T>& d, const uint8_t* act, const KKT<T, NT>& f, const double (&r1)[NT],
                               const double* r2, double (&ux)[NT], double* ul) {
  const double inv = 1.0 / f.delta;
  OL_UNROLL
  for (int j = 0; j < NT; ++j) ux[j] = r1[j];
  for (int r = 0; r < d.m; ++r) {
    if (!act[r]) continue;
    T g[NT];
    load_row<T, NT>(d, r, g);
    const double c = r2[r] * inv;
    OL_UNROLL
    for (int j = 0; j < NT; ++j) ux[j] += c * double(g[j]);
  }
  chol_solve<double, NT>(f.M, ux);
  for (int r = 0; r < d.m; ++r) {
    if (!act[r]) continue;
    T g[NT];
    load_row<T, NT>(d, r, g);
    ul[r] = (dot_row<double, T, NT>(g, ux) - r2[r]) * inv;
  }
}

// out = Q v in double precision (padded Q).
template <typename T, int NT>
OL_HD OL_INLINE void q_times(const Data<T>& d, const double (&v)[NT], double (&out)[NT]) {
  OL_UNROLL
  for (int i = 0; i < NT; ++i) {
    double acc = 0;
    OL_UNROLL
    for (int j = 0; j < NT; ++j) acc += double(d.Qv(i, j)) * v[j];
    out[i] = acc;
  }
}

// Solve the exact active-set KKT system K (u_x, u_λ) = (b₁, b₂) (b₂_r = b2(r) on active rows):
// a first solve with right-hand side (b₁, b₂ − shift) (shift(r): the polish's δλ̂, else 0), then up
// to kRefinementSteps corrections against (b₁, b₂) with the exact matrix, stopping at round-off.
// rows.e2 is scratch. Returns whether the refinement converged (its last correction at the
// rounding floor of the solve, ≤ 1e4 ε‖u‖): it does not when δ‖K⁻¹‖ ≳ 1 — K ill conditioned on
// the null space of the active rows, where Q + δI + G_𝒜ᵀG_𝒜/δ is too ill conditioned itself (a
// scaled Q of cond 1e7: the JVP came out 2.2× off, found by fuzzing the conic layer's qp route).
template <typename T, int NT, typename B2, typename Shift>
OL_HD OL_INLINE bool kkt_refined(const Data<T>& d, const KKT<T, NT>& f, const double (&b1)[NT], const B2& b2,
                                 const Shift& shift, Rows<T>& rows, double (&ux)[NT]) {
  const uint8_t* act = rows.act;
  for (int r = 0; r < d.m; ++r) rows.e2[r] = act[r] ? b2(r) - shift(r) : 0.0;
  kkt_apply<T, NT>(d, act, f, b1, rows.e2, ux, rows.ul);
  for (int step = 0; step < kRefinementSteps; ++step) {
    // e = b − K u (exact K), then u += K_δ⁻¹ e.
    double e1[NT];
    q_times<T, NT>(d, ux, e1);
    OL_UNROLL
    for (int i = 0; i < NT; ++i) e1[i] = b1[i] - e1[i];
    for (int r = 0; r < d.m; ++r) {
      if (!act[r]) continue;
      T g[NT];
      load_row<T, NT>(d, r, g);
      const double l = rows.ul[r];
      OL_UNROLL
      for (int j = 0; j < NT; ++j) e1[j] -= l * double(g[j]);
      rows.e2[r] = b2(r) - dot_row<double, T, NT>(g, ux);
    }
    // Padded variables are decoupled (Q_ii = 1, no G): their exact rows read u_i = b₁_i = 0.
    double dx[NT];
    kkt_apply<T, NT>(d, act, f, e1, rows.e2, dx, rows.e2);  // du_λ overwrites e2 row by row after use
    double dn = 0, un = 0;
    OL_UNROLL
    for (int j = 0; j < NT; ++j) {
      ux[j] += dx[j];
      dn = ol_max(dn, ol_abs(dx[j]));
      un = ol_max(un, ol_abs(ux[j]));
    }
    for (int r = 0; r < d.m; ++r) {
      if (!act[r]) continue;
      rows.ul[r] += rows.e2[r];
      dn = ol_max(dn, ol_abs(rows.e2[r]));
      un = ol_max(un, ol_abs(rows.ul[r]));
    }
    if (dn <= 2.3e-16 * un) return true;
    if (step + 1 == kRefinementSteps) return dn <= 1e4 * 2.3e-16 * un;
  }
  return true;  // (kRefinementSteps = 0)
}

// max(1, |Q|, |G|) entrywise: qp_ipm.h::data_scale on this problem (exact in either precision).
template <typename T>
OL_HD OL_INLINE double data_scale(const Data<T>& d) {
  return double(optlayers::data_scale(SerialGroup{}, Problem<T>{d.Q, d.q, d.G, d.h, nullptr, nullptr, d.n, d.m, 0}));
}

// Multiplier repair (qp_ipm.h::repair_multipliers with p = 0, in double precision). At a degenerate
// solution the active rows can be linearly dependent (a grasp contact with zero force: its friction
// facets and normal bound all active on 3 variables); the active-set system then fixes x but not
// the multipliers, and both of the polish's solves may give some of them a negative sign although a
// nonnegative choice exists. Given the polished x, Lawson–Hanson NNLS finds λ_𝒜 ≥ 0 minimizing
// ‖Qx + q + G_𝒜ᵀλ‖; true, with λ in rows.e2 (active rows; free once the solves are done), when that
// stationarity residual is ≤ tol. Lawson–Hanson keeps the passive rows linearly independent, so
// there are at most n of them: their Gram matrix is factored in an NT×NT packed buffer (unused
// slots an identity); more than NT passive rows, or a Gram matrix that is not positive definite,
// fail as the serial Cholesky does. x_in: NT values. Not inlined on the GPU (a rare path: keep it
// out of the polish's register allocation).
template <typename T, int NT>
OL_HD OL_NOINLINE bool repair(const Data<T>& d, const double* x_in, double tol, Rows<T>& rows) {
  const int m = d.m;
  const uint8_t* act = rows.act;
  double* y = rows.e2;
  uint8_t* pas = rows.pas;
  double x[NT], gq[NT];  // gq: g = Qx + q, fixed during the repair
  OL_UNROLL
  for (int j = 0; j < NT; ++j) x[j] = x_in[j];
  q_times<T, NT>(d, x, gq);
  double gn = 0;
  int k = 0;
  OL_UNROLL
  for (int j = 0; j < NT; ++j) {
    gq[j] += double(d.qv(j));
    gn = ol_max(gn, ol_abs(gq[j]));
  }
  for (int r = 0; r < m; ++r) {
    y[r] = 0;
    pas[r] = 0;
    k += act[r];
  }
  int idx[NT];
  double sol[NT];  // the passive rows' least-squares multipliers, in idx order
  int np = 0;
  // Least squares on the passive set: (G_P G_Pᵀ) s = −G_P g by Cholesky; false if singular.
  auto solve_passive = [&]() {
    np = 0;
    for (int r = 0; r < m && np <= NT; ++r)
      if (pas[r]) {
        if (np < NT) idx[np] = r;
        ++np;
      }
    if (np > NT) return false;
    double gram[Tri<NT>::size];
    OL_UNROLL
    for (int a = 0; a < NT; ++a) {
      sol[a] = 0;
      OL_UNROLL
      for (int b = 0; b <= a; ++b) gram[tri(a, b)] = a == b ? 1.0 : 0.0;
    }
    for (int a = 0; a < np; ++a) {
      T ga[NT];
      load_row<T, NT>(d, idx[a], ga);
      double gad[NT];
      OL_UNROLL
      for (int j = 0; j < NT; ++j) gad[j] = double(ga[j]);
      sol[a] = -dot_row<double, double, NT>(gad, gq);
      for (int b = 0; b <= a; ++b) {
        T gb[NT];
        load_row<T, NT>(d, idx[b], gb);
        gram[tri(a, b)] = dot_row<double, T, NT>(gb, gad);
      }
    }
    if (!chol<double, NT>(gram)) return false;
    chol_solve<double, NT>(gram, sol);
    return true;
  };
  const double wtol = tol * (1 + gn) * 1e-3;
  double res[NT];
  auto residual = [&]() {
    OL_UNROLL
    for (int j = 0; j < NT; ++j) res[j] = gq[j];
    for (int r = 0; r < m; ++r) {
      if (y[r] == 0.0) continue;
      T g[NT];
      load_row<T, NT>(d, r, g);
      OL_UNROLL
      for (int j = 0; j < NT; ++j) res[j] += y[r] * double(g[j]);
    }
  };
  for (int outer = 0; outer < 3 * k; ++outer) {
    residual();
    int t = -1;
    double best = wtol;
    for (int r = 0; r < m; ++r) {
      if (!act[r] || pas[r]) continue;
      T g[NT];
      load_row<T, NT>(d, r, g);
      const double wr = -dot_row<double, T, NT>(g, res);
      if (wr > best) {
        best = wr;
        t = r;
      }
    }
    if (t < 0) break;
    pas[t] = 1;
    for (int inner = 0; inner <= k; ++inner) {
      if (!solve_passive()) return false;
      bool feasible = true;
      double alpha = 1;
      for (int a = 0; a < np; ++a)
        if (!(sol[a] > 0.0)) {
          feasible = false;
          const double den = y[idx[a]] - sol[a];
          if (den > 0.0) alpha = ol_min(alpha, y[idx[a]] / den);
        }
      if (feasible) {
        for (int a = 0; a < np; ++a) y[idx[a]] = sol[a];
        break;
      }
      for (int a = 0; a < np; ++a) {
        const int r = idx[a];
        y[r] += alpha * (sol[a] - y[r]);
        if (!(y[r] > 0.0)) {
          pas[r] = 0;
          y[r] = 0;
        }
      }
    }
  }
  residual();
  double rn = 0;
  OL_UNROLL
  for (int j = 0; j < NT; ++j) rn = ol_max(rn, ol_abs(res[j]));
  return rn <= tol;
}

// The polish (qp_ipm.h::polish): guess 𝒜 = {λ_r > h_r − G_r x}, solve, accept if primal feasible
// with nonnegative multipliers and a KKT residual ≤ polish_tol; a solution failing only the sign
// test is solved once more with the right-hand side h_𝒜 − δλ̂, and if that fails too the multiplier
// repair (NNLS, `repair`) looks for nonnegative multipliers at its x; otherwise correct the guess
// (violated rows join, negative multipliers leave) for `rounds` rounds.
// lam_hat(r) gives the interior point's multiplier λ̂_r; delta = kkt_reg · data_scale (computed once
// per problem by the caller: a problem may be polished several times). On acceptance writes x (n)
// and λ (m).
//
// In two functions, so that the repair is called from `polish` (inlined into its caller) and not
// from inside the rounds: on the GPU a call from polish_rounds (itself not inlined) made ptxas spill
// 432 instead of 68 bytes in the fused float kernel at tile 16 (ptxas -v, CUDA 13, sm_90).

enum PolishResult : int { kPolishFailed = 0, kPolishAccepted = 1, kPolishRepair = 2 };

// Rounds [*round, rounds) of the polish. *round = 0: the guess from x and λ̂ first; *round > 0:
// resume after a repair that failed at round *round − 1 (that round's correction first, from
// rows.ux0 and rows.neg0). Returns kPolishAccepted (x_out, lam_out written), kPolishFailed, or
// kPolishRepair with *round = the round whose shifted solve failed the sign test too (its attempt 0's
// x in rows.ux0, the repair's tolerance in rows.repair_tol). Not inlined on the GPU: its
// double-precision factor would otherwise share the register allocation of the interior point's
// loop, and push K out of registers. kGuess: λ̂ is ±∞ (polish_guess: the warm start's guessed active
// set), so the multiplier-shifted solve would repeat the first one exactly, and is skipped.
template <typename T, int NT, typename LamHat, bool kGuess>
OL_HD OL_NOINLINE int polish_rounds(const Data<T>& d, const Settings<T>& set, double delta, const T (&x)[NT],
                                    const LamHat& lam_hat, Rows<T>& rows, int rounds, int* round, T* x_out,
                                    T* lam_out) {
  const int m = d.m;
  const double ptol = double(set.polish_tol);
  double hn = 0;
  for (int r = 0; r < m; ++r) hn = ol_max(hn, double(ol_abs(d.h[r])));
  // Correct the guess with an unshifted solution (x, and the multipliers' signs: attempt 0's in
  // rows.neg0 when `shifted`, else rows.ul): violated inactive rows join if the interior point's
  // iterate ranks them within kJoinRatio of the likeliest (ρ = λ̂⁺ / max(ŝ, tol(1 + ‖h‖)), as
  // qp_ipm.h::polish; two passes that recompute the rows' products rather than keep ρ per row —
  // a rare path), active rows with negative multipliers leave.
  const double floor_s = ptol * (1 + hn);
  auto rho_if_violated = [&](int r, const double (&ux)[NT], const double (&xd)[NT]) {
    T g[NT];
    load_row<T, NT>(d, r, g);
    if (!(dot_row<double, T, NT>(g, ux) - double(d.h[r]) > floor_s)) return -1.0;  // not violated
    const double l = double(lam_hat(r));
    const double rho = (l > 0 ? l : 0.0) / ol_max(double(d.h[r]) - dot_row<double, T, NT>(g, xd), floor_s);
    return rho == rho ? rho : ol_inf<double>();  // NaN λ̂: unranked, like +∞
  };
  auto correct = [&](const double (&ux)[NT], bool shifted) {
    double xd[NT];
    OL_UNROLL
    for (int j = 0; j < NT; ++j) xd[j] = double(x[j]);
    double best = 0;
    bool unranked = false;
    for (int r = 0; r < m; ++r) {
      if (rows.act[r]) continue;
      const double rho = rho_if_violated(r, ux, xd);
      if (rho < ol_inf<double>()) best = ol_max(best, rho);
      else unranked = true;  // +∞ (or a NaN λ̂)
    }
    const bool ranked = !unranked && best > 0;
    for (int r = 0; r < m; ++r) {
      if (rows.act[r]) {
        if (shifted ? rows.neg0[r] != 0 : rows.ul[r] < 0) rows.act[r] = 0;
      } else {
        const double rho = rho_if_violated(r, ux, xd);
        if (rho >= 0 && (!ranked || rho >= kJoinRatio * best)) rows.act[r] = 1;
      }
    }
  };
  if (*round == 0) {
    double xd[NT];
    OL_UNROLL
    for (int j = 0; j < NT; ++j) xd[j] = double(x[j]);
    for (int r = 0; r < m; ++r) {
      T g[NT];
      load_row<T, NT>(d, r, g);
      rows.act[r] = double(lam_hat(r)) > double(d.h[r]) - dot_row<double, T, NT>(g, xd) ? 1 : 0;
    }
  } else {
    double ux0[NT];
    OL_UNROLL
    for (int j = 0; j < NT; ++j) ux0[j] = rows.ux0[j];
    correct(ux0, true);
  }
  double b1[NT];
  OL_UNROLL
  for (int j = 0; j < NT; ++j) b1[j] = -double(d.qv(j));
  auto b2 = [&](int r) { return double(d.h[r]); };
  auto no_shift = [&](int) { return 0.0; };
  auto shift = [&](int r) {
    const double l = double(lam_hat(r));
    return ol_abs(l) < ol_inf<double>() ? delta * l : 0.0;
  };
  KKT<T, NT> f;
  for (int rnd = *round; rnd < rounds; ++rnd) {
    if (!kkt_factor<T, NT>(d, rows.act, delta, f)) return kPolishFailed;
    double ux[NT], ux0[NT];
    double rhs_n = 0;
    bool accept = false, shifted = false;
    // qp_ipm.h::polish makes a third attempt, unshifted again, for its multiplier repair and the
    // correction below; here both use attempt 0's solution (same system, same right-hand side):
    // it is kept (x and the multipliers' signs) instead of solved twice.
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (attempt == 1) {
        OL_UNROLL
        for (int j = 0; j < NT; ++j) ux0[j] = ux[j];
        for (int r = 0; r < m; ++r) rows.neg0[r] = rows.act[r] && rows.ul[r] < 0 ? 1 : 0;
        shifted = true;
        if (kGuess) break;  // (ux = ux0: the correction reads either)
        kkt_refined<T, NT>(d, f, b1, b2, shift, rows, ux);
      } else {
        kkt_refined<T, NT>(d, f, b1, b2, no_shift, rows, ux);
      }
      // Tests: the exact KKT residual, finiteness, primal feasibility of every row, multiplier signs.
      double rx[NT];
      q_times<T, NT>(d, ux, rx);
      double res = 0, viol = 0, neg = 0, ln = 0;
      rhs_n = 0;
      bool finite = true;
      for (int r = 0; r < m; ++r) {
        T g[NT];
        load_row<T, NT>(d, r, g);
        const double gx = dot_row<double, T, NT>(g, ux);
        viol = ol_max(viol, gx - double(d.h[r]));
        if (!rows.act[r]) continue;
        const double l = rows.ul[r];
        OL_UNROLL
        for (int j = 0; j < NT; ++j) rx[j] += l * double(g[j]);
        res = ol_max(res, ol_abs(gx - double(d.h[r])));
        rhs_n = ol_max(rhs_n, ol_abs(double(d.h[r])));
        neg = ol_max(neg, -l);
        ln = ol_max(ln, ol_abs(l));
        finite = finite && (l == l) && ol_abs(l) < ol_inf<double>();
      }
      OL_UNROLL
      for (int j = 0; j < NT; ++j) {
        res = ol_max(res, ol_abs(rx[j] - b1[j]));
        rhs_n = ol_max(rhs_n, ol_abs(b1[j]));
        finite = finite && (ux[j] == ux[j]) && ol_abs(ux[j]) < ol_inf<double>();
      }
      const bool primal_ok = finite && viol <= ptol * (1 + hn) && res <= ptol * (1 + rhs_n);
      accept = primal_ok && neg <= ptol * (1 + ln);
      if (accept || (attempt == 0 && !primal_ok)) break;
    }
    if (accept) {
      OL_UNROLL
      for (int j = 0; j < NT; ++j)
        if (j < d.n) x_out[j] = T(ux[j]);
      for (int r = 0; r < m; ++r) lam_out[r] = rows.act[r] ? T(ol_max(rows.ul[r], 0.0)) : T(0);
      return kPolishAccepted;
    }
    if (shifted) {
      // Right x, wrong-signed multipliers after both solves (attempt 0 was primal feasible, or there
      // would have been no shifted one): the caller looks for nonnegative multipliers at attempt 0's
      // x, as qp_ipm.h::polish does with its third, unshifted solve (the same solution).
      OL_UNROLL
      for (int j = 0; j < NT; ++j) rows.ux0[j] = ux0[j];
      rows.repair_tol = ptol * (1 + rhs_n);
      *round = rnd;
      return kPolishRepair;
    }
    correct(ux, false);
  }
  return kPolishFailed;
}

// The polish: its rounds, and the multiplier repair where a round asks for it (a failed repair
// resumes the rounds with that round's correction). True with x (n) and λ (m) written on acceptance.
template <typename T, int NT, typename LamHat, bool kGuess = false>
OL_HD OL_INLINE bool polish(const Data<T>& d, const Settings<T>& set, double delta, const T (&x)[NT],
                            const LamHat& lam_hat, Rows<T>& rows, int rounds, T* x_out, T* lam_out) {
  int round = 0;
  for (;;) {
    const int r = polish_rounds<T, NT, LamHat, kGuess>(d, set, delta, x, lam_hat, rows, rounds, &round, x_out,
                                                       lam_out);
    if (r != kPolishRepair) return r == kPolishAccepted;
    if (repair<T, NT>(d, rows.ux0, rows.repair_tol, rows)) {
      for (int j = 0; j < d.n; ++j) x_out[j] = T(rows.ux0[j]);
      for (int r2 = 0; r2 < d.m; ++r2) lam_out[r2] = rows.act[r2] ? T(ol_max(rows.e2[r2], 0.0)) : T(0);
      return true;
    }
    if (++round >= rounds) return false;
  }
}

// The warm start's guess (csrc/qp_cpu_derivatives.cpp::qp_active_set_solve and its CUDA kernel): the polish of
// the guessed active set {r : guess_r ≠ 0} (m values), started from x = 0 with λ̂_r = ±∞ so that its
// guess λ̂_r > h_r − g_rᵀx is exactly the given one; `rounds` rounds (the given set and rounds − 1
// corrections). True with x (n) and λ (m) written where a round is accepted.
template <typename T, int NT>
OL_HD OL_INLINE bool polish_guess(const Data<T>& d, const Settings<T>& set, const T* guess, Rows<T>& rows, int rounds,
                                  T* x_out, T* lam_out) {
  const double delta = double(set.kkt_reg) * data_scale<T>(d);  // the polish's δ, as polish_stage's
  const T x0[NT] = {};
  auto lam_hat = [&](int r) { return guess[r] != T(0) ? ol_inf<T>() : -ol_inf<T>(); };
  return polish<T, NT, decltype(lam_hat), true>(d, set, delta, x0, lam_hat, rows, rounds, x_out, lam_out);
}

// ------------------------------------------------------------------------------------------------
// The interior point (qp_ipm.h::solve_qp with p = 0).

// The predictor-corrector step with nothing stored per row but s and z: every pass over the rows
// recomputes what it needs of r_p = G̃x + s − h̃, the predictor's (Δsₐ, Δzₐ) and the corrector's
// (Δs, Δz) from x, Δxₐ, Δx (registers) with one dot product of the row each (n multiply-adds).
// Why: on the GPU a thread's row arrays live in local memory, and with ~256 threads an SM (each
// holds K in up to 255 registers) eight such arrays of m ≈ 40 rows are ~700 KB an SM, beyond L1;
// s and z alone fit. Measured on an H100 this changed little (48,000 grasp-sized QPs, float64, fwd
// 5.54 → 5.43 ms; 100,000 n=16 float32 16.4 → 17.6 ms: benchmarks/results/gpu_h100_small.txt), so
// local memory was not what limits the kernel; it stays for its smaller footprint. The recomputed
// values are the same expressions as stored ones would be, bit for bit.
template <typename T, int NT>
struct RowTerms {
  T s, z, w, rp;  // iterate, w = z/s, r_p = G̃x + s − h̃
  T ta, dsa, dza;  // predictor: G̃Δxₐ, Δsₐ = −r_p − G̃Δxₐ, Δzₐ = w(G̃Δxₐ + r_p) − (s∘z)/s
};

template <typename T, int NT>
OL_HD OL_INLINE RowTerms<T, NT> row_terms(const Rows<T>& rows, int r, const T (&g)[NT], const T (&x)[NT],
                                          const T* dxa) {
  RowTerms<T, NT> t;
  t.s = rows.s[r];
  t.z = rows.z[r];
  t.w = t.z / t.s;
  const T gsr = rows.gs[r];
  t.rp = gsr * dot_row<T, T, NT>(g, x) + t.s - rows.hs[r];
  if (dxa != nullptr) {
    T acc = 0;
    OL_UNROLL
    for (int j = 0; j < NT; ++j) acc += g[j] * dxa[j];
    t.ta = gsr * acc;
    t.dsa = -t.rp - t.ta;
    t.dza = t.w * (t.ta + t.rp) - t.s * t.z / t.s;  // r_c/s with r_c = s∘z, rounded as the serial path
  }
  return t;
}

// One step of the interior point from the iterate (x, s, z) with residual rd and factor K:
// predictor, σ = (μ_aff/μ)³, corrector, step to the boundary; updates x, s, z in place.
template <typename T, int NT>
OL_HD OL_INLINE void predictor_corrector(const Data<T>& d, const Settings<T>& set, const T (&K)[Tri<NT>::size],
                                         const T (&rd)[NT], T mu, T sz, Rows<T>& rows, T (&x)[NT]) {
  const int m = d.m;
  T dxa[NT], dx[NT];
  // One pass over the rows: each row's g_r and RowTerms (with the predictor's terms once Δxₐ exists).
  auto pass = [&](bool with_dxa, auto&& body) {
    for (int r = 0; r < m; ++r) {
      T g[NT];
      load_row<T, NT>(d, r, g);
      body(r, g, row_terms<T, NT>(rows, r, g, x, with_dxa ? dxa : nullptr));
    }
  };
  // Predictor (r_c = s∘z, r_c/s = z): Δxₐ = K⁻¹(−r_d − G̃ᵀ(z − W r_p)).
  OL_UNROLL
  for (int j = 0; j < NT; ++j) dxa[j] = -rd[j];
  pass(false, [&](int r, const T (&g)[NT], const RowTerms<T, NT>& t) {
    const T c = (t.s * t.z / t.s - t.w * t.rp) * rows.gs[r];
    OL_UNROLL
    for (int j = 0; j < NT; ++j) dxa[j] += c * g[j];
  });
  chol_solve<T, NT>(K, dxa);
  // Its step length and μ_aff = Σ(s + αΔsₐ)(z + αΔzₐ)/m = (sᵀz + αΣ(sΔzₐ + zΔsₐ) + α²ΣΔsₐΔzₐ)/m.
  T as = ol_inf<T>(), az = ol_inf<T>(), s1 = 0, s2 = 0;
  pass(true, [&](int, const T (&)[NT], const RowTerms<T, NT>& t) {
    if (t.dsa < T(0)) as = ol_min(as, -t.s / t.dsa);
    if (t.dza < T(0)) az = ol_min(az, -t.z / t.dza);
    s1 += t.s * t.dza + t.z * t.dsa;
    s2 += t.dsa * t.dza;
  });
  const T aa = ol_min(T(1), ol_min(as, az));
  const T mu_aff = (sz + aa * s1 + aa * aa * s2) / T(m);
  T ratio = mu_aff / mu;
  ratio = ol_min(ol_max(ratio, T(0)), T(1));
  const T sigma_mu = ratio * ratio * ratio * mu;
  // Corrector: r_c = s∘z + Δsₐ∘Δzₐ − σμ, Δx = K⁻¹(−r_d − G̃ᵀ(W r_p − r_c/s)).
  OL_UNROLL
  for (int j = 0; j < NT; ++j) dx[j] = -rd[j];
  pass(true, [&](int r, const T (&g)[NT], const RowTerms<T, NT>& t) {
    const T rc = t.s * t.z + t.dsa * t.dza - sigma_mu;
    const T c = (rc / t.s - t.w * t.rp) * rows.gs[r];
    OL_UNROLL
    for (int j = 0; j < NT; ++j) dx[j] += c * g[j];
  });
  chol_solve<T, NT>(K, dx);
  // Δs = −r_p − G̃Δx, Δz = W(G̃Δx + r_p) − r_c/s; the step length, then the update (the rows first:
  // they recompute r_p from the old x).
  auto step = [&](int r, const T (&g)[NT], const RowTerms<T, NT>& t, T& ds, T& dz) {
    T acc = 0;
    OL_UNROLL
    for (int j = 0; j < NT; ++j) acc += g[j] * dx[j];
    const T td = rows.gs[r] * acc;
    const T rc = t.s * t.z + t.dsa * t.dza - sigma_mu;
    dz = t.w * (td + t.rp) - rc / t.s;
    ds = -t.rp - td;
  };
  as = ol_inf<T>();
  az = ol_inf<T>();
  pass(true, [&](int r, const T (&g)[NT], const RowTerms<T, NT>& t) {
    T ds, dz;
    step(r, g, t, ds, dz);
    if (ds < T(0)) as = ol_min(as, -t.s / ds);
    if (dz < T(0)) az = ol_min(az, -t.z / dz);
  });
  const T alpha = ol_min(T(1), set.step_to_boundary * ol_min(as, az));
  pass(true, [&](int r, const T (&g)[NT], const RowTerms<T, NT>& t) {
    T ds, dz;
    step(r, g, t, ds, dz);
    rows.s[r] = t.s + alpha * ds;
    rows.z[r] = t.z + alpha * dz;
  });
  OL_UNROLL
  for (int j = 0; j < NT; ++j) x[j] += alpha * dx[j];
}

// ------------------------------------------------------------------------------------------------
// The solve in stages: the interior point runs until a problem wants a polish (ipm_stage), the
// polish is its own stage (polish_stage), and a problem whose early polish fails resumes the
// interior point from its saved iterate. solve() chains the stages in one thread (the CUDA
// default, "fused"); the CUDA binding can also launch them as separate kernels over the batch
// ("staged", qp_cuda.h), and the host emulation runs them batch by batch; all three do the same
// arithmetic in the same order, so they agree bit for bit up to the compiler's contraction of
// multiply-adds, which may differ between two inlined copies (on the H200 the CUDA schedules
// agreed bit for bit; on the host float64 agrees bit for bit and float32 degenerate QPs can end
// differently: tests/native/test_native_small.py::test_small_fused_schedule_equals_staged).
// Why stages: on the GPU the lanes of a warp hold different problems, and the polish (a long
// double-precision path) used to be called from inside the interior point's loop: on an H200 the
// real grasp QPs of examples/grasp_model.py (1.7 polish calls a problem) ran with 6 of 32 lanes
// active on average (Nsight Compute) and took 37.9 ms for 48,000 of them, 6.5 ms with the polish
// off. With the polish out of the loop they take 17.9 ms (fused) or 17.8 (staged), and the staged
// interior-point kernel runs 25 of 32 lanes active; the polish stage itself (7.6 lanes active,
// per-lane active sets, rounds and attempts) is now the larger half of the time
// (benchmarks/results/gpu_h200_small.txt).

// Where a problem stands between stages.
enum Stage : int8_t {
  kStageStart = 0,         // not started
  kStageEarlyPolish = 1,   // interior point stopped at an early-polish point (resumes if it fails)
  kStageFinalPolish = 2,   // converged, stalled, at the iteration limit or after a failed factorization
  kStageResume = 3,        // the early polish failed: continue the interior point
  kStageDone = 4,          // status and outputs written
};

// Rounds of (interior point, polish) stages a batch runs at most: a problem polishes early at most
// once per threshold polish_start, polish_start·1e-3, … above tol (with the defaults 3 in float64,
// 1 in float32), so 4 rounds finish every problem; beyond kMaxRounds a problem is left to the
// thread-group kernel.
constexpr int kMaxRounds = 16;

// A problem's saved iterate between stages: scalars (T) and integers per problem, laid out
// [s (m), z (m), x (kMaxN slots), loose, best, best_sz, best_cert, best_res] and [it, stall, converged].
OL_HD OL_INLINE int64_t saved_scalars(int m) { return 2 * int64_t(m) + kMaxN + 5; }
constexpr int kSavedInts = 3;

template <typename T>
struct Saved {
  T* v;
  int32_t* k;
};
// Scratch for one problem's saved iterate where the stages run back to back (host, fused kernel).
template <typename T>
struct SavedBuf {
  T v[2 * kMaxM + kMaxN + 5];
  int32_t k[kSavedInts];
  OL_HD OL_INLINE Saved<T> view() { return Saved<T>{v, k}; }
};

// Row scales gs = 1/‖g_r‖ and h̃ = h ∘ gs into `rows`: pointers to the batch's one copy where G
// (and h) are shared, else computed into the problem's own arrays.
template <typename T, int NT>
OL_HD OL_INLINE void bind_row_scales(const Data<T>& d, Rows<T>& rows, const T* gs_shared, const T* hs_shared) {
  rows.gs = gs_shared != nullptr ? gs_shared : rows.gs_own;
  rows.hs = hs_shared != nullptr ? hs_shared : rows.hs_own;
  if (gs_shared != nullptr && hs_shared != nullptr) return;
  for (int r = 0; r < d.m; ++r) {
    const T sc = gs_shared != nullptr ? gs_shared[r] : row_scale<T, NT>(d, r);
    if (gs_shared == nullptr) rows.gs_own[r] = sc;
    if (hs_shared == nullptr) rows.hs_own[r] = d.h[r] * sc;
  }
}

// max(1, |Q|, |G̃|) entrywise with the bound row scales (the interior point's δ = kkt_reg × this).
template <typename T, int NT>
OL_HD OL_INLINE T scaled_data_scale(const Data<T>& d, const Rows<T>& rows) {
  T scale = 1;
  for (int64_t i = 0; i < int64_t(d.n) * d.n; ++i) scale = ol_max(scale, ol_abs(d.Q[i]));
  for (int r = 0; r < d.m; ++r) {
    const T sc = rows.gs[r];
    T g[NT];
    load_row<T, NT>(d, r, g);
    OL_UNROLL
    for (int j = 0; j < NT; ++j) scale = ol_max(scale, ol_abs(g[j] * sc));
  }
  return scale;
}

// The interior-point stage of one problem (qp_ipm.h::solve_qp with p = 0): from the start
// (*stage == kStageStart) or from the iterate saved when its early polish failed (kStageResume),
// until it converges, stops, or wants a polish. Sets *stage to kStageEarlyPolish or
// kStageFinalPolish (iterate saved in `sv` for polish_stage), or kStageDone with *status (kRetry:
// left to the thread-group kernel; or, without the polish, kSolved with x and λ written).
// prof receives the phase marks (NoProfile: none).
template <typename T, int NT, typename Prof>
OL_HD void ipm_stage(const Data<T>& d, const Settings<T>& set, Rows<T>& rows, const T* gs_shared, const T* hs_shared,
                     Saved<T> sv, int8_t* stage, T* x_out, T* lam_out, int8_t* status, int32_t* iters, Prof& prof) {
  const int n = d.n, m = d.m;
  T* s = rows.s;
  T* z = rows.z;
  bind_row_scales<T, NT>(d, rows, gs_shared, hs_shared);
  const T delta = set.kkt_reg * scaled_data_scale<T, NT>(d, rows);
  const T* gs = rows.gs;
  const T* hs = rows.hs;
  const bool resume = *stage == kStageResume;

  T K[Tri<NT>::size];
  T x[NT];
  bool ok = true;
  int it = 0;
  Progress<T> progress;
  T loose = set.polish_start;
  if (!resume) {
    prof.count(kProfProblems);
    // Initial point: W = I, x = K⁻¹(−q + G̃ᵀh̃), s = h̃ − G̃x, z = −s, shifted and balanced
    // (qp_ipm.h: start_balance).
    ok = factor<T, NT>(d, [&](int r) { return gs[r] * gs[r]; }, delta, K);
    OL_UNROLL
    for (int j = 0; j < NT; ++j) x[j] = -d.qv(j);
    for (int r = 0; r < m; ++r) {
      T g[NT];
      load_row<T, NT>(d, r, g);
      const T c = gs[r] * hs[r];
      OL_UNROLL
      for (int j = 0; j < NT; ++j) x[j] += c * g[j];
    }
    chol_solve<T, NT>(K, x);
    T smin = ol_inf<T>(), smax = -ol_inf<T>();
    for (int r = 0; r < m; ++r) {
      T g[NT];
      load_row<T, NT>(d, r, g);
      s[r] = hs[r] - gs[r] * dot_row<T, T, NT>(g, x);
      smin = ol_min(smin, s[r]);
      smax = ol_max(smax, s[r]);
    }
    T a_s, a_z;
    start_offsets<T>(smin, smax, a_s, a_z);
    T sum_sz = 0, sum_s = 0, sum_z = 0;
    for (int r = 0; r < m; ++r) {
      const T s0 = s[r], st_r = s0 + a_s, zt_r = -s0 + a_z;
      sum_sz += st_r * zt_r;
      sum_s += st_r;
      sum_z += zt_r;
    }
    T ds, dz, lo;
    start_balance<T>(smin, smax, sum_sz, sum_s, sum_z, ds, dz, lo);
    for (int r = 0; r < m; ++r) {
      const T s0 = s[r];
      s[r] = ol_max(s0 + a_s + ds, lo);
      z[r] = ol_max(-s0 + a_z + dz, lo);
    }
  } else {
    for (int r = 0; r < m; ++r) {
      s[r] = sv.v[r];
      z[r] = sv.v[m + r];
    }
    OL_UNROLL
    for (int j = 0; j < NT; ++j) x[j] = sv.v[2 * m + j];
    loose = sv.v[2 * m + kMaxN];
    progress.best = sv.v[2 * m + kMaxN + 1];
    progress.best_sz = sv.v[2 * m + kMaxN + 2];
    progress.best_cert = sv.v[2 * m + kMaxN + 3];
    progress.best_res = sv.v[2 * m + kMaxN + 4];
    it = sv.k[0];
    progress.stall = sv.k[1];
  }
  T qn = 0, hn = 0;
  OL_UNROLL
  for (int j = 0; j < NT; ++j) qn = ol_max(qn, ol_abs(d.qv(j)));
  for (int r = 0; r < m; ++r) hn = ol_max(hn, ol_abs(hs[r]));
  prof.phase(kProfSetup);

  // Hand the iterate to polish_stage (an early polish also saves what resuming needs).
  auto save_for_polish = [&](int8_t next, bool converged) {
    for (int r = 0; r < m; ++r) {
      sv.v[r] = s[r];
      sv.v[m + r] = z[r];
    }
    OL_UNROLL
    for (int j = 0; j < NT; ++j) sv.v[2 * m + j] = x[j];
    sv.v[2 * m + kMaxN] = loose;
    sv.v[2 * m + kMaxN + 1] = progress.best;
    sv.v[2 * m + kMaxN + 2] = progress.best_sz;
    sv.v[2 * m + kMaxN + 3] = progress.best_cert;
    sv.v[2 * m + kMaxN + 4] = progress.best_res;
    sv.k[0] = it;
    sv.k[1] = progress.stall;
    sv.k[2] = converged ? 1 : 0;
    *stage = next;
    prof.phase(kProfResidual);
  };
  bool solved = false;
  // A resumed iterate failed its early polish at the top of this iteration: go on from there.
  bool skip_early = resume;
  for (; ok && it <= set.max_iter; ++it) {
    prof.count(kProfIterations);
    // Residuals: r_d = Qx + q + G̃ᵀz, r_p = G̃x + s − h̃, and the norms of the stopping tests.
    T Qx[NT], rd[NT], v[NT];
    OL_UNROLL
    for (int i = 0; i < NT; ++i) {
      T acc = 0;
      OL_UNROLL
      for (int j = 0; j < NT; ++j) acc += d.Qv(i, j) * x[j];
      Qx[i] = acc;
      v[i] = 0;
    }
    T Gxn = 0, Gx_pos = 0, rpn = 0, sz = 0, hz = 0, ss = 0;
    for (int r = 0; r < m; ++r) {
      T g[NT];
      load_row<T, NT>(d, r, g);
      const T t = gs[r] * dot_row<T, T, NT>(g, x);
      Gxn = ol_max(Gxn, ol_abs(t));
      Gx_pos = ol_max(Gx_pos, t);
      const T rr = t + s[r] - hs[r];
      rpn = ol_max(rpn, ol_abs(rr));
      const T c = z[r] * gs[r];
      OL_UNROLL
      for (int j = 0; j < NT; ++j) v[j] += c * g[j];
      sz += s[r] * z[r];
      hz += hs[r] * z[r];
      ss += s[r] * s[r];
    }
    T Qxn = 0, Gtzn = 0, rdn = 0, qx = 0, xQx = 0, xx = 0;
    OL_UNROLL
    for (int j = 0; j < NT; ++j) {
      rd[j] = Qx[j] + d.qv(j) + v[j];
      Qxn = ol_max(Qxn, ol_abs(Qx[j]));
      Gtzn = ol_max(Gtzn, ol_abs(v[j]));
      rdn = ol_max(rdn, ol_abs(rd[j]));
      qx += d.qv(j) * x[j];
      xQx += x[j] * Qx[j];
      xx += x[j] * x[j];
    }
    const T mu = sz / T(m);
    const T gap = sz / (1 + ol_abs(T(0.5) * xQx + qx));
    const T pres = rpn / (1 + ol_max(hn, Gxn));
    const T dres = rdn / (1 + ol_max(ol_max(qn, Qxn), Gtzn));
    const bool converged = pres <= set.tol && dres <= set.tol && gap <= set.tol;
    const T t_p = -hz;
    // A claimed certificate counts only above the rounding of its terms (as qp_ipm.h).
    auto primal_size = [&]() {
      T size = 0;
      for (int r = 0; r < m; ++r) size += ol_abs(hs[r] * z[r]);
      return size;
    };
    auto dual_size = [&]() {
      T size = 0;
      OL_UNROLL
      for (int j = 0; j < NT; ++j) size += ol_abs(d.qv(j) * x[j]);
      return size;
    };
    const bool primal_inf = t_p > T(0) && Gtzn <= set.inf_tol * t_p && above_cancellation(t_p, primal_size(), set.inf_tol);
    const T ray = ol_max(Qxn, ol_max(Gx_pos, T(0)));
    const bool dual_inf = qx < T(0) && ray <= set.inf_tol * (-qx) && above_cancellation(-qx, dual_size(), set.inf_tol);
    const T total = sz + xx + ss;
    if (!(ol_abs(total) < ol_inf<T>())) break;
    if (converged) {
      solved = true;
      break;
    }
    // Early polish (as solve_qp): at a loose tolerance the active set is usually final.
    if (!skip_early && set.polish && loose > set.tol && pres <= loose && dres <= loose && gap <= loose) {
      loose *= T(1e-3);
      save_for_polish(kStageEarlyPolish, false);
      return;
    }
    skip_early = false;
    if (primal_inf || dual_inf) break;
    const T merit = ol_max(ol_max(pres, dres), gap);
    const T cert = ol_min(t_p > T(0) ? Gtzn / t_p : ol_inf<T>(), qx < T(0) ? ray / (-qx) : ol_inf<T>());
    if (progress.stalled(merit, sz, cert, ol_max(pres, dres)) || it == set.max_iter) {
      // The serial path polishes an iteration-limited iterate too.
      if (set.polish) {
        save_for_polish(kStageFinalPolish, false);
        return;
      }
      break;
    }
    prof.phase(kProfResidual);
    // Factor at W = Z S⁻¹.
    const bool factored = factor<T, NT>(d, [&](int r) { return z[r] / s[r] * gs[r] * gs[r]; }, delta, K);
    prof.phase(kProfFactor);
    if (!factored) {
      // As solve_qp: a late factorization failure leaves an iterate the polish may finish.
      if (set.polish) {
        save_for_polish(kStageFinalPolish, false);
        return;
      }
      break;
    }
    predictor_corrector<T, NT>(d, set, K, rd, mu, sz, rows, x);
    prof.phase(kProfStep);
  }
  *iters = it;
  *stage = kStageDone;
  if (!solved) {
    *status = kRetry;
    return;
  }
  if (set.polish) {
    save_for_polish(kStageFinalPolish, true);
    return;
  }
  OL_UNROLL
  for (int j = 0; j < NT; ++j)
    if (j < n) x_out[j] = x[j];
  for (int r = 0; r < m; ++r) lam_out[r] = z[r] * gs[r];
  *status = kSolved;
}

// The polish stage of a problem that ipm_stage left at kStageEarlyPolish or kStageFinalPolish:
// polish its saved iterate (kEarlyPolishRounds or kPolishRounds rounds). Accepted: x, λ, status
// kSolved and the iteration count written, kStageDone. Not accepted: an early polish resumes the
// interior point (kStageResume); a final one after convergence keeps the interior point's iterate
// with status kSolved, as solve_qp does when its polish fails; any other final one (stalled, out of
// iterations, unfactorable: solve_qp returns its lowest-merit iterate, which this kernel does not
// keep) leaves the problem to the thread-group kernel (kRetry).
template <typename T, int NT, typename Prof>
OL_HD void polish_stage(const Data<T>& d, const Settings<T>& set, Rows<T>& rows, const T* gs_shared,
                        const T* hs_shared, Saved<T> sv, int8_t* stage, T* x_out, T* lam_out, int8_t* status,
                        int32_t* iters, Prof& prof) {
  const int m = d.m;
  bind_row_scales<T, NT>(d, rows, gs_shared, hs_shared);  // λ̂ = z ∘ gs; the polish needs no δ of the IPM
  const T* gs = rows.gs;
  T x[NT];
  OL_UNROLL
  for (int j = 0; j < NT; ++j) x[j] = sv.v[2 * m + j];
  const T* z = sv.v + m;
  auto lam_hat = [&](int r) { return z[r] * gs[r]; };
  const bool early = *stage == kStageEarlyPolish;
  const double kkt_delta = double(set.kkt_reg) * data_scale<T>(d);  // the polish's δ
  prof.phase(kProfSetup);
  const bool done = polish<T, NT>(d, set, kkt_delta, x, lam_hat, rows, early ? kEarlyPolishRounds : kPolishRounds,
                                  x_out, lam_out);
  prof.phase(kProfPolish);
  prof.count(kProfPolishCalls);
  if (done) {
    *status = kSolved;
    *iters = sv.k[0];
    *stage = kStageDone;
  } else if (early) {
    *stage = kStageResume;
  } else if (sv.k[2] != 0) {
    OL_UNROLL
    for (int j = 0; j < NT; ++j)
      if (j < d.n) x_out[j] = x[j];
    for (int r = 0; r < m; ++r) lam_out[r] = z[r] * gs[r];
    *status = kSolved;
    *iters = sv.k[0];
    *stage = kStageDone;
  } else {
    *status = kRetry;
    *iters = sv.k[0];
    *stage = kStageDone;
  }
}

// Solve one problem: the stages chained (what the CUDA binding does with one launch per stage).
// Writes x (n), λ (m), status and iterations; status kRetry leaves the problem to the
// thread-group kernel (x and λ are then unspecified). gs_shared / hs_shared: the row scales (and
// h̃) computed once for a batch that shares G (and h) (row_scale), or null. `saved`: scratch of
// saved_scalars(m) scalars and kSavedInts integers.
template <typename T, int NT, typename Prof>
OL_HD void solve(const Data<T>& d, const Settings<T>& set, Rows<T>& rows, const T* gs_shared, const T* hs_shared,
                 Saved<T> saved, T* x_out, T* lam_out, int8_t* status, int32_t* iters, Prof& prof) {
  int8_t stage = kStageStart;
  while (stage != kStageDone) {
    if (stage == kStageStart || stage == kStageResume) {
      ipm_stage<T, NT, Prof>(d, set, rows, gs_shared, hs_shared, saved, &stage, x_out, lam_out, status, iters, prof);
    } else {
      polish_stage<T, NT, Prof>(d, set, rows, gs_shared, hs_shared, saved, &stage, x_out, lam_out, status, iters,
                                prof);
    }
  }
}

template <typename T, int NT>
OL_HD void solve(const Data<T>& d, const Settings<T>& set, Rows<T>& rows, const T* gs_shared, const T* hs_shared,
                 Saved<T> saved, T* x_out, T* lam_out, int8_t* status, int32_t* iters) {
  NoProfile none;
  solve<T, NT, NoProfile>(d, set, rows, gs_shared, hs_shared, saved, x_out, lam_out, status, iters, none);
}

// Backward solve (qp_ipm.h::kkt_solve with p = 0): u = K⁻¹ rhs for the active-set KKT matrix of
// `mask` in the full layout (n + m; inactive rows are identities). False if the factorization
// fails or the result is not finite (the caller then uses the thread-group kernel).
template <typename T, int NT>
OL_HD bool kkt_solve(const Data<T>& d, const T* mask, T kkt_reg, const T* rhs, Rows<T>& rows, T* u) {
  const int n = d.n, m = d.m;
  for (int r = 0; r < m; ++r) rows.act[r] = mask[r] > T(0.5) ? 1 : 0;
  KKT<T, NT> f;
  if (!kkt_factor<T, NT>(d, rows.act, double(kkt_reg) * data_scale<T>(d), f)) return false;
  double b1[NT], ux[NT];
  OL_UNROLL
  for (int j = 0; j < NT; ++j) b1[j] = j < n ? double(rhs[j]) : 0.0;
  // Not converged: the caller's serial LU solves it (qp_cpu_derivatives.cpp, and the CUDA backward's fallback).
  if (!kkt_refined<T, NT>(d, f, b1, [&](int r) { return double(rhs[n + r]); }, [&](int) { return 0.0; }, rows, ux))
    return false;
  bool finite = true;
  OL_UNROLL
  for (int j = 0; j < NT; ++j)
    if (j < n) {
      finite = finite && (ux[j] == ux[j]) && ol_abs(ux[j]) < ol_inf<double>();
      u[j] = T(ux[j]);
    }
  for (int r = 0; r < m; ++r) {
    const double v = rows.act[r] ? rows.ul[r] : double(rhs[n + r]);
    finite = finite && (v == v) && ol_abs(v) < ol_inf<double>();
    u[n + r] = T(v);
  }
  return finite;
}

}  // namespace small
}  // namespace optlayers
