// optlayers native QP kernel, host only: the solver for W problems at once, one per SIMD lane
// ("batch-interleaved"). Header-only and torch-free, like qp_ipm.h.
//
// Why: the serial solver (qp_ipm.h, one problem per thread) runs its loops over one problem's rows,
// which for the small problems of robotics (n ≈ 12–30) are too short for SIMD and too short to hide
// the latency of the dependency chains (a Cholesky of a 12×12 matrix is a chain of 12 square roots
// and 78 dependent updates). Here every scalar of the serial algorithm becomes a vector of W
// problems' scalars (W = 8 float64 / 16 float32 with AVX-512, half that with AVX2): the same
// instruction stream, no horizontal reductions, full vectors everywhere, W independent chains.
//
// Scope: problems with inequalities (m > 0), with or without equalities. The interior point is the
// serial one step for step (qp_ipm.h::solve_qp: scaling, initial point, Mehrotra predictor-corrector
// on the reduced matrix K = Q + G̃ᵀWG̃ + δI with the equalities' Schur complement, regularization
// retries, stopping, stall and infeasibility rules), with per-lane status: a lane that stops is
// frozen (its iterate no longer changes) while the others go on, and the block ends when every lane
// has stopped. Differences:
//   - float64 has no early polish: it pays when an interior-point iteration is expensive, but here
//     one costs about 1.2 µs a problem against ~20 µs for a serial polish round (4,800 grasp QPs,
//     one thread: interior point alone 65 ms for 11.4 iterations), so the reported iterations are
//     those to full tolerance. float32 keeps it (per lane, with the serial polish): there it also
//     rescues problems whose last iterations would end in a failed factorization (a scan of 300
//     random batches: 9 float32 batches had lanes ending NUMERICAL_ERROR/MAX_ITER where the serial
//     path solved, before the early polish was added to the lanes);
//   - rounding: K is formed from G̃ (the serial path uses precomputed outer products of a shared G),
//     and 1/s is computed once per row and iteration, so iterates agree with the serial path to
//     round-off, not bit for bit;
//   - float64: the polish and the backward solve the active-set KKT systems of all lanes at once by
//     eliminating the multipliers (an n×n Cholesky of Q + δI + G_𝒜ᵀG_𝒜/δ, see kkt_factor), with the
//     serial code as the per-lane fallback; float32 polishes and differentiates with the serial
//     code (see block_kkt).
//
// Layout: a block's arrays hold Vec<T> elements, index-major: M[i·n + j][lane].
#pragma once

#if !defined(__CUDACC__)

#include <cmath>
#include <cstdint>

#include "optlayers/qp_ipm.h"

namespace optlayers {
namespace lanes {

template <typename T>
struct Vec {
  static constexpr int kBytes = HostVec<T>::kBytes;
  static constexpr int W = int(kBytes / sizeof(T));
  typedef T type __attribute__((vector_size(kBytes)));
};

// Lanes per block for scalar type T.
template <typename T>
constexpr int width() { return Vec<T>::W; }

#define OL_LANE_INLINE inline __attribute__((always_inline))

template <typename V, typename T>
OL_LANE_INLINE V splat(T s) { return V{} + s; }
template <typename V>
OL_LANE_INLINE V vmax(V a, V b) { return a > b ? a : b; }  // ol_max, lane by lane (same NaN rule)
template <typename V>
OL_LANE_INLINE V vmin(V a, V b) { return a < b ? a : b; }  // ol_min
template <typename V>
OL_LANE_INLINE V vabs(V a) { return a < V{} ? -a : a; }
template <typename T, typename V>
OL_LANE_INLINE V vsqrt(V a) {
  V r;
  for (int l = 0; l < Vec<T>::W; ++l) r[l] = std::sqrt(a[l]);
  return r;
}
template <typename M>
OL_LANE_INLINE bool any(M mask, int W) {
  for (int l = 0; l < W; ++l)
    if (mask[l]) return true;
  return false;
}

// Workspace of one block, in vectors: the interior point's (with the equalities' Ã, Z = L⁻¹Ãᵀ and
// Schur complement, and the lowest-merit iterate), then the active-set KKT system's over the m + p
// rows of [G; A] (raw rows, the Cholesky factor of H, vectors).
inline int64_t block_vectors(int n, int m, int p) {
  const int64_t ipm = 2 * int64_t(n) * n + int64_t(m) * n + 9 * int64_t(n) + 18 * int64_t(m) +
                      2 * int64_t(p) * n + int64_t(p) * p + 13 * int64_t(p);
  const int64_t mk = int64_t(m) + p;
  const int64_t kkt = mk * n + int64_t(n) * n + 7 * int64_t(n) + 9 * mk;
  return ipm + kkt + 8;
}

// Serial workspace (scalars) beside a block: for the per-problem fallbacks (qp_ipm.h's polish,
// multiplier repair and kkt_backward).
inline int64_t polish_scalars(int n, int m, int p) {
  const int64_t N0 = int64_t(n) + m + p;
  const int64_t pol = N0 * N0 + 6 * N0 + 3 * int64_t(m) + 16;
  const int64_t bwd = backward_workspace_size(n, m, p);
  return pol > bwd ? pol : bwd;
}

template <typename T>
struct State {
  using V = typename Vec<T>::type;
  V *Q, *q, *Gt, *h, *gs, *hs, *K, *dinv;
  V *x, *dx, *dxa, *rd, *Qx, *tn;
  V *s, *z, *ds, *dz, *dsa, *dza, *rp, *rc, *w, *tm, *sinv;
  V *At, *as, *bs, *y, *dy, *dya, *re, *Z, *Sp, *dSp, *tp;  // equalities (p)
  V *xb, *zb, *yb;  // the iterate of lowest merit so far (see solve_block)
  // Active-set KKT system (polish, backward) over the rows of [G; A]: Gr, h hold the raw rows
  // and right-hand sides, act is 1 on equality rows.
  V *Gr, *L, *dL, *act;
  V *ux, *rx, *cx, *t, *xs;
  V *ua, *ra, *ca, *b, *gx, *ls;
  V *u1x, *u1a;  // the polish's first solution while it tries the shifted one
  int* rows;  // rows active in some lane (int slots in the vector workspace)
  V kdelta, kinv, kdelta_small;  // δ of the active-set factor, 1/δ, the fallback δ (kkt_factor)
};

template <typename T>
State<T> carve(typename Vec<T>::type* wv, int n, int m, int p) {
  State<T> st;
  auto take = [&](int64_t k) { auto* r = wv; wv += k; return r; };
  st.Q = take(int64_t(n) * n); st.K = take(int64_t(n) * n); st.Gt = take(int64_t(m) * n);
  st.q = take(n); st.dinv = take(n); st.x = take(n); st.dx = take(n); st.dxa = take(n);
  st.rd = take(n); st.Qx = take(n); st.tn = take(n);
  st.h = take(int64_t(m) + p); st.gs = take(m); st.hs = take(m); st.s = take(m); st.z = take(m); st.ds = take(m);
  st.dz = take(m); st.dsa = take(m); st.dza = take(m); st.rp = take(m); st.rc = take(m); st.w = take(m);
  st.tm = take(m); st.sinv = take(m);
  st.At = take(int64_t(p) * n); st.Z = take(int64_t(p) * n); st.Sp = take(int64_t(p) * p);
  st.as = take(p); st.bs = take(p); st.y = take(p); st.dy = take(p); st.dya = take(p); st.re = take(p);
  st.dSp = take(p); st.tp = take(p);
  st.xb = take(n); st.zb = take(m); st.yb = take(p);
  const int64_t mk = int64_t(m) + p;
  st.Gr = take(mk * n); st.L = take(int64_t(n) * n); st.dL = take(n); st.act = take(mk);
  st.ux = take(n); st.rx = take(n); st.cx = take(n); st.t = take(n); st.xs = take(n);
  st.ua = take(mk); st.ra = take(mk); st.ca = take(mk); st.b = take(mk); st.gx = take(mk); st.ls = take(mk);
  st.u1x = take(n); st.u1a = take(mk);
  st.rows = reinterpret_cast<int*>(take(mk));  // mk ints fit in mk vectors
  return st;
}

// Lower triangle of K ← G̃ᵀ diag(w) G̃ in BI×BJ register tiles (rows i0.., columns j0.. ≥ i0..):
// K[j][i] = Σ_r (w_r G̃_ri) G̃_rj, the sum over r in registers.
template <typename T, int BI, int BJ>
OL_LANE_INLINE void gram_tile(const typename Vec<T>::type* Gt, const typename Vec<T>::type* w, int n, int m, int i0,
                              int j0, typename Vec<T>::type* K) {
  using V = typename Vec<T>::type;
  V acc[BI][BJ];
  for (int a = 0; a < BI; ++a)
    for (int b = 0; b < BJ; ++b) acc[a][b] = V{};
  for (int r = 0; r < m; ++r) {
    const V* Gr = Gt + int64_t(r) * n;
    V ci[BI], gj[BJ];
    for (int a = 0; a < BI; ++a) ci[a] = w[r] * Gr[i0 + a];
    for (int b = 0; b < BJ; ++b) gj[b] = Gr[j0 + b];
    for (int a = 0; a < BI; ++a)
      for (int b = 0; b < BJ; ++b) acc[a][b] += ci[a] * gj[b];
  }
  for (int a = 0; a < BI; ++a)
    for (int b = 0; b < BJ; ++b)
      if (j0 + b >= i0 + a) K[int64_t(j0 + b) * n + i0 + a] = acc[a][b];
}

template <typename T, int BI>
OL_LANE_INLINE void gram_row(const typename Vec<T>::type* Gt, const typename Vec<T>::type* w, int n, int m, int i0,
                             typename Vec<T>::type* K) {
  int j0 = i0;
  for (; j0 + 4 <= n; j0 += 4) gram_tile<T, BI, 4>(Gt, w, n, m, i0, j0, K);
  switch (n - j0) {
    case 3: gram_tile<T, BI, 3>(Gt, w, n, m, i0, j0, K); break;
    case 2: gram_tile<T, BI, 2>(Gt, w, n, m, i0, j0, K); break;
    case 1: gram_tile<T, BI, 1>(Gt, w, n, m, i0, j0, K); break;
    default: break;
  }
}

// K ← Q + G̃ᵀ diag(w) G̃ + δI (lower triangle).
template <typename T>
void form_K(State<T>& st, int n, int m, const typename Vec<T>::type& delta) {
  int i0 = 0;
  for (; i0 + 4 <= n; i0 += 4) gram_row<T, 4>(st.Gt, st.w, n, m, i0, st.K);
  switch (n - i0) {
    case 3: gram_row<T, 3>(st.Gt, st.w, n, m, i0, st.K); break;
    case 2: gram_row<T, 2>(st.Gt, st.w, n, m, i0, st.K); break;
    case 1: gram_row<T, 1>(st.Gt, st.w, n, m, i0, st.K); break;
    default: break;
  }
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j <= i; ++j) st.K[int64_t(i) * n + j] += st.Q[int64_t(i) * n + j];
    st.K[int64_t(i) * n + i] += delta;
  }
}

// In-place lower Cholesky of the n×n matrix K (row-major, lower triangle read), lane by lane;
// dinv ← 1 / diag(L). Returns the mask of lanes whose pivots (before the square root) all
// exceeded `thr` (the others hold garbage).
template <typename T>
auto chol(typename Vec<T>::type* K, typename Vec<T>::type* dinv, int n, typename Vec<T>::type thr) {
  using V = typename Vec<T>::type;
  auto ok = V{} == V{};  // all true
  for (int j = 0; j < n; ++j) {
    V* Kj = K + int64_t(j) * n;
    V d = Kj[j];
    for (int k = 0; k < j; ++k) d -= Kj[k] * Kj[k];
    ok &= d > thr;
    const V ljj = vsqrt<T>(d), inv = T(1) / ljj;
    Kj[j] = ljj;
    dinv[j] = inv;
    for (int i = j + 1; i < n; ++i) {
      V* Ki = K + int64_t(i) * n;
      V a = Ki[j];
      for (int k = 0; k < j; ++k) a -= Ki[k] * Kj[k];
      Ki[j] = a * inv;
    }
  }
  return ok;
}

// r ← L⁻¹ r and r ← L⁻ᵀ r for a factor of chol (n×n, dinv).
template <typename T>
void tri_lower(const typename Vec<T>::type* L, const typename Vec<T>::type* dinv, int n, typename Vec<T>::type* r) {
  using V = typename Vec<T>::type;
  for (int i = 0; i < n; ++i) {
    V a = r[i];
    const V* Li = L + int64_t(i) * n;
    for (int k = 0; k < i; ++k) a -= Li[k] * r[k];
    r[i] = a * dinv[i];
  }
}
template <typename T>
void tri_upper(const typename Vec<T>::type* L, const typename Vec<T>::type* dinv, int n, typename Vec<T>::type* r) {
  using V = typename Vec<T>::type;
  for (int i = n - 1; i >= 0; --i) {
    const V xi = r[i] * dinv[i];
    r[i] = xi;
    const V* Li = L + int64_t(i) * n;
    for (int k = 0; k < i; ++k) r[k] -= Li[k] * xi;
  }
}

template <typename T>
auto cholesky(State<T>& st, int n) {
  using V = typename Vec<T>::type;
  return chol<T>(st.K, st.dinv, n, V{});
}

// out[r] = Σ_j M[r][j] x[j] for r < rows (row stride n), four rows per pass: four independent
// multiply-add chains (one chain per row would wait on the FMA latency at every step).
template <typename T>
void mat_vec(const typename Vec<T>::type* M, int rows, int n, const typename Vec<T>::type* x,
             typename Vec<T>::type* out) {
  using V = typename Vec<T>::type;
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    const V *m0 = M + int64_t(r) * n, *m1 = m0 + n, *m2 = m1 + n, *m3 = m2 + n;
    V a0{}, a1{}, a2{}, a3{};
    for (int j = 0; j < n; ++j) {
      const V xj = x[j];
      a0 += m0[j] * xj; a1 += m1[j] * xj; a2 += m2[j] * xj; a3 += m3[j] * xj;
    }
    out[r] = a0; out[r + 1] = a1; out[r + 2] = a2; out[r + 3] = a3;
  }
  for (; r < rows; ++r) {
    const V* mr = M + int64_t(r) * n;
    V a{};
    for (int j = 0; j < n; ++j) a += mr[j] * x[j];
    out[r] = a;
  }
}

// out[j] (+)= Σ_r M[r][j] v[r] for j < n: B columns per pass, their sums in registers.
template <typename T, int B>
OL_LANE_INLINE void mat_t_cols(const typename Vec<T>::type* M, int rows, int n, const typename Vec<T>::type* v,
                               typename Vec<T>::type* out, bool acc, int j0) {
  using V = typename Vec<T>::type;
  V a[B];
  for (int b = 0; b < B; ++b) a[b] = acc ? out[j0 + b] : V{};
  for (int r = 0; r < rows; ++r) {
    const V vr = v[r];
    const V* mr = M + int64_t(r) * n + j0;
    for (int b = 0; b < B; ++b) a[b] += mr[b] * vr;
  }
  for (int b = 0; b < B; ++b) out[j0 + b] = a[b];
}

template <typename T>
void mat_t_vec(const typename Vec<T>::type* M, int rows, int n, const typename Vec<T>::type* v,
               typename Vec<T>::type* out, bool acc) {
  int j0 = 0;
  for (; j0 + 8 <= n; j0 += 8) mat_t_cols<T, 8>(M, rows, n, v, out, acc, j0);
  for (; j0 + 4 <= n; j0 += 4) mat_t_cols<T, 4>(M, rows, n, v, out, acc, j0);
  for (; j0 < n; ++j0) mat_t_cols<T, 1>(M, rows, n, v, out, acc, j0);
}

// out = G̃ x (m) and out (+)= G̃ᵀ v (n).
template <typename T>
void g_times(const State<T>& st, int n, int m, const typename Vec<T>::type* x, typename Vec<T>::type* out) {
  mat_vec<T>(st.Gt, m, n, x, out);
}
template <typename T>
void gt_times(const State<T>& st, int n, int m, const typename Vec<T>::type* v, typename Vec<T>::type* out, bool acc) {
  mat_t_vec<T>(st.Gt, m, n, v, out, acc);
}

// Factor K at the current w, with the serial path's retry (shift grown to
// max(δ·kRegGrowth, relative_shift·max diag K) on the lanes whose first try failed).
// With equalities (serial factor_reduced): Z = L⁻¹Ãᵀ (rows z_e) and the Cholesky factor of the
// Schur complement S = ZᵀZ + δI, with the same retry on the lanes where it fails.
template <typename T>
auto factor(State<T>& st, int n, int m, int p, const typename Vec<T>::type& delta) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  form_K(st, n, m, delta);
  auto ok = cholesky(st, n);
  if (any(~ok, W)) {
    form_K(st, n, m, delta);
    V dmax{};
    for (int i = 0; i < n; ++i) dmax = vmax(dmax, st.K[int64_t(i) * n + i]);
    const V extra = vmax(delta * T(kRegGrowth), relative_shift<T>() * dmax) - delta;
    const V add = ok ? V{} : extra;  // lanes that factored keep their (identical) first factor
    for (int i = 0; i < n; ++i) st.K[int64_t(i) * n + i] += add;
    ok = cholesky(st, n);
  }
  if (p == 0) return ok;
  for (int e = 0; e < p; ++e) {
    V* Ze = st.Z + int64_t(e) * n;
    for (int j = 0; j < n; ++j) Ze[j] = st.At[int64_t(e) * n + j];
    tri_lower<T>(st.K, st.dinv, n, Ze);
  }
  auto schur = [&]() {
    for (int e = 0; e < p; ++e)
      for (int f = 0; f <= e; ++f) {
        const V *ze = st.Z + int64_t(e) * n, *zf = st.Z + int64_t(f) * n;
        V a{};
        for (int j = 0; j < n; ++j) a += ze[j] * zf[j];
        st.Sp[int64_t(e) * p + f] = a;
      }
  };
  schur();
  for (int e = 0; e < p; ++e) st.Sp[int64_t(e) * p + e] += delta;
  auto okS = chol<T>(st.Sp, st.dSp, p, V{});
  if (any(~okS, W)) {  // rebuild (the failed factorization overwrote S) with the larger shift
    schur();
    V dmax{};
    for (int e = 0; e < p; ++e) dmax = vmax(dmax, st.Sp[int64_t(e) * p + e]);
    const V shift = vmax(delta * T(kRegGrowth), relative_shift<T>() * dmax);
    const V add = okS ? delta : shift;
    for (int e = 0; e < p; ++e) st.Sp[int64_t(e) * p + e] += add;
    okS = chol<T>(st.Sp, st.dSp, p, V{});
  }
  return ok & okS;
}

// The reduced KKT solve of the serial path: [K Ãᵀ; Ã −δI] (v, dy) = (r₁, −re) in place,
// v ← K⁻¹(r₁ − Ãᵀdy), dy = S⁻¹(Z L⁻¹r₁ + re).
template <typename T>
void reduced_solve(State<T>& st, int n, int p, typename Vec<T>::type* v, const typename Vec<T>::type* re,
                   typename Vec<T>::type* dy) {
  tri_lower<T>(st.K, st.dinv, n, v);
  if (p > 0) {
    mat_vec<T>(st.Z, p, n, v, dy);
    for (int e = 0; e < p; ++e) dy[e] += re[e];
    tri_lower<T>(st.Sp, st.dSp, p, dy);
    tri_upper<T>(st.Sp, st.dSp, p, dy);
    for (int e = 0; e < p; ++e) st.tp[e] = -dy[e];
    mat_t_vec<T>(st.Z, p, n, st.tp, v, true);
  }
  tri_upper<T>(st.K, st.dinv, n, v);
}

// Newton step for residuals (rd, rp, re, rc): dx, ds, dz, dy (serial newton_step).
template <typename T>
void newton_step(State<T>& st, int n, int m, int p, const typename Vec<T>::type* rc, typename Vec<T>::type* dx,
                 typename Vec<T>::type* ds, typename Vec<T>::type* dz, typename Vec<T>::type* dy) {
  for (int i = 0; i < m; ++i) st.tm[i] = rc[i] * st.sinv[i] - st.w[i] * st.rp[i];
  for (int j = 0; j < n; ++j) dx[j] = -st.rd[j];
  gt_times(st, n, m, st.tm, dx, true);
  reduced_solve(st, n, p, dx, st.re, dy);
  g_times(st, n, m, dx, st.tm);
  for (int i = 0; i < m; ++i) {
    dz[i] = st.w[i] * (st.tm[i] + st.rp[i]) - rc[i] * st.sinv[i];
    ds[i] = -st.rp[i] - st.tm[i];
  }
}

// Largest α with v + α dv ≥ 0, lane by lane (∞ where dv ≥ 0), for v > 0. The minimum of the
// ratios v_i / (−dv_i) is found by cross-multiplication (a/b < A/B ⟺ a·B < A·b for b, B > 0) and
// divided once: a division per row would make this the most expensive loop of an iteration.
template <typename T>
typename Vec<T>::type max_step(const typename Vec<T>::type* v, const typename Vec<T>::type* dv, int k) {
  using V = typename Vec<T>::type;
  V A = splat<V>(T(1)), B{};  // A / B = ∞ until a row with dv < 0 is seen
  for (int i = 0; i < k; ++i) {
    const V b = -dv[i];
    const auto take = (b > V{}) & (v[i] * B < A * b | B == V{});
    A = take ? v[i] : A;
    B = take ? b : B;
  }
  return B > V{} ? A / B : splat<V>(ol_inf<T>());
}


// ----------------------------------------------------------------------------------------------
// The active-set KKT system of a block (the compact system of qp_ipm.h, for polish and backward)
//
//   ⎡ Q + δI   G_𝒜ᵀ ⎤ ⎡u_x⎤   ⎡r_x⎤
//   ⎣ G_𝒜      −δI  ⎦ ⎣u_𝒜⎦ = ⎣r_𝒜⎦,      inactive rows: u_i = r_i,
//
// by eliminating the multipliers instead of an LU with pivoting (as the CUDA small kernel and the
// PyTorch backend do):
//   H u_x = r_x + G_𝒜ᵀ r_𝒜 / δ,   H = Q + δI + G_𝒜ᵀ G_𝒜 / δ = LLᵀ,   u_𝒜 = (G_𝒜 u_x − r_𝒜) / δ,
// an n×n Cholesky per lane, with the rows active in no lane skipped (`st.rows`). δ = √ε · the data
// scale (relative_shift), not the serial path's kkt_reg: H carries the active rows with weight
// 1/δ, so the solve's rounding grows like ε‖G‖²/(δλ) (λ: Q's curvature on the null space of the
// active rows) while the regularization error grows like δ‖K⁻¹‖; √ε balances them, and the
// refinement then contracts by ~1e-5 a step (with the serial δ = 1e-11 · scale: ~1e-2 on grasp
// QPs, whose Q has λ ≈ 1e-3, and 3 steps left gradients 2e-10 off). H ⪰ δI, and its pivots stay
// well above δ unless Q is (nearly) singular on the null space of the active rows — then K itself
// is (nearly) singular and the lane is reported (a pivot below 2δ) and takes the serial LU path.
// Solutions are refined against the exact (δ = 0) matrix as in the serial kkt_refined_solve;
// `st.act` holds the 0/1 active mask, `st.Gr` the raw G.

// H = Q + δI + G_𝒜ᵀG_𝒜/δ with a per-lane δ, and its Cholesky factor; returns the lanes whose
// pivots all exceed 2δ. Sets st.kdelta, st.kinv and the rows active in some lane.
template <typename T>
auto kkt_factor_at(State<T>& st, int n, int m, const typename Vec<T>::type& delta, int& nrows) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  st.kdelta = delta;
  st.kinv = splat<V>(T(1)) / delta;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j <= i; ++j) st.L[int64_t(i) * n + j] = st.Q[int64_t(i) * n + j];
    st.L[int64_t(i) * n + i] += delta;
  }
  nrows = 0;
  for (int r = 0; r < m; ++r)
    if (any(st.act[r] > V{}, W)) st.rows[nrows++] = r;
  for (int c = 0; c < nrows; ++c) {
    const int r = st.rows[c];
    const V* g = st.Gr + int64_t(r) * n;
    const V w = st.act[r] * st.kinv;
    for (int i = 0; i < n; ++i) {
      const V wg = w * g[i];
      V* Li = st.L + int64_t(i) * n;
      for (int j = 0; j <= i; ++j) Li[j] += wg * g[j];
    }
  }
  return chol<T>(st.L, st.dL, n, T(2) * delta);
}

// The block's factor at δ = √ε · scale (scale: kkt_scale), remembering the serial path's
// δ = kkt_reg · scale for kkt_refined's second try.
template <typename T>
auto kkt_factor(State<T>& st, int n, int m, const typename Vec<T>::type& scale, T kkt_reg, int& nrows) {
  st.kdelta_small = kkt_reg * scale;
  return kkt_factor_at<T>(st, n, m, relative_shift<T>() * scale, nrows);
}

// (ux, ua) ← K_δ⁻¹ (rx, ra) with the factor of kkt_factor (in place allowed: ux = rx, ua = ra).
template <typename T>
void kkt_solve_once(State<T>& st, int n, int m, int nrows, const typename Vec<T>::type* rx,
                    const typename Vec<T>::type* ra, typename Vec<T>::type* ux, typename Vec<T>::type* ua) {
  using V = typename Vec<T>::type;
  for (int j = 0; j < n; ++j) st.t[j] = rx[j];
  for (int c = 0; c < nrows; ++c) {
    const int r = st.rows[c];
    const V* g = st.Gr + int64_t(r) * n;
    const V coef = st.act[r] * ra[r] * st.kinv;
    for (int j = 0; j < n; ++j) st.t[j] += coef * g[j];
  }
  tri_lower<T>(st.L, st.dL, n, st.t);
  tri_upper<T>(st.L, st.dL, n, st.t);
  for (int r = 0; r < m; ++r) ua[r] = ra[r];  // inactive rows (and rows active in no lane)
  for (int c = 0; c < nrows; ++c) {
    const int r = st.rows[c];
    const V* g = st.Gr + int64_t(r) * n;
    V d{};
    for (int j = 0; j < n; ++j) d += g[j] * st.t[j];
    ua[r] = st.act[r] > V{} ? (d - ra[r]) * st.kinv : ra[r];
  }
  for (int j = 0; j < n; ++j) ux[j] = st.t[j];
}

// (ρx, ρa) = (rx, ra) − K (ux, ua) with the exact matrix (δ = 0); ρa = 0 on inactive rows.
template <typename T>
void kkt_residual(State<T>& st, int n, int m, const typename Vec<T>::type* rx, const typename Vec<T>::type* ra,
                  const typename Vec<T>::type* ux, const typename Vec<T>::type* ua, typename Vec<T>::type* px,
                  typename Vec<T>::type* pa) {
  using V = typename Vec<T>::type;
  mat_vec<T>(st.Q, n, n, ux, st.t);
  for (int r = 0; r < m; ++r) st.b[r] = st.act[r] * ua[r];
  mat_t_vec<T>(st.Gr, m, n, st.b, st.t, true);
  for (int j = 0; j < n; ++j) px[j] = rx[j] - st.t[j];
  mat_vec<T>(st.Gr, m, n, ux, st.b);
  for (int r = 0; r < m; ++r) pa[r] = st.act[r] > V{} ? ra[r] - st.b[r] : V{};
}

// Refinement steps of the block's KKT solves (at most). Each contracts the error by about
// max(√ε · cond-like factors) (see kkt_factor), so more than the serial path's kRefinementSteps may
// be needed: with 3, planted vertex QPs (50 active rows on 50 variables) kept residuals just inside
// the polish tolerance and x 2e-6 off. The loop stops as soon as every lane is done, typically
// after 2 steps.
constexpr int kLaneRefinementSteps = 8;

// One solve with the current factor plus up to kLaneRefinementSteps refinement steps against the
// exact matrix; (ux, ua) ← the solution. Returns the lanes that converged (see the end).
template <typename T>
auto kkt_refine_pass(State<T>& st, int n, int m, int nrows, const typename Vec<T>::type* rx,
                     const typename Vec<T>::type* ra, const typename Vec<T>::type* ra0) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  const T eps = sizeof(T) == 4 ? T(1.2e-7) : T(2.3e-16);
  kkt_solve_once<T>(st, n, m, nrows, rx, ra0 != nullptr ? ra0 : ra, st.ux, st.ua);
  V prev{};  // the last correction's size (the first solve's, to start)
  for (int j = 0; j < n; ++j) prev = vmax(prev, vabs(st.ux[j]));
  for (int r = 0; r < m; ++r) prev = vmax(prev, vabs(st.ua[r]));
  // A lane that is done stops changing (its later corrections are discarded), so its result does
  // not depend on how long the other lanes of its block refine: a problem's answer is bitwise the
  // same in any batch (what makes sharded grasp datasets exact).
  decltype(prev < prev) frozen{}, conv{};  // all false
  for (int it = 0; it < kLaneRefinementSteps; ++it) {
    kkt_residual<T>(st, n, m, rx, ra, st.ux, st.ua, st.cx, st.ca);
    kkt_solve_once<T>(st, n, m, nrows, st.cx, st.ca, st.cx, st.ca);
    V dn{}, un{};
    for (int j = 0; j < n; ++j) {
      st.ux[j] = frozen ? st.ux[j] : st.ux[j] + st.cx[j];
      dn = vmax(dn, vabs(st.cx[j]));
      un = vmax(un, vabs(st.ux[j]));
    }
    for (int r = 0; r < m; ++r) {
      st.ua[r] = frozen ? st.ua[r] : st.ua[r] + st.ca[r];
      dn = vmax(dn, vabs(st.ca[r]));
      un = vmax(un, vabs(st.ua[r]));
    }
    // Done (= converged): the next correction is predicted below the rounding of u (this one
    // times the last contraction), or the corrections stalled at the rounding floor of the solve
    // (≤ 1e4 ε‖u‖, where they no longer shrink), or garbage (a lane whose factor failed: the
    // caller discards it; it must not keep the others iterating). A lane still not done after the
    // last step has not converged (δ‖K⁻¹‖ ≳ 1: its corrections stay near ‖u‖).
    const auto garbage = dn != dn;
    const auto floor = dn <= T(1e4) * eps * un;
    const auto done = (dn * vmin(dn / prev, splat<V>(T(1))) <= T(4) * eps * un) | (floor & (dn >= T(0.5) * prev)) | garbage;
    const auto last = it + 1 == kLaneRefinementSteps;
    const auto now = last ? ~frozen : ~frozen & done;
    conv = now ? done : conv;
    frozen |= now;
    if (!any(~frozen, W)) break;
    prev = dn;
  }
  return conv;
}

// Solve with up to kLaneRefinementSteps of refinement, stopping once every lane's next correction
// is predicted below the rounding of its solution (this one times the last contraction) or the
// corrections stall (they reached the rounding floor of the solve). A lane that did not converge
// — δ‖K⁻¹‖ ≳ 1: K nonsingular but ill conditioned, e.g. a vertex whose active rows are nearly
// dependent (planted QP n = 30: cond K 4e8, 2e-6 off after an accepted polish) — is factored
// again at the serial δ = kkt_reg · scale and solved again (the other lanes repeat their
// computation bit for bit: lanes do not interact). (ux, ua) ← solution; (cx, ca) ← the final
// exact residual. `ra0`, if given, replaces ra in the first (regularized) solve only; the
// refinement is against ra.
template <typename T>
void kkt_refined(State<T>& st, int n, int m, int nrows, const typename Vec<T>::type* rx,
                 const typename Vec<T>::type* ra, const typename Vec<T>::type* ra0 = nullptr) {
  constexpr int W = Vec<T>::W;
  const auto conv = kkt_refine_pass<T>(st, n, m, nrows, rx, ra, ra0);
  const auto redo = ~conv & (st.kdelta > st.kdelta_small);
  if (any(redo, W)) {
    kkt_factor_at<T>(st, n, m, redo ? st.kdelta_small : st.kdelta, nrows);
    kkt_refine_pass<T>(st, n, m, nrows, rx, ra, ra0);
  }
  kkt_residual<T>(st, n, m, rx, ra, st.ux, st.ua, st.cx, st.ca);
}

// max(1, |Q|, |G|) of the raw data (qp_ipm.h::data_scale; the KKT factor's δ is relative to this), lane by lane.
template <typename T>
typename Vec<T>::type kkt_scale(const State<T>& st, int n, int m) {
  using V = typename Vec<T>::type;
  V sc = splat<V>(T(1));
  for (int64_t e = 0; e < int64_t(n) * n; ++e) sc = vmax(sc, vabs(st.Q[e]));
  for (int64_t e = 0; e < int64_t(m) * n; ++e) sc = vmax(sc, vabs(st.Gr[e]));
  return sc;
}

// Whether blocks polish and differentiate with the block KKT solve above: float64 only. Its δ
// trades the solve's rounding (ε/δ) against the regularization error (δ‖K⁻¹‖); at float32's
// √ε ≈ 3e-4 there is no room between them (the earlier range-space solve, which squared the
// conditioning of the active rows instead, left a planted QP with 12 active rows on 12 variables
// 1e-3 off after an accepted polish, against 6e-5 through the LU), so float32 blocks use the serial
// code.
template <typename T>
constexpr bool block_kkt() { return sizeof(T) == 8; }

// Where to read problem `i`'s data: base pointers and batch strides (0: shared by the batch).
template <typename T>
struct BatchData {
  const T *Q, *q, *G, *h, *A, *b;
  int64_t sQ, sq, sG, sh, sA, sb;
  int n, m, p;
  // Problem i's pointers for the serial fallbacks.
  Problem<T> problem(int64_t i) const {
    return Problem<T>{Q + i * sQ, q + i * sq, G + i * sG, h + i * sh, A + i * sA, b + i * sb, n, m, p};
  }
};

// Interleave the block [i0, i0 + count) into st (lanes past `count` repeat the last problem): Q, q,
// G and A (into Gt, At, which the interior point scales in place), h and b (into h), and the raw
// rows [G; A] that the active-set KKT solves read (Gr).
template <typename T>
void interleave(const BatchData<T>& bd, int64_t i0, int count, State<T>& st) {
  constexpr int W = Vec<T>::W;
  const int n = bd.n, m = bd.m, p = bd.p;
  for (int l = 0; l < W; ++l) {
    const int64_t i = i0 + (l < count ? l : count - 1);
    const T *Q = bd.Q + i * bd.sQ, *q = bd.q + i * bd.sq, *G = bd.G + i * bd.sG, *h = bd.h + i * bd.sh;
    for (int64_t e = 0; e < int64_t(n) * n; ++e) st.Q[e][l] = Q[e];
    for (int j = 0; j < n; ++j) st.q[j][l] = q[j];
    for (int64_t e = 0; e < int64_t(m) * n; ++e) st.Gt[e][l] = G[e];
    for (int r = 0; r < m; ++r) st.h[r][l] = h[r];
    const T *A = bd.A + i * bd.sA, *b = bd.b + i * bd.sb;
    for (int64_t e = 0; e < int64_t(p) * n; ++e) st.At[e][l] = A[e];
    for (int e = 0; e < p; ++e) st.h[m + e][l] = b[e];
  }
  for (int64_t e = 0; e < int64_t(m) * n; ++e) st.Gr[e] = st.Gt[e];
  for (int64_t e = 0; e < int64_t(p) * n; ++e) st.Gr[int64_t(m) * n + e] = st.At[e];
}

// The polish of a block (qp_ipm.h::polish, first round, for all lanes at once): guess the active
// set from the interior-point result (λ_i > h_i − g_iᵀx), solve its KKT system (kkt_factor,
// refined), and accept a lane under the serial test (primal feasible, multipliers ≥ 0, exact KKT
// residual, all to polish_tol). A lane with the right x but wrong-signed multipliers (dependent
// active rows) gets the serial NNLS multiplier repair; every other lane (rejected, H ill
// conditioned for the block solve) runs the serial polish with its correction rounds (`rounds`;
// with serial_rest = false it is left to the caller with its status unchanged).
// x_out, lam_out, status_out hold the interior-point result of the block's problems on entry;
// guess: λ̂ is ±∞ (guess_block), so the multiplier-shifted second solve is skipped.
template <typename T>
void polish_block(const BatchData<T>& bd, int64_t i0, int count, const Settings<T>& set, State<T>& st, T* pw,
                  T* x_out, T* lam_out, T* nu_out, int8_t* status_out, int rounds = kPolishRounds,
                  bool serial_rest = true, bool guess = false) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  const int n = bd.n, m = bd.m, p = bd.p, mk = m + p;
  bool any_eligible = false;
  for (int l = 0; l < count; ++l)
    any_eligible = any_eligible || status_out[l] == kSolved || status_out[l] == kMaxIter;
  if (!any_eligible) return;
  // The interior-point x, λ (lanes past `count` repeat the last problem) and the active set
  // (equality rows always active).
  for (int l = 0; l < W; ++l) {
    const int src = l < count ? l : count - 1;
    for (int j = 0; j < n; ++j) st.xs[j][l] = x_out[int64_t(src) * n + j];
    for (int r = 0; r < m; ++r) st.ls[r][l] = lam_out[int64_t(src) * m + r];
  }
  mat_vec<T>(st.Gr, m, n, st.xs, st.gx);
  const V zero{}, one = splat<V>(T(1));
  for (int r = 0; r < m; ++r) st.act[r] = st.ls[r] > st.h[r] - st.gx[r] ? one : zero;
  for (int e = m; e < mk; ++e) st.act[e] = one;
  int nrows = 0;
  const V kscale = kkt_scale<T>(st, n, mk);
  const auto ok = kkt_factor<T>(st, n, mk, kscale, set.kkt_reg, nrows);
  for (int j = 0; j < n; ++j) st.rx[j] = -st.q[j];
  for (int r = 0; r < mk; ++r) st.ra[r] = st.act[r] * st.h[r];
  kkt_refined<T>(st, n, mk, nrows, st.rx, st.ra);
  // The serial acceptance test, lane by lane (sign and violation on the inequality rows only).
  const V inf = splat<V>(ol_inf<T>());
  const T tol = set.polish_tol;
  V hn{};
  for (int r = 0; r < m; ++r) hn = vmax(hn, vabs(st.h[r]));
  V rhs_n{};
  auto primal_ok = ok, accept = ok;
  using Mask = decltype(primal_ok);
  auto evaluate = [&](Mask& primal_ok, Mask& accept) {
    V res{}, viol{}, neg{}, ln{};
    rhs_n = V{};
    auto finite = ok;
    for (int j = 0; j < n; ++j) {
      res = vmax(res, vabs(st.cx[j]));
      rhs_n = vmax(rhs_n, vabs(st.q[j]));
      finite &= vabs(st.ux[j]) < inf;
    }
    mat_vec<T>(st.Gr, m, n, st.ux, st.gx);
    for (int r = 0; r < mk; ++r) {
      const auto a = st.act[r] > zero;
      res = vmax(res, vabs(st.ca[r]));
      rhs_n = vmax(rhs_n, a ? vabs(st.h[r]) : zero);
      finite &= ~a | (vabs(st.ua[r]) < inf);
      if (r >= m) continue;
      viol = vmax(viol, st.gx[r] - st.h[r]);
      neg = vmax(neg, a ? -st.ua[r] : zero);
      ln = vmax(ln, a ? vabs(st.ua[r]) : zero);
    }
    primal_ok = finite & (viol <= tol * (one + hn)) & (res <= tol * (one + rhs_n));
    accept = primal_ok & (neg <= tol * (one + ln));
  };
  evaluate(primal_ok, accept);
  // Right x, wrong-signed multipliers (dependent active rows, e.g. a zero-force grasp contact):
  // solve once more with G_𝒜x − δλ = h_𝒜 − δλ̂ in the first (regularized) solve, which picks the
  // multipliers nearest to the interior point's λ̂ ≥ 0 instead of minimum-norm-like ones with
  // arbitrary signs; the refinement is against the exact h_𝒜, so x does not change (as in the
  // serial polish). Lanes keep the second solution where it is accepted.
  const auto retry = primal_ok & ~accept;
  if (!guess && any(retry, W)) {  // (a guess's λ̂ = ±∞: the shifted solve would repeat the first)
    for (int j = 0; j < n; ++j) st.u1x[j] = st.ux[j];
    for (int r = 0; r < mk; ++r) st.u1a[r] = st.ua[r];
    const V rhs_n1 = rhs_n;
    const V delta = st.kdelta;
    V* ra0 = st.gx;  // free until evaluate
    for (int r = 0; r < m; ++r)
      ra0[r] = vabs(st.ls[r]) < inf ? st.ra[r] - st.act[r] * delta * st.ls[r] : st.ra[r];
    for (int e = m; e < mk; ++e) ra0[e] = st.ra[e];
    kkt_refined<T>(st, n, mk, nrows, st.rx, st.ra, ra0);
    Mask primal_ok2 = ok, accept2 = ok;
    evaluate(primal_ok2, accept2);
    const auto take = retry & accept2;  // else the first solution, for the repair / serial polish
    for (int j = 0; j < n; ++j) st.ux[j] = take ? st.ux[j] : st.u1x[j];
    for (int r = 0; r < mk; ++r) st.ua[r] = take ? st.ua[r] : st.u1a[r];
    accept = take ? accept2 : accept;
    rhs_n = take ? rhs_n : rhs_n1;
  }
  const int64_t N0 = int64_t(n) + m + p;
  for (int l = 0; l < count; ++l) {
    if (!(status_out[l] == kSolved || status_out[l] == kMaxIter)) continue;
    T* x = x_out + int64_t(l) * n;
    T* lam = lam_out + int64_t(l) * m;
    T* nu = nu_out + int64_t(l) * p;
    const Problem<T> d = bd.problem(i0 + l);
    bool done = false;
    if (accept[l]) {
      for (int j = 0; j < n; ++j) x[j] = st.ux[j][l];
      for (int r = 0; r < m; ++r) lam[r] = st.act[r][l] > T(0) ? ol_max(st.ua[r][l], T(0)) : T(0);
      for (int e = 0; e < p; ++e) nu[e] = st.ua[m + e][l];
      done = true;
    } else if (primal_ok[l]) {
      // Compact (x, λ_𝒜, ν) for the repair: u at pw, the active rows' indices after it, scratch next.
      T* u = pw;
      int* act = reinterpret_cast<int*>(pw + N0);
      T* scratch = pw + 2 * N0;
      int k = 0;
      for (int r = 0; r < m; ++r)
        if (st.act[r][l] > T(0)) act[k++] = r;
      for (int j = 0; j < n; ++j) u[j] = st.ux[j][l];
      for (int a = 0; a < k; ++a) u[n + a] = st.ua[act[a]][l];
      for (int e = 0; e < p; ++e) u[n + k + e] = st.ua[m + e][l];
      const int64_t need = int64_t(k + p) * (k + p) + 6 * int64_t(k + p) + 2 * int64_t(n);
      if (need <= N0 * N0 &&
          repair_multipliers(d, act, k, tol * (1 + rhs_n[l]), u, scratch, polish_scalars(n, m, p) - 2 * N0)) {
        for (int j = 0; j < n; ++j) x[j] = u[j];
        for (int r = 0; r < m; ++r) lam[r] = T(0);
        for (int a = 0; a < k; ++a) lam[act[a]] = ol_max(u[n + a], T(0));
        for (int e = 0; e < p; ++e) nu[e] = u[n + k + e];
        done = true;
      }
    }
    if (done) {
      status_out[l] = kSolved;
    } else if (serial_rest) {
      polish(SerialGroup{}, d, set, pw, x, lam, nu, status_out + l, rounds, static_cast<T*>(nullptr));
    }
  }
}

// The warm start's guessed active sets for the block [i0, i0 + count) (csrc/qp_cpu_derivatives.cpp::
// qp_active_set_solve; guess: count × m, nonzero = active): polish_block from x = 0 and λ̂ = ±∞, so
// that its guess λ̂_r > h_r − g_rᵀx is exactly the given one, every lane entering as an
// iteration-limited one; rejected lanes go through the serial polish (`rounds` rounds from the same
// guess), or with serial_rest = false are left to the caller. Status kSolved with x, λ, ν where
// accepted, else kMaxIter with zeros. float64 (block_kkt).
template <typename T>
void guess_block(const BatchData<T>& bd, int64_t i0, int count, const T* guess, const Settings<T>& set,
                 typename Vec<T>::type* wv, T* pw, T* x_out, T* lam_out, T* nu_out, int8_t* status_out, int rounds,
                 bool serial_rest = true) {
  const int n = bd.n, m = bd.m, p = bd.p;
  State<T> st = carve<T>(wv, n, m, p);
  interleave<T>(bd, i0, count, st);
  for (int l = 0; l < count; ++l) {
    for (int j = 0; j < n; ++j) x_out[int64_t(l) * n + j] = T(0);
    for (int r = 0; r < m; ++r) lam_out[int64_t(l) * m + r] = guess[int64_t(l) * m + r] != T(0) ? ol_inf<T>() : -ol_inf<T>();
    for (int e = 0; e < p; ++e) nu_out[int64_t(l) * p + e] = T(0);
    status_out[l] = kMaxIter;
  }
  polish_block<T>(bd, i0, count, set, st, pw, x_out, lam_out, nu_out, status_out, rounds, serial_rest, true);
  for (int l = 0; l < count; ++l) {
    if (status_out[l] == kSolved) continue;
    status_out[l] = kMaxIter;
    for (int j = 0; j < n; ++j) x_out[int64_t(l) * n + j] = T(0);
    for (int r = 0; r < m; ++r) lam_out[int64_t(l) * m + r] = T(0);
    for (int e = 0; e < p; ++e) nu_out[int64_t(l) * p + e] = T(0);
  }
}

// Reverse-mode gradients of the problems [i0, i0 + count) (qp_ipm.h::kkt_backward for a block):
// active set M = 1[λ > h − Gx], u = K⁻¹ (g_x, M g_λ, g_ν) with the active-set KKT matrix
// (kkt_factor, refined), then per problem ∇Q −= ½(u_x xᵀ + x u_xᵀ), ∇q −= u_x,
// ∇G −= M(λ u_xᵀ + u_λ xᵀ), ∇h += M u_λ, ∇A −= ν u_xᵀ + u_ν xᵀ, ∇b += u_ν, added into the pointers
// out(i) returns ({dQ, dq, dG, dh, dA, db}; shared inputs may return one buffer for all; null: not
// wanted). Problems with status ≠ 0 contribute nothing; a lane whose H is singular for the block solve,
// or whose refined residual stays above √ε, runs the serial kkt_backward. gx, glam, gnu may be null.
template <typename T, typename Out>
void backward_block(const BatchData<T>& bd, const T* x, const T* lam, const T* nu, const int8_t* status,
                    const T* gx, const T* glam, const T* gnu, int64_t i0, int count, T kkt_reg,
                    typename Vec<T>::type* wv, T* pw, const Out& out) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  const int n = bd.n, m = bd.m, p = bd.p, mk = m + p;
  bool any_ok = false;
  for (int l = 0; l < count; ++l) any_ok = any_ok || status[i0 + l] == kSolved;
  if (!any_ok) return;
  State<T> st = carve<T>(wv, n, m, p);
  for (int l = 0; l < W; ++l) {
    const int64_t i = i0 + (l < count ? l : count - 1);
    const T *Q = bd.Q + i * bd.sQ, *G = bd.G + i * bd.sG, *h = bd.h + i * bd.sh, *A = bd.A + i * bd.sA;
    for (int64_t e = 0; e < int64_t(n) * n; ++e) st.Q[e][l] = Q[e];
    for (int64_t e = 0; e < int64_t(m) * n; ++e) st.Gr[e][l] = G[e];
    for (int64_t e = 0; e < int64_t(p) * n; ++e) st.Gr[int64_t(m) * n + e][l] = A[e];
    for (int r = 0; r < m; ++r) {
      st.h[r][l] = h[r];
      st.ls[r][l] = lam[i * m + r];
      st.ra[r][l] = glam != nullptr ? glam[i * m + r] : T(0);
    }
    for (int e = 0; e < p; ++e) st.ra[m + e][l] = gnu != nullptr ? gnu[i * p + e] : T(0);
    for (int j = 0; j < n; ++j) {
      st.xs[j][l] = x[i * n + j];
      st.rx[j][l] = gx != nullptr ? gx[i * n + j] : T(0);
    }
  }
  mat_vec<T>(st.Gr, m, n, st.xs, st.gx);
  const V zero{}, one = splat<V>(T(1));
  for (int r = 0; r < m; ++r) {
    st.act[r] = st.ls[r] > st.h[r] - st.gx[r] ? one : zero;
    st.ra[r] *= st.act[r];
  }
  for (int e = m; e < mk; ++e) st.act[e] = one;
  int nrows = 0;
  auto ok = kkt_factor<T>(st, n, mk, kkt_scale<T>(st, n, mk), kkt_reg, nrows);
  kkt_refined<T>(st, n, mk, nrows, st.rx, st.ra);
  // No acceptance test follows here (as the polish has): a lane whose refined solution still
  // leaves a residual above √ε (relative) — an inconsistent right-hand side on dependent rows, a
  // slow refinement — takes the serial solve instead.
  V res{}, rn{};
  for (int j = 0; j < n; ++j) {
    res = vmax(res, vabs(st.cx[j]));
    rn = vmax(rn, vabs(st.rx[j]));
  }
  for (int r = 0; r < mk; ++r) {
    res = vmax(res, vabs(st.ca[r]));
    rn = vmax(rn, vabs(st.ra[r]));
  }
  ok &= res <= relative_shift<T>() * (one + rn);
  for (int l = 0; l < count; ++l) {
    const int64_t i = i0 + l;
    if (status[i] != kSolved) continue;
    const auto o = out(i);
    T *dQ = o[0], *dq = o[1], *dG = o[2], *dh = o[3], *dA = o[4], *db = o[5];
    if (!ok[l]) {
      kkt_backward(SerialGroup{}, bd.problem(i), x + i * n, lam + i * m, nu + i * p,
                   gx != nullptr ? gx + i * n : nullptr, glam != nullptr ? glam + i * m : nullptr,
                   gnu != nullptr ? gnu + i * p : nullptr, kkt_reg, dQ, dq, dG, dh, dA, db, pw);
      continue;
    }
    const T* xi = x + i * n;
    const T* li = lam + i * m;
    const T* ni = nu + i * p;
    for (int a = 0; a < n; ++a) {
      const T ua = st.ux[a][l];
      if (dQ != nullptr)
        for (int b = 0; b < n; ++b) dQ[a * n + b] -= T(0.5) * (ua * xi[b] + xi[a] * st.ux[b][l]);
      if (dq != nullptr) dq[a] -= ua;
    }
    for (int r = 0; r < m; ++r) {
      if (!(st.act[r][l] > T(0))) continue;
      const T lr = li[r], ur = st.ua[r][l];
      if (dG != nullptr)
        for (int j = 0; j < n; ++j) dG[r * n + j] -= lr * st.ux[j][l] + ur * xi[j];
      if (dh != nullptr) dh[r] += ur;
    }
    for (int e = 0; e < p; ++e) {
      const T ne = ni[e], ue = st.ua[m + e][l];
      if (dA != nullptr)
        for (int j = 0; j < n; ++j) dA[e * n + j] -= ne * st.ux[j][l] + ue * xi[j];
      if (db != nullptr) db[e] += ue;
    }
  }
}

// Solve the problems [i0, i0 + count) (count ≤ W; the other lanes repeat the last problem and are
// discarded). Outputs go to x[i·n], lam[i·m], status[i], iters[i] for i in the block, then the serial
// polish runs per problem (with `keep`, the kept-factor slots of factor_size scalars, or null).
// `wv`: block_vectors(n, m) vectors; `pw`: polish_scalars(n, m) scalars.
template <typename T>
void solve_block(const BatchData<T>& bd, int64_t i0, int count, const Settings<T>& set,
                 typename Vec<T>::type* wv, T* pw, T* x_out, T* lam_out, T* nu_out, int8_t* status_out,
                 int32_t* iters_out, T* keep) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  const int n = bd.n, m = bd.m, p = bd.p;
  State<T> st = carve<T>(wv, n, m, p);
  const V zero{}, one = splat<V>(T(1)), inf = splat<V>(ol_inf<T>());

  interleave<T>(bd, i0, count, st);
  // Row scales and G̃ = diag(gs) G; δ = kkt_reg · max(1, |Q|, |G̃|).
  V scale = one;
  for (int64_t e = 0; e < int64_t(n) * n; ++e) scale = vmax(scale, vabs(st.Q[e]));
  // Unit rows in place: M ← diag(s) M with s = 1/‖row‖ (1 for a zero row), rhs_s = s ∘ rhs.
  auto unit_rows = [&](V* M, int rows, const V* rhs, V* s, V* rhs_s) {
    for (int r = 0; r < rows; ++r) {
      V* Mr = M + int64_t(r) * n;
      V acc{};
      for (int j = 0; j < n; ++j) acc += Mr[j] * Mr[j];
      const V sr = acc > zero ? one / vsqrt<T>(acc) : one;
      s[r] = sr;
      for (int j = 0; j < n; ++j) {
        Mr[j] *= sr;
        scale = vmax(scale, vabs(Mr[j]));
      }
      rhs_s[r] = rhs[r] * sr;
    }
  };
  unit_rows(st.Gt, m, st.h, st.gs, st.hs);      // G̃, h̃
  unit_rows(st.At, p, st.h + m, st.as, st.bs);  // Ã, b̃
  const V delta = set.kkt_reg * scale;

  // Initial point: W = I, x = K⁻¹(−q + G̃ᵀh̃ − Ãᵀy) with Ãx = b̃, s = h̃ − G̃x and z = −(h̃ − G̃x),
  // shifted and balanced (qp_ipm.h: start_balance).
  for (int r = 0; r < m; ++r) st.w[r] = one;
  auto ok = factor(st, n, m, p, delta);
  for (int j = 0; j < n; ++j) st.x[j] = -st.q[j];
  for (int e = 0; e < p; ++e) st.re[e] = -st.bs[e];
  gt_times(st, n, m, st.hs, st.x, true);
  reduced_solve(st, n, p, st.x, st.re, st.y);
  g_times(st, n, m, st.x, st.tm);
  V smin = inf, smax = -inf;
  for (int r = 0; r < m; ++r) {
    st.s[r] = st.hs[r] - st.tm[r];
    smin = vmin(smin, st.s[r]);
    smax = vmax(smax, st.s[r]);
  }
  V a_s, a_z;
  start_offsets<T>(smin, smax, a_s, a_z);
  V sum_sz = zero, sum_s = zero, sum_z = zero;
  for (int r = 0; r < m; ++r) {
    const V s0 = st.s[r], st_r = s0 + a_s, zt_r = -s0 + a_z;
    sum_sz += st_r * zt_r;
    sum_s += st_r;
    sum_z += zt_r;
  }
  V ds, dz, lo;
  start_balance<T>(smin, smax, sum_sz, sum_s, sum_z, ds, dz, lo);
  for (int r = 0; r < m; ++r) {
    const V s0 = st.s[r];
    st.s[r] = vmax(s0 + a_s + ds, lo);
    st.z[r] = vmax(-s0 + a_z + dz, lo);
  }
  V qn{}, hn{}, bn{};
  for (int j = 0; j < n; ++j) qn = vmax(qn, vabs(st.q[j]));
  for (int r = 0; r < m; ++r) hn = vmax(hn, vabs(st.hs[r]));
  for (int e = 0; e < p; ++e) bn = vmax(bn, vabs(st.bs[e]));

  // Kept factors: zeros and "no factor" until a polish keeps one (as solve_qp).
  const int64_t fs = factor_size(n, m, p);
  for (int l = 0; keep != nullptr && l < count; ++l) {
    T* kp = keep + int64_t(l) * fs;
    for (int64_t e = 0; e < fs - 1; ++e) kp[e] = T(0);
    kp[fs - 1] = T(-1);
  }
  auto keep_of = [&](int l) { return keep != nullptr ? keep + int64_t(l) * fs : static_cast<T*>(nullptr); };

  // Per-lane status: `active` lanes iterate; the others keep their code and iteration count.
  auto active = ok;
  auto rescue = ok & ~ok;  // lanes whose iterate broke or factorization failed inside the loop (see the end)
  V code = ok ? splat<V>(T(kMaxIter)) : splat<V>(T(kNumericalError));
  V iters{};
  V best = inf, best_sz = inf, best_cert = inf, best_res = inf, stall{};
  V merit_best = inf;  // and its iterate xb, zb, yb: what an iteration-limited lane is polished from
  const T tol = set.tol, itol = set.inf_tol;
  // Early polish (float32 only, see the header): the serial rule per lane, with the serial polish.
  const bool early = set.polish && !block_kkt<T>();
  V loose = splat<V>(set.polish_start);
  bool polished[W] = {};  // lanes whose outputs an early polish already wrote
  int it = 0;
  for (; any(active, W) && it <= set.max_iter; ++it) {
    const V itv = splat<V>(T(it));
    auto finish = [&](decltype(active) cond, int c) {
      const auto now = active & cond;
      code = now ? splat<V>(T(c)) : code;
      iters = now ? itv : iters;
      active &= ~cond;
    };
    // Residuals.
    mat_vec<T>(st.Q, n, n, st.x, st.Qx);
    g_times(st, n, m, st.x, st.tm);          // G̃x
    gt_times(st, n, m, st.z, st.tn, false);  // G̃ᵀz
    V Axn{}, ren{}, by{}, yy{};
    if (p > 0) {
      mat_vec<T>(st.At, p, n, st.x, st.re);       // Ãx
      mat_t_vec<T>(st.At, p, n, st.y, st.tn, true);  // + Ãᵀy
      for (int e = 0; e < p; ++e) {
        Axn = vmax(Axn, vabs(st.re[e]));
        st.re[e] -= st.bs[e];
        ren = vmax(ren, vabs(st.re[e]));
        by += st.bs[e] * st.y[e];
        yy += st.y[e] * st.y[e];
      }
    }
    V Gxn{}, Qxn{}, Gtzn{}, Gx_pos{}, rpn{}, rdn{};
    V sz{}, qx{}, xQx{}, hz{}, xx{}, ss{};
    for (int i = 0; i < n; ++i) {
      Qxn = vmax(Qxn, vabs(st.Qx[i]));
      Gtzn = vmax(Gtzn, vabs(st.tn[i]));
      st.rd[i] = st.Qx[i] + st.q[i] + st.tn[i];
      rdn = vmax(rdn, vabs(st.rd[i]));
      qx += st.q[i] * st.x[i];
      xQx += st.x[i] * st.Qx[i];
      xx += st.x[i] * st.x[i];
    }
    for (int r = 0; r < m; ++r) {
      Gxn = vmax(Gxn, vabs(st.tm[r]));
      Gx_pos = vmax(Gx_pos, st.tm[r]);
      st.rp[r] = st.tm[r] + st.s[r] - st.hs[r];
      rpn = vmax(rpn, vabs(st.rp[r]));
      sz += st.s[r] * st.z[r];
      hz += st.hs[r] * st.z[r];
      ss += st.s[r] * st.s[r];
    }
    const V mu = sz / T(m);
    const V gap = sz / (one + vabs(T(0.5) * xQx + qx));
    const V pres = vmax(rpn / (one + vmax(hn, Gxn)), ren / (one + vmax(bn, Axn)));
    const V dres = rdn / (one + vmax(vmax(qn, Qxn), Gtzn));
    const auto converged = (pres <= tol) & (dres <= tol) & (gap <= tol);
    const V t_p = -(hz + by);
    auto primal_inf = (t_p > zero) & (Gtzn <= itol * t_p);
    const V ray = vmax(vmax(Qxn, Axn), vmax(Gx_pos, zero));
    auto dual_inf = (qx < zero) & (ray <= itol * (-qx));
    // A claimed certificate counts only above the rounding of its terms (serial above_cancellation).
    if (any(active & primal_inf, W)) {
      V size{};
      for (int r = 0; r < m; ++r) size += vabs(st.hs[r] * st.z[r]);
      for (int e = 0; e < p; ++e) size += vabs(st.bs[e] * st.y[e]);
      primal_inf &= t_p > itol * size;
    }
    if (any(active & dual_inf, W)) {
      V size{};
      for (int j = 0; j < n; ++j) size += vabs(st.q[j] * st.x[j]);
      dual_inf &= -qx > itol * size;
    }
    const V total = sz + xx + yy + ss;
    const auto broken = ~(vabs(total) < inf);
    rescue |= active & broken;  // (serial: a broken iterate goes to the polish like an unfactorable one)
    finish(broken, kNumericalError);
    finish(converged, kSolved);
    if (early) {
      const auto want = active & (loose > tol) & (pres <= loose) & (dres <= loose) & (gap <= loose);
      if (any(want, W)) {
        loose = want ? loose * T(1e-3) : loose;
        for (int l = 0; l < W; ++l) {
          if (!want[l]) continue;
          if (l >= count) { active[l] = 0; continue; }  // a padding lane: nothing to write
          T* x = x_out + int64_t(l) * n;
          T* lam = lam_out + int64_t(l) * m;
          T* nu = nu_out + int64_t(l) * p;
          for (int j = 0; j < n; ++j) x[j] = st.x[j][l];
          for (int r = 0; r < m; ++r) lam[r] = st.z[r][l] * st.gs[r][l];
          for (int e = 0; e < p; ++e) nu[e] = st.y[e][l] * st.as[e][l];
          int8_t stl = kMaxIter;
          if (polish(SerialGroup{}, bd.problem(i0 + l), set, pw, x, lam, nu, &stl, kEarlyPolishRounds, keep_of(l))) {
            polished[l] = true;
            code[l] = T(kSolved);
            iters[l] = T(it);
            active[l] = 0;
          }
        }
      }
    }
    finish(primal_inf, kPrimalInfeasible);
    finish(dual_inf, kDualInfeasible);
    // Stall rule (serial solve_qp): progress in the merit, sᵀz, the certificate ratio or the residual.
    const V merit = vmax(vmax(pres, dres), gap);
    const auto lower = active & (merit < merit_best);  // (serial solve_qp's best-iterate rule)
    if (any(lower, W)) {
      merit_best = lower ? merit : merit_best;
      for (int j = 0; j < n; ++j) st.xb[j] = lower ? st.x[j] : st.xb[j];
      for (int r = 0; r < m; ++r) st.zb[r] = lower ? st.z[r] : st.zb[r];
      for (int e = 0; e < p; ++e) st.yb[e] = lower ? st.y[e] : st.yb[e];
    }
    const V cert = vmin(t_p > zero ? Gtzn / t_p : inf, qx < zero ? ray / (-qx) : inf);
    const V res = vmax(pres, dres);
    const auto progress = (merit < T(kStallDecrease) * best) | (sz < T(kStallDecrease) * best_sz) |
                          (cert < T(kStallDecrease) * best_cert) | (res < T(kStallDecrease) * best_res);
    best = progress ? vmin(best, merit) : best;
    best_sz = progress ? vmin(best_sz, sz) : best_sz;
    best_cert = progress ? vmin(best_cert, cert) : best_cert;
    best_res = progress ? vmin(best_res, res) : best_res;
    stall = progress ? zero : stall + one;
    finish((itv == splat<V>(T(set.max_iter))) | (stall >= T(kStallIters)), kMaxIter);
    if (!any(active, W)) break;

    // Factor the reduced system at W = Z S⁻¹.
    // One division per row and iteration: w = z/s and the r_c/s of both Newton steps use 1/s.
    for (int r = 0; r < m; ++r) {
      st.sinv[r] = T(1) / st.s[r];
      st.w[r] = st.z[r] * st.sinv[r];
    }
    const auto failed = ~factor(st, n, m, p, delta);
    rescue |= active & failed;
    finish(failed, kNumericalError);
    if (!any(active, W)) break;
    // Predictor.
    for (int r = 0; r < m; ++r) st.rc[r] = st.s[r] * st.z[r];
    newton_step(st, n, m, p, st.rc, st.dxa, st.dsa, st.dza, st.dya);
    const V aa = vmin(one, vmin(max_step<T>(st.s, st.dsa, m), max_step<T>(st.z, st.dza, m)));
    V mu_aff{};
    for (int r = 0; r < m; ++r) mu_aff += (st.s[r] + aa * st.dsa[r]) * (st.z[r] + aa * st.dza[r]);
    mu_aff /= T(m);
    const V ratio = vmin(vmax(mu_aff / mu, zero), one);
    const V sigma = ratio * ratio * ratio;
    // Corrector.
    for (int r = 0; r < m; ++r) st.rc[r] = st.s[r] * st.z[r] + st.dsa[r] * st.dza[r] - sigma * mu;
    newton_step(st, n, m, p, st.rc, st.dx, st.ds, st.dz, st.dy);
    const V alpha = vmin(one, set.step_to_boundary * vmin(max_step<T>(st.s, st.ds, m), max_step<T>(st.z, st.dz, m)));
    // Frozen lanes keep their iterate exactly (a select, not α = 0: their steps may be NaN).
    for (int j = 0; j < n; ++j) st.x[j] = active ? st.x[j] + alpha * st.dx[j] : st.x[j];
    for (int r = 0; r < m; ++r) {
      st.s[r] = active ? st.s[r] + alpha * st.ds[r] : st.s[r];
      st.z[r] = active ? st.z[r] + alpha * st.dz[r] : st.z[r];
    }
    for (int e = 0; e < p; ++e) st.y[e] = active ? st.y[e] + alpha * st.dy[e] : st.y[e];
  }
  // Lanes still active here ran out of iterations (the serial loop's `it > max_iter` exit).
  iters = active ? splat<V>(T(it)) : iters;

  // Write the interior-point result, then polish.
  // As solve_qp: a lane whose iterate broke or whose factorization failed late goes to the polish
  // like an iteration-limited one (if it has a finite best iterate), and is NUMERICAL_ERROR again
  // unless the polish accepts it; both get their lowest-merit iterate.
  for (int l = 0; l < count; ++l) {
    const bool rescued = rescue[l] && set.polish && merit_best[l] < ol_inf<T>();
    status_out[l] = rescued ? int8_t(kMaxIter) : int8_t(code[l]);
    iters_out[l] = int32_t(iters[l]);
    if (polished[l]) continue;  // finished by an early polish: outputs written
    const bool use_best = (code[l] == T(kMaxIter) || rescue[l]) && merit_best[l] < ol_inf<T>();
    const V* xo = use_best ? st.xb : st.x;
    const V* zo = use_best ? st.zb : st.z;
    const V* yo = use_best ? st.yb : st.y;
    T* x = x_out + int64_t(l) * n;
    T* lam = lam_out + int64_t(l) * m;
    for (int j = 0; j < n; ++j) x[j] = xo[j][l];
    for (int r = 0; r < m; ++r) lam[r] = zo[r][l] * st.gs[r][l];
    for (int e = 0; e < p; ++e) nu_out[int64_t(l) * p + e] = yo[e][l] * st.as[e][l];
  }
  if (!set.polish) return;
  if (keep == nullptr && block_kkt<T>()) {
    polish_block<T>(bd, i0, count, set, st, pw, x_out, lam_out, nu_out, status_out);
  } else {
    // float32, or a kept factor (the serial polish's LU): polish problem by problem.
    for (int l = 0; l < count; ++l) {
      if (polished[l]) continue;
      polish(SerialGroup{}, bd.problem(i0 + l), set, pw, x_out + int64_t(l) * n, lam_out + int64_t(l) * m,
             nu_out + int64_t(l) * p, status_out + l, kPolishRounds, keep_of(l));
    }
  }
  for (int l = 0; l < count; ++l)
    if (rescue[l] && status_out[l] == kMaxIter) status_out[l] = kNumericalError;
}

#undef OL_LANE_INLINE

}  // namespace lanes
}  // namespace optlayers

#endif  // !__CUDACC__
