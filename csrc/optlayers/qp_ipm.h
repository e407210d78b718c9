// optlayers native QP kernel: the per-problem solver, header-only and torch-free.
//
// One problem:   minimize ½xᵀQx + qᵀx   s.t.   Ax = b (p rows),   Gx ≤ h (m rows)
//
// This file compiles as host C++ (the CPU op loops over the batch, one problem per thread) and
// as CUDA device code (a warp or a block cooperates on one problem). The cooperation is
// abstracted by a "thread group" `Grp` with
//     rank(), size()        this thread's index in the group, the group's size
//     sync()                barrier (no-op for a serial group)
//     sum(v), max(v)        all-reduce over the group (every member gets the result)
//     lanes()               width L of the group's lane sets: ranks [kL, kL + L) form one (a warp
//                           on the GPU, L = 32; 1 for a serial group); L divides size()
//     lane_sum(v)           all-reduce over this member's lane set only (warp shuffles on the GPU;
//                           all L members of the set call it, the other sets need not)
//     lane_sync()           barrier of this member's lane set only (__syncwarp on the GPU; same rule)
//     argmax(v, i)          all-reduce of (v, i) pairs: the i of the largest v, the smallest i among ties
//     kOneLaneSet           (static) whether the group is a single lane set (a warp): the Cholesky and
//                           LU factorizations then keep one member per row (see cholesky)
// and every loop is written `for (i = g.rank(); i < N; i += g.size())`, followed by g.sync()
// before other members read what it wrote. With SerialGroup (size 1) this is plain serial code.
// Loops over matrix rows whose inner loop runs over a row's entries give each row to one lane set
// and the entries to its lanes (see Lanes), so that a warp reads consecutive addresses.
//
// The algorithm is the one of the pure-PyTorch backend (optlayers/_src/qp/backends/torch_ipm.py;
// see its docstring for the maths): Mehrotra predictor-corrector on the reduced system
// K = Q + G̃ᵀWG̃ (Cholesky) with a Schur complement for the equalities, unit-row scaling
// G̃ = D_G G, Ã = D_A A applied on the fly (never copied), infeasibility certificates, then an
// active-set polish (LU with partial pivoting of the compact active-set KKT matrix plus
// iterative refinement). The same compact KKT solve serves the backward pass (kkt_solve).
//
// Memory: everything lives in a caller-provided workspace of workspace_size(n, m, p) scalars.
// Matrices are row-major.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define OL_HD __host__ __device__
#define OL_INLINE __forceinline__
#define OL_NOINLINE __noinline__
#else
#define OL_HD
#define OL_INLINE inline
#define OL_NOINLINE
#endif

// Vectorize floating-point sum reductions on the host without -ffast-math (OpenMP SIMD).
#define OL_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) && !defined(__CUDACC__)
#define OL_SIMD_SUM(...) OL_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#else
#define OL_SIMD_SUM(...)
#endif

namespace optlayers {

// Status codes, identical to optlayers.Status.
enum : int8_t {
  kSolved = 0,
  kPrimalInfeasible = 1,
  kDualInfeasible = 2,
  kMaxIter = 3,
  kNumericalError = 4,
};

// QPOptions.max_iter's default (a test compares them): a caller who lowers max_iter below it keeps
// MAX_ITER for the problems that used the whole budget (no float64 re-solve, no certificate search).
constexpr int kDefaultMaxIter = 50;

// float64's default tolerances (optlayers/_src/tolerances.py; a test compares them): what a float32
// problem the float32 solve left unsolved is solved again with, in double (qp_cpu_solve_impl.h,
// qp_cuda_binding.cpp: finish_left_in_double).
// A converged float64 problem the final polish left at the interior point's iterate is solved once
// more at kRetryTolFactor × the tolerance and polished (qp_cpu_solve_impl.h and qp_cuda_binding.cpp:
// finish_unpolished; the PyTorch backend's active_set.py::RETRY_TOL_FACTOR, a test compares them).
constexpr double kRetryTolFactor = 1e-2;
// The acceptance tolerance of the float64 polish of float32 problems (qp_cpu_solve_impl.h::
// finish_left_in_double, step 1; the PyTorch backend's active_set.py::FLOAT32_IN_FLOAT64_POLISH_TOL):
// ~10 float32 roundings, so rows that pin a vertex from both sides, equal only up to float32
// rounding (inconsistent by ~1e-8 relative in float64), still pass. float32's own polish_tol (5e-5)
// accepted, on a degenerate vertex whose active rows are dependent, the regularized compromise of
// an inconsistent guess: KKT residual 4e-4, x off by 9e-3 (hard_qps("degenerate_vertex", 64,
// seed=2) #37, serial path, AVX-512 build); rejected, the problem goes to the float64 re-solve.
constexpr double kFloat32InFloat64PolishTol = 1e-6;

struct Float64Defaults {
  static constexpr double tol = 1e-9;
  static constexpr double inf_tol = 1e-8;
  static constexpr double kkt_reg = 1e-11;
  static constexpr double polish_tol = 1e-9;
  static constexpr double step_to_boundary = 0.99;
  static constexpr double polish_start = 1e-2;
};

// Growth of the Cholesky shift on failure; refinement steps of the KKT solves. Same values as
// the PyTorch backend.
constexpr double kRegGrowth = 1e4;
constexpr int kRefinementSteps = 3;
// Stall rule (as in the PyTorch backend): leave the loop as kMaxIter when the merit
// max(pres, dres, gap), sᵀz, the infeasibility-certificate ratio and the residual max(pres, dres)
// have all not dropped below kStallDecrease × their best for kStallIters iterations.
constexpr int kStallIters = 5;
// Active-set guesses tried by the polish (the first plus corrections).
constexpr int kPolishRounds = 3;
// Rounds of an early polish attempt (a failure there only costs time: the iteration goes on).
constexpr int kEarlyPolishRounds = 2;
// A polish round's correction adds only the violated rows whose ρ = λ̂⁺ / max(ŝ, tol(1 + ‖h‖))
// at the interior point's iterate is at least kJoinRatio × the largest ρ among them (all of them
// where that largest is 0 or not finite); optlayers/_src/qp/active_set.py::JOIN_RATIO, which
// says why.
constexpr double kJoinRatio = 1e-2;
constexpr double kStallDecrease = 0.9;

// Second-try Cholesky shift relative to the largest diagonal entry: √ε of the precision. Near the
// end of an interior point K's condition number grows like 1/μ, so in float32 a shift relative to
// the data scale alone cannot absorb the rounding of K itself.
template <typename T>
OL_HD OL_INLINE T relative_shift() { return sizeof(T) == 4 ? T(3.5e-4) : T(1.5e-8); }

template <typename T>
struct Settings {
  T tol;          // relative tolerance on residuals and gap
  T inf_tol;      // infeasibility certificate tolerance
  T kkt_reg;      // relative static regularization
  T polish_tol;   // polish acceptance tolerance
  T step_to_boundary;  // fraction of the distance to the boundary taken by a step
  int max_iter;
  bool polish;
  T polish_start = T(0);  // first polish attempt once residuals and gap are below this (0: only at the end)
};

// Pointers to one problem's data (shared data: the same pointers for every problem).
template <typename T>
struct Problem {
  const T* Q;  // n×n
  const T* q;  // n
  const T* G;  // m×n
  const T* h;  // m
  const T* A;  // p×n
  const T* b;  // p
  int n, m, p;
  // Optional: outer products g_r g_rᵀ of the rows of G, lower triangles packed row by row
  // (m × n(n+1)/2), precomputed once when G is shared by the batch, so that Gᵀ diag(w) G is one
  // contiguous pass (m · n(n+1)/2 multiply-adds).
  const T* G_outer = nullptr;
  int64_t outer_ld = 0;  // stride between the packed rows of G_outer (≥ n(n+1)/2)
};

struct SerialGroup {
  static constexpr bool kSerial = true;
  static constexpr bool kOneLaneSet = true;
  OL_HD OL_INLINE int rank() const { return 0; }
  OL_HD OL_INLINE int size() const { return 1; }
  OL_HD OL_INLINE void sync() const {}
  template <typename T>
  OL_HD OL_INLINE T sum(T v) const { return v; }
  template <typename T>
  OL_HD OL_INLINE T max(T v) const { return v; }
  OL_HD OL_INLINE int lanes() const { return 1; }
  template <typename T>
  OL_HD OL_INLINE T lane_sum(T v) const { return v; }
  OL_HD OL_INLINE void lane_sync() const {}
  template <typename T>
  OL_HD OL_INLINE int argmax(T, int i) const { return i; }
};

// The (v, i) pair that argmax keeps of two: larger v, then smaller i.
template <typename T>
OL_HD OL_INLINE bool argmax_better(T w, int j, T v, int i) { return w > v || (w == v && j < i); }

// A member's place in the two-level split of its group: lane set `set` of `sets`, lane `lane`
// of `width`. Rows go to sets (`for (r = set; r < rows; r += sets)`), a row's entries to lanes.
struct Lanes {
  int lane, width, set, sets;
  template <typename Grp>
  OL_HD OL_INLINE explicit Lanes(const Grp& g)
      : lane(g.rank() % g.lanes()), width(g.lanes()), set(g.rank() / g.lanes()), sets(g.size() / g.lanes()) {}
};

template <typename T>
OL_HD OL_INLINE T ol_max(T a, T b) { return a > b ? a : b; }
template <typename T>
OL_HD OL_INLINE T ol_min(T a, T b) { return a < b ? a : b; }
template <typename T>
OL_HD OL_INLINE T ol_abs(T a) { return a < T(0) ? -a : a; }
template <typename T>
OL_HD OL_INLINE T ol_inf() { return T(1) / T(0); }
template <typename T>
OL_HD OL_INLINE T ol_sqrt(T v) {
#if defined(__CUDA_ARCH__)
  return sqrt(v);
#else
  return std::sqrt(v);
#endif
}

// The shift of a factorization's second try: max(δ·kRegGrowth, relative_shift · largest diagonal entry).
template <typename T>
OL_HD OL_INLINE T retry_shift(T delta, T diag_max) {
  return ol_max(delta * T(kRegGrowth), relative_shift<T>() * diag_max);
}

// The interior point's starting slacks and multipliers (every path: this file, qp_lanes.h,
// qp_small.h and the PyTorch backend's torch_ipm.py::_balanced_start). From s⁰ = h̃ − G̃x⁰ (x⁰ the
// Newton point with W = I) and z⁰ = −s⁰, Mehrotra's balanced shift (Nocedal & Wright §14.2):
//     s̃ = s⁰ + max(−min s⁰, 0),   z̃ = z⁰ + max(−min z⁰, 0)          (both ≥ 0)
//     s = s̃ + ½ s̃ᵀz̃ / Σz̃,        z = z̃ + ½ s̃ᵀz̃ / Σs̃
// then floored at kStartFloor · max|s⁰| (1 where s⁰ = 0), which keeps s̃ᵀz̃ ≈ 0 (one row, all s⁰
// equal) from starting a pair at ~0. The shift adapts to the data's scale where the former rule —
// s, z shifted to ≥ 1 — did not: on grasp QPs (active multipliers 1e-4 … 1e-2) it starts at μ ≈ 0.1
// instead of 2 and saves 2.4 iterations a problem (11.4 → 9.0, 4,800 real grasp QPs), unchanged
// (±0.2) on random_qp's planted problems, whose multipliers are O(1).
constexpr double kStartFloor = 0.1;

// The shifts of that start: s̃ = s⁰ + a_s, z̃ = −s⁰ + a_z from smin = min s⁰, smax = max s⁰.
// S is T, or a host SIMD vector of T (qp_lanes.h: the same expressions lane by lane).
template <typename T, typename S>
OL_HD OL_INLINE void start_offsets(S smin, S smax, S& a_s, S& a_z) {
  const S zero = S{} + T(0);
  a_s = -smin > zero ? -smin : zero;
  a_z = smax > zero ? smax : zero;
}
// Then, from Σ s̃ᵢz̃ᵢ, Σ s̃ᵢ, Σ z̃ᵢ: the balancing shifts ds, dz and the floor lo (s = max(s̃ + ds, lo),
// z = max(z̃ + dz, lo)). A positive Σ s̃ᵢz̃ᵢ has positive Σ s̃ᵢ and Σ z̃ᵢ (every term is ≥ 0).
template <typename T, typename S>
OL_HD OL_INLINE void start_balance(S smin, S smax, S sum_sz, S sum_s, S sum_z, S& ds, S& dz, S& lo) {
  const S zero = S{} + T(0), half = S{} + T(0.5);
  const S r = -smin > smax ? -smin : smax;  // max |s⁰|
  ds = sum_sz > zero ? half * sum_sz / sum_z : zero;
  dz = sum_sz > zero ? half * sum_sz / sum_s : zero;
  lo = r > zero ? (S{} + T(kStartFloor)) * r : S{} + T(1);
}

// Rows of n scalars padded for the host SIMD loops (see row_ld); an upper bound for any T.
OL_HD OL_INLINE int64_t ld_bound(int n) { return (int64_t(n) + 15) / 16 * 16; }

// Workspace (scalars) of polish, with its KKT solves and multiplier repair (the tail of
// workspace_size: solve_qp hands it the rest of its own).
OL_HD inline int64_t polish_workspace_size(int n, int m, int p) {
  const int64_t N = int64_t(n) + m + p;  // largest compact KKT system
  return N * N + 6 * N + 3 * int64_t(m) + 16;  // LU, pivots, r, du, rhs, u, act, Gx, set
}

// Workspace (in scalars) for one problem; ints are stored in scalar slots.
OL_HD inline int64_t workspace_size(int n, int m, int p) {
  const int64_t L = ld_bound(n);
  const int64_t np = int64_t(n) * (n + 1) / 2;
  return int64_t(n) * L            // K / Cholesky factor (rows padded to L)
         + int64_t(p) * L          // Z = K-factor⁻¹ Ãᵀ (p rows)
         + int64_t(p) * p          // Schur complement
         + int64_t(m) * L + int64_t(p) * L  // row-scaled copies G̃, Ã
         + 8 * L                   // n-vectors: x dxa dx rd tn tn2 (+2 spare)
         + 16 * int64_t(m) + 8 * int64_t(p)  // m- and p-vectors
         + (8 * int64_t(m) > np + 16 ? 8 * int64_t(m) : np + 16)  // form_K coefficients / packed sums
         + polish_workspace_size(n, m, p);
}

// Contiguous dot product and axpy, run by one thread (vectorized on the host).
template <typename T>
OL_HD OL_INLINE T dot_serial(const T* a, const T* b, int k) {
  T acc = 0;
  OL_SIMD_SUM(acc)
  for (int i = 0; i < k; ++i) acc += a[i] * b[i];
  return acc;
}
template <typename T>
OL_HD OL_INLINE void axpy_serial(T* y, T a, const T* x, int k) {
  for (int i = 0; i < k; ++i) y[i] += a * x[i];
}
// The same with the arithmetic in R (the data may be narrower: float rows, double sums).
template <typename R, typename A, typename B>
OL_HD OL_INLINE R dot_wide(const A* a, const B* b, int k) {
  R acc = 0;
  OL_SIMD_SUM(acc)
  for (int i = 0; i < k; ++i) acc += R(a[i]) * R(b[i]);
  return acc;
}
template <typename R, typename X>
OL_HD OL_INLINE void axpy_wide(R* y, R a, const X* x, int k) {
  for (int i = 0; i < k; ++i) y[i] += a * R(x[i]);
}
// y += Σ_r a[r] · X[r·ld : r·ld + k] over `rows` rows, four rows per pass over y (a quarter of the
// loads/stores of y compared with one axpy per row).
template <typename T>
OL_HD OL_INLINE void gemv_t_serial(T* y, const T* a, const T* X, int64_t ld, int rows, int k) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T a0 = a[r], a1 = a[r + 1], a2 = a[r + 2], a3 = a[r + 3];
    const T *x0 = X + r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;
    for (int i = 0; i < k; ++i) y[i] += a0 * x0[i] + a1 * x1[i] + a2 * x2[i] + a3 * x3[i];
  }
  for (; r < rows; ++r) axpy_serial(y, a[r], X + r * ld, k);
}

// Leading dimension of the rows of K, G̃, Ã and of the n-vectors in the IPM: the serial (host)
// path pads n up to a whole 64-byte SIMD vector, so its inner loops run in full vectors over zero
// padding (no scalar remainders, which dominate at n ≈ 10–50); thread groups use n.
template <typename T, typename Grp>
OL_HD OL_INLINE int row_ld(int n) {
  if constexpr (Grp::kSerial) {
    constexpr int w = int(64 / sizeof(T));
    return (n + w - 1) / w * w;
  } else {
    return n;
  }
}

#if !defined(__CUDACC__)
// One host SIMD vector (GCC/Clang vector extension): a 64-byte AVX-512 register where the target
// has one, else 32 bytes (one AVX register, or two SSE ones). Loads/stores go through references
// (never vectors by value across calls, whose ABI depends on the target).
template <typename T>
struct HostVec {
#if defined(__AVX512F__)
  static constexpr int kBytes = 64;
#else
  static constexpr int kBytes = 32;
#endif
  typedef T type __attribute__((vector_size(kBytes)));
  static constexpr int kLanes = int(kBytes / sizeof(T));
  static inline __attribute__((always_inline)) void load(type& v, const T* p) { __builtin_memcpy(&v, p, sizeof(type)); }
  static inline __attribute__((always_inline)) void store(T* p, const type& v) { __builtin_memcpy(p, &v, sizeof(type)); }
};
#endif

// ----------------------------------------------------------------------------------------------
// Small dense kernels (group-cooperative).

// `cholesky` for several lane sets (a block), not inlined: the interior point's kernel then keeps its
// register allocation (inlined, this panel loop raised the block kernel's spill stores from 32 to
// 668 bytes, `ptxas -v`).
template <typename T, typename Grp>
OL_HD OL_NOINLINE bool cholesky_panels(const Grp& g, T* K, int n) {
  // Several lane sets (a block): right-looking by panels of kPanel columns, 3 group barriers a
  // panel instead of 2 a column — (a) lane set 0 factors the panel's diagonal block (lane
  // barriers only), (b) every member solves its rows' panel entries against it, (c) the rank-kPanel
  // trailing update, a row per lane set and its entries to the lanes.
  constexpr int kPanel = 8;
  const Lanes ln(g);
  for (int j0 = 0; j0 < n; j0 += kPanel) {
    const int j1 = ol_min(n, j0 + kPanel);
    if (ln.set == 0) {  // (a) left-looking inside the block; a failed pivot is left as d ≤ 0 (or NaN)
      for (int j = j0; j < j1; ++j) {
        T part = 0;
        for (int k = j0 + ln.lane; k < j; k += ln.width) part += K[j * n + k] * K[j * n + k];
        const T d = K[j * n + j] - g.lane_sum(part);
        g.lane_sync();  // every lane has read K[j][j] (and the block row j)
        if (!(d > T(0))) {
          if (ln.lane == 0) K[j * n + j] = d;
          break;  // uniform over the lane set: d is the same on every lane
        }
        const T ljj = ol_sqrt(d);
        for (int i = j + 1 + ln.lane; i < j1; i += ln.width) {
          const T v = (K[i * n + j] - dot_serial(K + i * n + j0, K + j * n + j0, j - j0)) / ljj;
          K[i * n + j] = v;
          K[j * n + i] = v;  // the mirror: row j, upper part
        }
        if (ln.lane == 0) K[j * n + j] = ljj;
        g.lane_sync();
      }
    }
    g.sync();
    bool failed = false;
    for (int j = j0; j < j1; ++j) failed |= !(K[j * n + j] > T(0));  // the same verdict on every member
    if (failed) {
      // Every member must have read the verdict before any returns: the caller rebuilds K at once
      // (factor_reduced's retry), and a member that read a rebuilt, positive diagonal went on
      // factoring alone — a deadlock on the host emulation (float32 grasp QP, 2 lane sets of 4),
      // a race on a GPU block.
      g.sync();
      return false;
    }
    // (b) rows below the block: L[i][j0:j1] by forward substitution with the block's L.
    for (int i = j1 + g.rank(); i < n; i += g.size()) {
      T* Ki = K + i * n;
      for (int j = j0; j < j1; ++j) {
        const T v = (Ki[j] - dot_serial(Ki + j0, K + j * n + j0, j - j0)) / K[j * n + j];
        Ki[j] = v;
        K[j * n + i] = v;
      }
    }
    g.sync();
    // (c) K[i][k] −= Σ_{j in panel} L[i][j] L[k][j] for j1 ≤ k ≤ i (L[k][j] from the mirror rows).
    const int w = j1 - j0;
    for (int i = j1 + ln.set; i < n; i += ln.sets) {
      T li[kPanel];
      for (int b = 0; b < kPanel; ++b) li[b] = b < w ? K[i * n + j0 + b] : T(0);
      T* Ki = K + i * n;
      for (int k = j1 + ln.lane; k <= i; k += ln.width) {
        T acc = 0;
        for (int b = 0; b < kPanel; ++b) acc += b < w ? li[b] * K[(j0 + b) * n + k] : T(0);
        Ki[k] -= acc;
      }
    }
    g.sync();
  }
  return true;
}

// In-place lower Cholesky of the n×n matrix K (row-major; upper part ignored on input). Returns
// false if a pivot is not positive. Serial: left-looking, contiguous dots. Thread groups: a warp
// left-looking with a row per lane, a block by panels (cholesky_panels above); both also write
// each column of L, transposed, into the upper triangle (K[j][i] = L[i][j] for i > j), so that the
// trailing update and the triangular solves read rows, consecutive entries on consecutive lanes
// (a column of the row-major K is a strided read: a shared-memory bank conflict or one memory
// sector per lane). A failed factorization leaves K overwritten (callers rebuild it).
template <typename T, typename Grp>
OL_HD bool cholesky(const Grp& g, T* K, int n) {
  if constexpr (Grp::kSerial) {
    for (int j = 0; j < n; ++j) {
      const T d = K[j * n + j] - dot_serial(K + j * n, K + j * n, j);
      if (!(d > T(0))) return false;
      const T ljj = ol_sqrt(d);
      for (int i = j + 1; i < n; ++i) K[i * n + j] = (K[i * n + j] - dot_serial(K + i * n, K + j * n, j)) / ljj;
      K[j * n + j] = ljj;
    }
    return true;
  } else if constexpr (Grp::kOneLaneSet) {
    // One lane set (a warp): left-looking, a row per member, as before the block kernel's rewrite
    // (cholesky_panels' row-per-lane-set update would serialize a warp's rows), plus the mirror
    // that the triangular solves read.
    for (int j = 0; j < n; ++j) {
      T part = 0;
      for (int k = g.rank(); k < j; k += g.size()) part += K[j * n + k] * K[j * n + k];
      // K[j][j] is read before the reduction's barrier: after a failure the caller rebuilds K, and
      // a member reading it after that barrier could see a rebuilt diagonal (cholesky_panels).
      const T kjj = K[j * n + j];
      const T d = kjj - g.sum(part);
      if (!(d > T(0))) return false;
      const T ljj = ol_sqrt(d);
      g.sync();
      for (int i = j + 1 + g.rank(); i < n; i += g.size()) {
        const T v = (K[i * n + j] - dot_serial(K + i * n, K + j * n, j)) / ljj;
        K[i * n + j] = v;
        K[j * n + i] = v;
      }
      if (g.rank() == 0) K[j * n + j] = ljj;
      g.sync();
    }
    return true;
  } else {
    return cholesky_panels(g, K, n);
  }
}

// Solve (L Lᵀ) x = r in place (r ← x). Serial in the triangular sweeps, parallel in updates.
template <typename T, typename Grp>
OL_HD void chol_solve(const Grp& g, const T* L, int n, T* r) {
  if constexpr (Grp::kSerial) {
    // Row-oriented forward sweep (contiguous dots), row-oriented backward axpys.
    for (int i = 0; i < n; ++i) r[i] = (r[i] - dot_serial(L + i * n, r, i)) / L[i * n + i];
    for (int i = n - 1; i >= 0; --i) {
      r[i] /= L[i * n + i];
      axpy_serial(r, -r[i], L + i * n, i);
    }
    return;
  }
  for (int i = 0; i < n; ++i) {  // forward: L y = r (column sweep; column i of L is row i's upper part)
    if (g.rank() == 0) r[i] /= L[i * n + i];
    g.sync();
    const T yi = r[i];
    for (int k = i + 1 + g.rank(); k < n; k += g.size()) r[k] -= L[i * n + k] * yi;
    g.sync();
  }
  for (int i = n - 1; i >= 0; --i) {  // backward: Lᵀ x = y (row i of L is column i of Lᵀ)
    if (g.rank() == 0) r[i] /= L[i * n + i];
    g.sync();
    const T xi = r[i];
    for (int k = g.rank(); k < i; k += g.size()) r[k] -= L[i * n + k] * xi;
    g.sync();
  }
}

// The reduced matrix K of the interior point is factored as K = LLᵀ. Serial (host) code stores it
// as U = Lᵀ in the upper triangle of row-major rows of length ld (padded), which makes every
// inner loop a contiguous pass over one row: a right-looking Cholesky whose trailing update is a
// rank-4 "gemv" per row. Thread groups keep the layout of `cholesky` above (L, and its mirror above the diagonal). Only these three
// functions touch the factor, so each layout is self-consistent.
template <typename T, typename Grp>
OL_HD bool reduced_cholesky(const Grp& g, T* K, int n, int ld) {
  if constexpr (Grp::kSerial) {
    constexpr int w = int(64 / sizeof(T));
    for (int jb = 0; jb < n; jb += 4) {
      const int bs = ol_min(4, n - jb);
      for (int b = 0; b < bs; ++b) {  // the 4-row panel
        const int j = jb + b;
        T* Kj = K + int64_t(j) * ld;
        const T dj = Kj[j];
        if (!(dj > T(0))) return false;
        const T u = ol_sqrt(dj), inv = T(1) / u;
        Kj[j] = u;
        for (int c = j + 1; c < n; ++c) Kj[c] *= inv;
        for (int r = j + 1; r < jb + bs; ++r) {
          const T a = Kj[r];
          T* Kr = K + int64_t(r) * ld;
          for (int c = r; c < n; ++c) Kr[c] -= a * Kj[c];
        }
      }
      // Zero the panel rows' entries left of the diagonal inside their first SIMD vector, so the
      // trailing update below may start at a vector boundary and read only zeros there.
      const int cz = jb / w * w;
      for (int b = 0; b < bs; ++b)
        for (int c = cz; c < jb + b; ++c) K[int64_t(jb + b) * ld + c] = T(0);
      const T* K0 = K + int64_t(jb) * ld;
      const T* K1 = bs > 1 ? K0 + ld : K0;
      const T* K2 = bs > 2 ? K0 + 2 * int64_t(ld) : K0;
      const T* K3 = bs > 3 ? K0 + 3 * int64_t(ld) : K0;
      for (int r = jb + bs; r < n; ++r) {  // trailing update, one row at a time, full vectors
        const T a0 = K0[r], a1 = bs > 1 ? K1[r] : T(0), a2 = bs > 2 ? K2[r] : T(0), a3 = bs > 3 ? K3[r] : T(0);
        T* Kr = K + int64_t(r) * ld;
        for (int c = r / w * w; c < ld; ++c) Kr[c] -= a0 * K0[c] + a1 * K1[c] + a2 * K2[c] + a3 * K3[c];
      }
    }
    return true;
  } else {
    (void)ld;
    return cholesky(g, K, n);
  }
}

// r ← L⁻¹ r (serial: Uᵀ-solve, column sweep of contiguous axpys).
template <typename T, typename Grp>
OL_HD void reduced_forward(const Grp& g, const T* K, int n, int ld, T* r) {
  if constexpr (Grp::kSerial) {
    // Blocked by 4 rows of U: a 4×4 triangular solve, then one rank-4 pass over the rest of r.
    for (int jb = 0; jb < n; jb += 4) {
      const int bs = ol_min(4, n - jb);
      T y[4] = {T(0), T(0), T(0), T(0)};
      for (int b = 0; b < bs; ++b) {
        T v = r[jb + b];
        for (int b2 = 0; b2 < b; ++b2) v -= y[b2] * K[int64_t(jb + b2) * ld + jb + b];
        y[b] = v / K[int64_t(jb + b) * ld + jb + b];
        r[jb + b] = y[b];
      }
      const T* U0 = K + int64_t(jb) * ld;
      const T* U1 = bs > 1 ? U0 + ld : U0;
      const T* U2 = bs > 2 ? U0 + 2 * int64_t(ld) : U0;
      const T* U3 = bs > 3 ? U0 + 3 * int64_t(ld) : U0;
      for (int c = jb + bs; c < n; ++c) r[c] -= y[0] * U0[c] + y[1] * U1[c] + y[2] * U2[c] + y[3] * U3[c];
    }
  } else {
    (void)ld;
    // Blocks of one lane set's width: lane set 0 solves the block's triangle with lane barriers
    // only (a warp's __syncwarp), then the whole group updates the rest of r — two group barriers
    // a block instead of two a row. Column i of L is read from its mirror in row i (see cholesky).
    const Lanes ln(g);
    for (int i0 = 0; i0 < n; i0 += ln.width) {
      const int i1 = ol_min(n, i0 + ln.width);
      if (ln.set == 0)
        for (int i = i0; i < i1; ++i) {
          if (ln.lane == 0) r[i] /= K[i * n + i];
          g.lane_sync();
          const T yi = r[i];
          for (int k = i + 1 + ln.lane; k < i1; k += ln.width) r[k] -= K[i * n + k] * yi;
          g.lane_sync();
        }
      g.sync();
      for (int k = i1 + g.rank(); k < n; k += g.size()) {
        T acc = 0;
        for (int i = i0; i < i1; ++i) acc += K[i * n + k] * r[i];
        r[k] -= acc;
      }
      g.sync();
    }
  }
}

// r ← L⁻ᵀ r (serial: U-solve, contiguous dots).
template <typename T, typename Grp>
OL_HD void reduced_backward(const Grp& g, const T* K, int n, int ld, T* r) {
  if constexpr (Grp::kSerial) {
    for (int j = n - 1; j >= 0; --j) {
      const T* Kj = K + int64_t(j) * ld;
      T acc = 0;
      OL_SIMD_SUM(acc)
      for (int c = j + 1; c < n; ++c) acc += Kj[c] * r[c];
      r[j] = (r[j] - acc) / Kj[j];
    }
  } else {
    (void)ld;
    // Blocks from the bottom, as in reduced_forward; rows of L read left of the diagonal.
    const Lanes ln(g);
    for (int i1 = n; i1 > 0; i1 -= ln.width) {
      const int i0 = ol_max(0, i1 - ln.width);
      if (ln.set == 0)
        for (int i = i1 - 1; i >= i0; --i) {
          if (ln.lane == 0) r[i] /= K[i * n + i];
          g.lane_sync();
          const T xi = r[i];
          for (int k = i0 + ln.lane; k < i; k += ln.width) r[k] -= K[i * n + k] * xi;
          g.lane_sync();
        }
      g.sync();
      for (int k = g.rank(); k < i0; k += g.size()) {
        T acc = 0;
        for (int i = i0; i < i1; ++i) acc += K[i * n + k] * r[i];
        r[k] -= acc;
      }
      g.sync();
    }
  }
}

// Products with a row-major matrix M (rows × cols, row stride ld) without scaling:
// out = M x (rows) and out (+)= Mᵀ v (cols). The IPM calls them on the scaled, padded copies
// G̃, Ã with cols = ld (serial passes in whole SIMD vectors); polish and backward on the raw data.
template <typename T, typename Grp>
OL_HD void mat_times(const Grp& g, const T* M, int ld, int rows, int cols, const T* x, T* out) {
  if constexpr (Grp::kSerial) {
    int i = 0;
    for (; i + 4 <= rows; i += 4) {
      const T *m0 = M + int64_t(i) * ld, *m1 = m0 + ld, *m2 = m1 + ld, *m3 = m2 + ld;
      T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      OL_SIMD_SUM(a0, a1, a2, a3)
      for (int j = 0; j < cols; ++j) {
        a0 += m0[j] * x[j];
        a1 += m1[j] * x[j];
        a2 += m2[j] * x[j];
        a3 += m3[j] * x[j];
      }
      out[i] = a0; out[i + 1] = a1; out[i + 2] = a2; out[i + 3] = a3;
    }
    for (; i < rows; ++i) out[i] = dot_serial(M + int64_t(i) * ld, x, cols);
    return;
  }
  if (cols < g.lanes()) {  // short rows (the warp kernel's small n): one member per row
    for (int i = g.rank(); i < rows; i += g.size()) out[i] = dot_serial(M + int64_t(i) * ld, x, cols);
  } else {  // one lane set per row, its lanes over the row's entries
    const Lanes ln(g);
    for (int i = ln.set; i < rows; i += ln.sets) {
      const T* Mi = M + int64_t(i) * ld;
      T part = 0;
      for (int j = ln.lane; j < cols; j += ln.width) part += Mi[j] * x[j];
      part = g.lane_sum(part);
      if (ln.lane == 0) out[i] = part;
    }
  }
  g.sync();
}

template <typename T, typename Grp>
OL_HD void mat_t_times(const Grp& g, const T* M, int ld, int rows, int cols, const T* v, T* out, bool accumulate) {
  if constexpr (Grp::kSerial) {
    if (!accumulate)
      for (int j = 0; j < cols; ++j) out[j] = 0;
    gemv_t_serial(out, v, M, ld, rows, cols);
    return;
  }
  for (int j = g.rank(); j < cols; j += g.size()) {
    T acc = accumulate ? out[j] : T(0);
    for (int i = 0; i < rows; ++i) acc += M[int64_t(i) * ld + j] * v[i];
    out[j] = acc;
  }
  g.sync();
}

// ----------------------------------------------------------------------------------------------
// Reductions and step lengths.

template <typename T, typename Grp>
OL_HD T inf_norm(const Grp& g, const T* v, int k) {
  T part = 0;
  for (int i = g.rank(); i < k; i += g.size()) part = ol_max(part, ol_abs(v[i]));
  return g.max(part);
}

template <typename T, typename Grp>
OL_HD T dot(const Grp& g, const T* a, const T* b, int k) {
  T part = 0;
  for (int i = g.rank(); i < k; i += g.size()) part += a[i] * b[i];
  return g.sum(part);
}

// Σ|a_i b_i|: the size of dot(a, b)'s terms, against which its value is tested for cancellation.
template <typename T, typename Grp>
OL_HD T dot_size(const Grp& g, const T* a, const T* b, int k) {
  T part = 0;
  for (int i = g.rank(); i < k; i += g.size()) part += ol_abs(a[i] * b[i]);
  return g.sum(part);
}

// An infeasibility certificate's value t (t_p = −(h̃ᵀz + b̃ᵀy) or t_d = −qᵀx) counts only above
// the infeasibility tolerance times the size of its terms: on a *feasible* problem whose iterate
// diverges (float32 near a degenerate solution, an equality written as two opposite
// inequalities) z grew to 3e8 on both rows, h̃ᵀz came out as 64 — one rounding of 5.7e8 — and
// G̃ᵀz as exactly 0. Same rule as the PyTorch backend.
template <typename T>
OL_HD OL_INLINE bool above_cancellation(T t, T size, T inf_tol) {
  return t > inf_tol * size;
}

// Largest α with v + α dv ≥ 0 (∞ if dv ≥ 0).
template <typename T, typename Grp>
OL_HD T max_step(const Grp& g, const T* v, const T* dv, int k) {
  T part = ol_inf<T>();
  for (int i = g.rank(); i < k; i += g.size())
    if (dv[i] < T(0)) part = ol_min(part, -v[i] / dv[i]);
  return -g.max(-part);
}

// ----------------------------------------------------------------------------------------------
// The compact active-set KKT system (shared by polish and the backward pass).
//
//   ⎡ Q + δI   G_𝒜ᵀ   Aᵀ ⎤
//   ⎢ G_𝒜      −δI    0  ⎥      size N = n + k + p,  𝒜 = act[0..k)
//   ⎣ A        0     −δI ⎦
//
// is LU-factored with partial pivoting; solutions are refined against the exact (δ = 0) matrix.
template <typename T>
struct KKTWork {
  T* LU;    // N×N
  T* piv;   // N (pivot rows, stored as scalars)
  T* r;     // N residual
  T* du;    // N correction
};

// Serial LU with partial pivoting of the N×N row-major M (LAPACK getrf conventions: whole rows are
// swapped, piv[c] = row swapped with c, unit lower L below the diagonal, U on and above). Blocked
// by 4 columns: factor a 4-column panel, finish the panel's U rows, then update each trailing row
// with one rank-4 pass (contiguous, one load/store of the row per 4 multiply-adds). A zero pivot
// gives zero multipliers (as in the group version), so a singular M fails softly.
template <typename T>
OL_HD void lu_factor_serial(T* M, T* piv, int N) {
  for (int c0 = 0; c0 < N; c0 += 4) {
    const int cb = ol_min(4, N - c0), c1 = c0 + cb;
    for (int c = c0; c < c1; ++c) {  // panel: columns c0..c1 of rows ≥ c
      int best = c;
      T bv = ol_abs(M[int64_t(c) * N + c]);
      for (int r = c + 1; r < N; ++r) {
        const T v = ol_abs(M[int64_t(r) * N + c]);
        if (v > bv) { bv = v; best = r; }
      }
      piv[c] = T(best);
      if (best != c) {
        T* a = M + int64_t(c) * N;
        T* b = M + int64_t(best) * N;
        for (int j = 0; j < N; ++j) { const T t = a[j]; a[j] = b[j]; b[j] = t; }
      }
      const T* Mc = M + int64_t(c) * N;
      const T pivot = Mc[c];
      const T inv = pivot != T(0) ? T(1) / pivot : T(0);
      for (int r = c + 1; r < N; ++r) {
        T* Mr = M + int64_t(r) * N;
        const T f = Mr[c] * inv;
        Mr[c] = f;
        for (int j = c + 1; j < c1; ++j) Mr[j] -= f * Mc[j];
      }
    }
    if (c1 >= N) break;
    // U rows of the panel: row c's trailing part minus the earlier panel rows (unit lower solve).
    for (int c = c0 + 1; c < c1; ++c) {
      T* Mc = M + int64_t(c) * N;
      for (int b = c0; b < c; ++b) {
        const T f = Mc[b];
        const T* Mb = M + int64_t(b) * N;
        for (int j = c1; j < N; ++j) Mc[j] -= f * Mb[j];
      }
    }
    const T* U0 = M + int64_t(c0) * N;
    const T* U1 = cb > 1 ? U0 + N : U0;
    const T* U2 = cb > 2 ? U0 + 2 * int64_t(N) : U0;
    const T* U3 = cb > 3 ? U0 + 3 * int64_t(N) : U0;
    for (int r = c1; r < N; ++r) {
      T* Mr = M + int64_t(r) * N;
      const T l0 = Mr[c0], l1 = cb > 1 ? Mr[c0 + 1] : T(0), l2 = cb > 2 ? Mr[c0 + 2] : T(0),
              l3 = cb > 3 ? Mr[c0 + 3] : T(0);
      for (int j = c1; j < N; ++j) Mr[j] -= l0 * U0[j] + l1 * U1[j] + l2 * U2[j] + l3 * U3[j];
    }
  }
}

template <typename T, typename Grp>
OL_HD void kkt_assemble_factor(const Grp& g, const Problem<T>& d, const int* act, int k, T delta,
                               KKTWork<T> w) {
  const int n = d.n, p = d.p, N = n + k + p;
  T* M = w.LU;
  if constexpr (Grp::kSerial) {
    // Row by row (no index arithmetic per entry), then a blocked LU.
    for (int i = 0; i < n; ++i) {
      T* Mi = M + int64_t(i) * N;
      const T* Qi = d.Q + int64_t(i) * n;
      for (int j = 0; j < n; ++j) Mi[j] = Qi[j];
      Mi[i] += delta;
      for (int a = 0; a < k; ++a) Mi[n + a] = d.G[int64_t(act[a]) * n + i];
      for (int e = 0; e < p; ++e) Mi[n + k + e] = d.A[int64_t(e) * n + i];
    }
    for (int r = n; r < N; ++r) {
      T* Mr = M + int64_t(r) * N;
      const T* src = r < n + k ? d.G + int64_t(act[r - n]) * n : d.A + int64_t(r - n - k) * n;
      for (int j = 0; j < n; ++j) Mr[j] = src[j];
      for (int j = n; j < N; ++j) Mr[j] = T(0);
      Mr[r] = -delta;
    }
    lu_factor_serial(M, w.piv, N);
    return;
  }
  // Thread groups: assemble entry by entry (strided over the group), then factor.
  for (int64_t idx = g.rank(); idx < int64_t(N) * N; idx += g.size()) {
    const int i = int(idx / N), j = int(idx % N);
    T v = 0;
    if (i < n && j < n) {
      v = d.Q[int64_t(i) * n + j] + (i == j ? delta : T(0));
    } else if (i < n && j < n + k) {
      v = d.G[int64_t(act[j - n]) * n + i];
    } else if (i < n) {
      v = d.A[int64_t(j - n - k) * n + i];
    } else if (j < n && i < n + k) {
      v = d.G[int64_t(act[i - n]) * n + j];
    } else if (j < n) {
      v = d.A[int64_t(i - n - k) * n + j];
    } else if (i == j) {
      v = -delta;
    }
    M[idx] = v;
  }
  g.sync();
  const Lanes ln(g);
  // LU with partial pivoting (Doolittle, right-looking). The pivot search and the row swap are
  // spread over the group: the first row of largest |M[r][c]| (the serial rule), found by one
  // all-reduce of (value, row) pairs.
  for (int c = 0; c < N; ++c) {
    T part_v = T(-1);
    int part_i = N;
    for (int r = c + g.rank(); r < N; r += g.size()) {
      const T v = ol_abs(M[int64_t(r) * N + c]);
      if (v > part_v) { part_v = v; part_i = r; }
    }
    int best = g.argmax(part_v, part_i);
    if (best >= N) best = c;  // no comparable entry (NaN column): no swap, as the serial search
    if (g.rank() == 0) w.piv[c] = T(best);
    if (best != c)
      for (int j = g.rank(); j < N; j += g.size()) {
        const T t = M[int64_t(c) * N + j];
        M[int64_t(c) * N + j] = M[int64_t(best) * N + j];
        M[int64_t(best) * N + j] = t;
      }
    g.sync();
    const T pivot = M[c * N + c];
    const T inv = pivot != T(0) ? T(1) / pivot : T(0);
    if constexpr (Grp::kOneLaneSet) {  // one lane set (a warp): a row per member, as before (see cholesky)
      for (int r = c + 1 + g.rank(); r < N; r += g.size()) {
        const T f = M[r * N + c] * inv;
        M[r * N + c] = f;
        if (f != T(0)) {
          T* Mr = M + r * N;
          const T* Mc = M + c * N;
          for (int j = c + 1; j < N; ++j) Mr[j] -= f * Mc[j];
        }
      }
      g.sync();
      continue;
    }
    // Trailing update: row r to a lane set, its entries to the set's lanes (consecutive addresses
    // on consecutive lanes; one thread per row strided a warp's accesses by N). Each set scales
    // its own rows' multipliers (after a lane barrier: every lane has read the old value), so no
    // group barrier separates scaling and update.
    const T* Mc = M + c * N;
    for (int r = c + 1 + ln.set; r < N; r += ln.sets) {
      T* Mr = M + r * N;
      const T f = Mr[c] * inv;
      if (f != T(0))
        for (int j = c + 1 + ln.lane; j < N; j += ln.width) Mr[j] -= f * Mc[j];
      g.lane_sync();
      if (ln.lane == 0) Mr[c] = f;
    }
    g.sync();
  }
}

template <typename T, typename Grp>
OL_HD void lu_solve(const Grp& g, const T* LU, const T* piv, int N, T* r) {
  if constexpr (Grp::kSerial) {  // row-oriented sweeps: contiguous dots
    for (int c = 0; c < N; ++c) {
      const int pc = int(piv[c]);
      if (pc != c) { const T t = r[c]; r[c] = r[pc]; r[pc] = t; }
    }
    for (int i = 1; i < N; ++i) r[i] -= dot_serial(LU + int64_t(i) * N, r, i);
    for (int i = N - 1; i >= 0; --i) {
      const T* Ui = LU + int64_t(i) * N;
      T acc = 0;
      OL_SIMD_SUM(acc)
      for (int j = i + 1; j < N; ++j) acc += Ui[j] * r[j];
      r[i] = Ui[i] != T(0) ? (r[i] - acc) / Ui[i] : T(0);
    }
    return;
  }
  if (g.rank() == 0) {
    for (int c = 0; c < N; ++c) {
      const int pc = int(piv[c]);
      if (pc != c) { T t = r[c]; r[c] = r[pc]; r[pc] = t; }
    }
  }
  g.sync();
  // Blocks of one lane set's width (as reduced_forward): lane set 0 sweeps the block's triangle with
  // lane barriers only, then every member updates its rows with the block's segment of the row.
  // (The sweeps of reduced_forward/backward written out again: one template for all four, with
  // the matrix access as a lambda, raised the block kernel's ptxas spill stores from 44 to 512 B.)
  const Lanes ln(g);
  for (int c0 = 0; c0 < N; c0 += ln.width) {  // unit lower
    const int c1 = ol_min(N, c0 + ln.width);
    if (ln.set == 0)
      for (int c = c0; c < c1; ++c) {
        const T rc = r[c];
        for (int i = c + 1 + ln.lane; i < c1; i += ln.width) r[i] -= LU[i * N + c] * rc;
        g.lane_sync();
      }
    g.sync();
    for (int i = c1 + g.rank(); i < N; i += g.size()) {
      T acc = 0;
      for (int c = c0; c < c1; ++c) acc += LU[i * N + c] * r[c];
      r[i] -= acc;
    }
    g.sync();
  }
  for (int c1 = N; c1 > 0; c1 -= ln.width) {  // upper, blocks from the bottom
    const int c0 = ol_max(0, c1 - ln.width);
    if (ln.set == 0)
      for (int c = c1 - 1; c >= c0; --c) {
        if (ln.lane == 0) r[c] = LU[c * N + c] != T(0) ? r[c] / LU[c * N + c] : T(0);
        g.lane_sync();
        const T xc = r[c];
        for (int i = c0 + ln.lane; i < c; i += ln.width) r[i] -= LU[i * N + c] * xc;
        g.lane_sync();
      }
    g.sync();
    for (int i = g.rank(); i < c0; i += g.size()) {
      T acc = 0;
      for (int c = c0; c < c1; ++c) acc += LU[i * N + c] * r[c];
      r[i] -= acc;
    }
    g.sync();
  }
}

// out = K u for the exact compact KKT matrix (δ = 0).
template <typename T, typename Grp>
OL_HD void kkt_matvec(const Grp& g, const Problem<T>& d, const int* act, int k, const T* u, T* out) {
  const int n = d.n, p = d.p, N = n + k + p;
  if constexpr (Grp::kSerial) {
    for (int i = 0; i < n; ++i) out[i] = dot_serial(d.Q + i * n, u, n);
    for (int a = 0; a < k; ++a) {
      const T* Ga = d.G + int64_t(act[a]) * n;
      axpy_serial(out, u[n + a], Ga, n);
      out[n + a] = dot_serial(Ga, u, n);
    }
    for (int e = 0; e < p; ++e) {
      const T* Ae = d.A + int64_t(e) * n;
      axpy_serial(out, u[n + k + e], Ae, n);
      out[n + k + e] = dot_serial(Ae, u, n);
    }
    return;
  }
  for (int i = g.rank(); i < N; i += g.size()) {
    T acc = 0;
    if (i < n) {
      for (int j = 0; j < n; ++j) acc += d.Q[i * n + j] * u[j];
      for (int a = 0; a < k; ++a) acc += d.G[int64_t(act[a]) * n + i] * u[n + a];
      for (int e = 0; e < p; ++e) acc += d.A[int64_t(e) * n + i] * u[n + k + e];
    } else if (i < n + k) {
      const T* Gi = d.G + int64_t(act[i - n]) * n;
      for (int j = 0; j < n; ++j) acc += Gi[j] * u[j];
    } else {
      const T* Ai = d.A + int64_t(i - n - k) * n;
      for (int j = 0; j < n; ++j) acc += Ai[j] * u[j];
    }
    out[i] = acc;
  }
  g.sync();
}

// Solve K u = rhs (compact, size N) with the factor + up to kRefinementSteps of refinement against
// the exact matrix. Refinement stops once a correction is below the rounding of u itself
// (max|du| ≤ ε·max|u|): further steps could not change u. u ← solution. With `u_holds_rhs0`, u
// holds on entry the right-hand side of the first (regularized) solve, which may differ from rhs
// (see polish); the refinement is against rhs.
template <typename T, typename Grp>
OL_HD void kkt_refined_solve(const Grp& g, const Problem<T>& d, const int* act, int k, KKTWork<T> w,
                             const T* rhs, T* u, bool u_holds_rhs0 = false) {
  const int N = d.n + k + d.p;
  const T eps = sizeof(T) == 4 ? T(1.2e-7) : T(2.3e-16);
  if (!u_holds_rhs0)
    for (int i = g.rank(); i < N; i += g.size()) u[i] = rhs[i];
  g.sync();
  lu_solve(g, w.LU, w.piv, N, u);
  for (int it = 0; it < kRefinementSteps; ++it) {
    kkt_matvec(g, d, act, k, u, w.r);
    for (int i = g.rank(); i < N; i += g.size()) w.du[i] = rhs[i] - w.r[i];
    g.sync();
    lu_solve(g, w.LU, w.piv, N, w.du);
    T part_du = 0, part_u = 0;
    for (int i = g.rank(); i < N; i += g.size()) {
      part_du = ol_max(part_du, ol_abs(w.du[i]));
      u[i] += w.du[i];
      part_u = ol_max(part_u, ol_abs(u[i]));
    }
    const T dn = g.max(part_du), un = g.max(part_u);
    g.sync();
    if (dn <= eps * un) break;
  }
}

// max(1, |Q|, |G|, |A|) (entrywise), the scale of the static KKT regularization.
template <typename T, typename Grp>
OL_HD T data_scale(const Grp& g, const Problem<T>& d) {
  T s = 1;
  for (int64_t i = g.rank(); i < int64_t(d.n) * d.n; i += g.size()) s = ol_max(s, ol_abs(d.Q[i]));
  for (int64_t i = g.rank(); i < int64_t(d.m) * d.n; i += g.size()) s = ol_max(s, ol_abs(d.G[i]));
  for (int64_t i = g.rank(); i < int64_t(d.p) * d.n; i += g.size()) s = ol_max(s, ol_abs(d.A[i]));
  return g.max(s);
}

// Backward / JVP solve: K u = rhs for the full-size layout (n + m + p) and an active mask:
// inactive rows are identities (u_λi = rhs_λi), active ones form the compact system.
template <typename T, typename Grp>
OL_HD void kkt_solve(const Grp& g, const Problem<T>& d, const T* mask, T kkt_reg, const T* rhs, T* u,
                     T* work, const T* keep = nullptr) {
  const int n = d.n, m = d.m, p = d.p;
  const int64_t N0 = int64_t(n) + m + p;
  KKTWork<T> w{work, work + N0 * N0, work + N0 * N0 + N0, work + N0 * N0 + 2 * N0};
  T* rc = work + N0 * N0 + 3 * N0;           // compact rhs (N0)
  T* uc = rc + N0;                            // compact solution (N0)
  int* act = reinterpret_cast<int*>(uc + N0);  // m ints (fits in m scalars)
  int k = 0;
  if (g.rank() == 0)
    for (int i = 0; i < m; ++i)
      if (mask[i] > T(0.5)) act[k++] = i;
  g.sync();
  k = 0;
  for (int i = 0; i < m; ++i) k += mask[i] > T(0.5) ? 1 : 0;
  // A kept polish factor (see keep_factor) replaces the factorization when it is for this mask.
  bool reuse = keep != nullptr && int(keep[N0 * N0 + N0 + m]) == k;
  for (int i = 0; reuse && i < m; ++i) reuse = (mask[i] > T(0.5)) == (keep[N0 * N0 + N0 + i] > T(0.5));
  if (reuse) {
    w.LU = const_cast<T*>(keep);  // only read by the solves below
    w.piv = const_cast<T*>(keep + N0 * N0);
  } else {
    kkt_assemble_factor(g, d, act, k, kkt_reg * data_scale(g, d), w);
  }
  for (int i = g.rank(); i < n; i += g.size()) rc[i] = rhs[i];
  for (int a = g.rank(); a < k; a += g.size()) rc[n + a] = rhs[n + act[a]];
  for (int e = g.rank(); e < p; e += g.size()) rc[n + k + e] = rhs[n + m + e];
  g.sync();
  kkt_refined_solve(g, d, act, k, w, rc, uc);
  for (int i = g.rank(); i < n; i += g.size()) u[i] = uc[i];
  for (int i = g.rank(); i < m; i += g.size()) u[n + i] = mask[i] > T(0.5) ? T(0) : rhs[n + i];
  for (int e = g.rank(); e < p; e += g.size()) u[n + m + e] = uc[n + k + e];
  g.sync();
  for (int a = g.rank(); a < k; a += g.size()) u[n + act[a]] = uc[n + a];
  g.sync();
}

// Workspace (scalars) of kkt_backward: kkt_solve's plus rhs, u (n+m+p each) and the mask (m).
OL_HD inline int64_t backward_workspace_size(int n, int m, int p) {
  return workspace_size(n, m, p) + 2 * (int64_t(n) + m + p) + m;
}

// Reverse-mode gradients of one solved problem, accumulated (+=) into dQ (n×n), dq (n), dG (m×n),
// dh (m), dA (p×n), db (p). The maths is that of optlayers/_src/qp/backward.py::kkt_vjp (the one
// written-down adjoint; this is its fused per-problem form): the active set is M = 1[λ > h − Gx]
// (kkt.classify_active), u solves K u = (g_x, M g_λ, g_ν) with the active-set KKT matrix, and
//   ∇Q = −½(u_x xᵀ + x u_xᵀ), ∇q = −u_x, ∇G = −(Mλ u_xᵀ + M u_λ xᵀ), ∇h = M u_λ,
//   ∇A = −(ν u_xᵀ + u_ν xᵀ), ∇b = u_ν.
// g_x, g_λ, g_ν may be null (zero upstream gradient); so may any output (not wanted: skipped).
template <typename T, typename Grp>
OL_HD void kkt_backward(const Grp& g, const Problem<T>& d, const T* x, const T* lam, const T* nu, const T* gx,
                        const T* glam, const T* gnu, T kkt_reg, T* dQ, T* dq, T* dG, T* dh, T* dA, T* db,
                        T* work, const T* keep = nullptr) {
  const int n = d.n, m = d.m, p = d.p;
  const int64_t N0 = int64_t(n) + m + p;
  T* rhs = work + workspace_size(n, m, p);
  T* u = rhs + N0;
  T* mask = u + N0;
  mat_times(g, d.G, n, m, n, x, u);  // G x (u as scratch)
  for (int i = g.rank(); i < m; i += g.size()) mask[i] = lam[i] > d.h[i] - u[i] ? T(1) : T(0);
  for (int j = g.rank(); j < n; j += g.size()) rhs[j] = gx ? gx[j] : T(0);
  for (int i = g.rank(); i < m; i += g.size()) rhs[n + i] = glam ? mask[i] * glam[i] : T(0);
  for (int e = g.rank(); e < p; e += g.size()) rhs[n + m + e] = gnu ? gnu[e] : T(0);
  g.sync();
  kkt_solve(g, d, mask, kkt_reg, rhs, u, work, keep);
  const T* ux = u;
  const T* ul = u + n;
  const T* un = u + n + m;
  if (dQ != nullptr)
    for (int idx = g.rank(); idx < n * n; idx += g.size()) {
      const int i = idx / n, j = idx % n;
      dQ[idx] -= T(0.5) * (ux[i] * x[j] + x[i] * ux[j]);
    }
  if (dq != nullptr)
    for (int j = g.rank(); j < n; j += g.size()) dq[j] -= ux[j];
  if (dG != nullptr)
    for (int idx = g.rank(); idx < m * n; idx += g.size()) {
      const int i = idx / n, j = idx % n;
      dG[idx] -= mask[i] * (lam[i] * ux[j] + ul[i] * x[j]);
    }
  if (dh != nullptr)
    for (int i = g.rank(); i < m; i += g.size()) dh[i] += mask[i] * ul[i];
  if (dA != nullptr)
    for (int idx = g.rank(); idx < p * n; idx += g.size()) {
      const int e = idx / n, j = idx % n;
      dA[idx] -= nu[e] * ux[j] + un[e] * x[j];
    }
  if (db != nullptr)
    for (int e = g.rank(); e < p; e += g.size()) db[e] += un[e];
  g.sync();
}

// ----------------------------------------------------------------------------------------------
// The stall rule (see kStallIters): progress is the merit max(pres, dres, gap), sᵀz, the
// infeasibility-certificate ratio or the residual max(pres, dres) falling below kStallDecrease ×
// its best. Shared by solve_qp and the CUDA small kernel (qp_small.h).
template <typename T>
struct Progress {
  T best = ol_inf<T>(), best_sz = ol_inf<T>(), best_cert = ol_inf<T>(), best_res = ol_inf<T>();
  int stall = 0;
  // Records one iterate; returns true once kStallIters iterates in a row made no progress.
  OL_HD OL_INLINE bool stalled(T merit, T sz, T cert, T res) {
    if (merit < T(kStallDecrease) * best || sz < T(kStallDecrease) * best_sz || cert < T(kStallDecrease) * best_cert ||
        res < T(kStallDecrease) * best_res) {
      best = ol_min(best, merit);
      best_sz = ol_min(best_sz, sz);
      best_cert = ol_min(best_cert, cert);
      best_res = ol_min(best_res, res);
      stall = 0;
    } else {
      ++stall;
    }
    return stall >= kStallIters;
  }
};

// ----------------------------------------------------------------------------------------------
// The interior-point solver for one problem.

template <typename T>
struct IPMState {
  int ld;  // row stride of K, Z, G̃, Ã and length of the n-vectors (row_ld)
  T *K, *Z, *S, *Gt, *At;
  T *x, *s, *z, *y;
  T *dxa, *dsa, *dza, *dya;
  T *dx, *ds, *dz, *dy;
  T *rd, *rp, *re, *rc;
  T *w, *gs, *as, *tn, *tn2, *tm, *tm2, *wt, *hs, *bs, *tp;
  T *xb, *zb, *yb;  // the iterate of lowest merit so far (see solve_qp)
  T* coef;    // form_K coefficients / packed sums
  T* polish;  // rest: polish workspace
  int64_t ipm_size;  // scalars before `polish` (zeroed at the start of a solve)
};

template <typename T>
OL_HD IPMState<T> carve(T* work, int n, int m, int p, int ld) {
  IPMState<T> st;
  st.ld = ld;
  T* c = work;
  auto take = [&](int64_t k) { T* r = c; c += k; return r; };
  const int64_t L = ld_bound(n);  // ≥ ld; keeps the layout independent of T and the group
  st.K = take(int64_t(n) * L); st.Z = take(int64_t(p) * L); st.S = take(int64_t(p) * p);
  st.Gt = take(int64_t(m) * L); st.At = take(int64_t(p) * L);
  st.x = take(L); st.dxa = take(L); st.dx = take(L); st.rd = take(L); st.tn = take(L); st.tn2 = take(L);
  st.xb = take(L); take(L);
  st.s = take(m); st.z = take(m); st.dsa = take(m); st.dza = take(m); st.ds = take(m); st.dz = take(m);
  st.rp = take(m); st.rc = take(m); st.w = take(m); st.gs = take(m); st.tm = take(m); st.tm2 = take(m);
  st.wt = take(m); st.hs = take(m); st.zb = take(m); take(m);
  st.y = take(p); st.dya = take(p); st.dy = take(p); st.re = take(p); st.as = take(p); st.bs = take(p);
  st.tp = take(p); st.yb = take(p);
  const int64_t np = int64_t(n) * (n + 1) / 2;
  st.coef = take(8 * int64_t(m) > np + 16 ? 8 * int64_t(m) : np + 16);
  st.ipm_size = c - work;
  st.polish = c;
  return st;
}

// K ← Q + G̃ᵀ diag(w) G̃ + δI in the reduced layout (see reduced_cholesky). `wt` = w ∘ gs² weighs
// the raw rows of G (packed outer products and the thread-group path); `w` weighs G̃.
template <typename T, typename Grp>
OL_HD void form_K(const Grp& g, const Problem<T>& d, IPMState<T>& st, const T* w, const T* wt, T delta) {
  const int n = d.n, m = d.m, ld = st.ld;
  T* K = st.K;
  if constexpr (Grp::kSerial) {
    if (d.G_outer != nullptr) {
      // Packed lower triangles: P = Σ_r wt_r (g_r g_rᵀ), one contiguous pass over G_outer; then
      // K[j][i] = P(i, j) + Q_ij (upper layout).
      T* P = st.coef;
      const int len = int(d.outer_ld);  // np rounded up to whole vectors (zero padding)
      for (int idx = 0; idx < len; ++idx) P[idx] = 0;
      gemv_t_serial(P, wt, d.G_outer, d.outer_ld, m, len);
      for (int i = 0; i < n; ++i) {
        const T* Pi = P + i * (i + 1) / 2;
        const T* Qi = d.Q + int64_t(i) * n;
        for (int j = 0; j <= i; ++j) K[int64_t(j) * ld + i] = Pi[j] + Qi[j];
        K[int64_t(i) * ld + i] += delta;
      }
      return;
    }
#if !defined(__CUDACC__)
    // Register-blocked G̃ᵀ diag(w) G̃: 8 rows of K × one SIMD vector of columns per tile, the
    // sum over the m rows of G̃ in registers (one vector load + 8 broadcasts per 8 FMAs).
    using V = HostVec<T>;
    using vec = typename V::type;
    constexpr int kW = V::kLanes;
    T* cf = st.coef;  // cf[r·8 + b] = w_r G̃[r][i0 + b]
    for (int i0 = 0; i0 < n; i0 += 8) {
      const int rb = ol_min(8, n - i0);
      for (int r = 0; r < m; ++r) {
        const T* Gr = st.Gt + int64_t(r) * ld + i0;
        for (int b = 0; b < 8; ++b) cf[r * 8 + b] = b < rb ? w[r] * Gr[b] : T(0);
      }
      for (int j = i0 / kW * kW; j < ld; j += kW) {
        vec a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
        const T* Gj = st.Gt + j;
        for (int r = 0; r < m; ++r) {
          vec gv;
          V::load(gv, Gj + int64_t(r) * ld);
          const T* c = cf + r * 8;
          a0 += c[0] * gv; a1 += c[1] * gv; a2 += c[2] * gv; a3 += c[3] * gv;
          a4 += c[4] * gv; a5 += c[5] * gv; a6 += c[6] * gv; a7 += c[7] * gv;
        }
        T* Kj = K + int64_t(i0) * ld + j;
        V::store(Kj, a0);
        if (rb > 1) V::store(Kj + ld, a1);
        if (rb > 2) V::store(Kj + 2 * int64_t(ld), a2);
        if (rb > 3) V::store(Kj + 3 * int64_t(ld), a3);
        if (rb > 4) V::store(Kj + 4 * int64_t(ld), a4);
        if (rb > 5) V::store(Kj + 5 * int64_t(ld), a5);
        if (rb > 6) V::store(Kj + 6 * int64_t(ld), a6);
        if (rb > 7) V::store(Kj + 7 * int64_t(ld), a7);
      }
      for (int b = 0; b < rb; ++b) {
        const int i = i0 + b;
        T* Ki = K + int64_t(i) * ld;
        const T* Qi = d.Q + int64_t(i) * n;
        for (int j = i; j < n; ++j) Ki[j] += Qi[j];
        Ki[i] += delta;
      }
    }
#else
    for (int i = 0; i < n; ++i) {
      T* Ki = K + int64_t(i) * ld;
      for (int j = i; j < n; ++j) Ki[j] = d.Q[int64_t(i) * n + j];
      Ki[i] += delta;
      for (int r = 0; r < m; ++r) {
        const T* Gr = st.Gt + int64_t(r) * ld;
        const T a = w[r] * Gr[i];
        for (int j = i; j < n; ++j) Ki[j] += a * Gr[j];
      }
    }
#endif
    return;
  }
  // Thread groups: lower triangle, raw G with weights wt (ld = n).
  if (d.G_outer != nullptr) {
    const int np = n * (n + 1) / 2;
    for (int i = g.rank(); i < n; i += g.size())
      for (int j = 0; j <= i; ++j) {
        T acc = 0;
        for (int r = 0; r < m; ++r) acc += wt[r] * d.G_outer[int64_t(r) * d.outer_ld + i * (i + 1) / 2 + j];
        K[i * n + j] = acc + d.Q[i * n + j] + (i == j ? delta : T(0));
      }
    (void)np;
    g.sync();
    return;
  }
  // Tiles of kRows rows × L columns (L = g.lanes(): a warp on the GPU), one per lane set at a time,
  // over the lower triangle: each lane sums its column of the tile over the m rows of G in
  // registers and writes K once. Per row r of G a warp loads kRows entries by broadcast and L
  // consecutive ones. (One member per row of K instead read-modify-wrote K once per row of G,
  // with a warp's accesses strided by n: in global memory beyond the block kernel's shared K.)
  constexpr int kRows = 8;
  const Lanes ln(g);
  int tile = 0;
  for (int i0 = 0; i0 < n; i0 += kRows) {
    const int rows = ol_min(kRows, n - i0);
    for (int j0 = 0; j0 < i0 + rows; j0 += ln.width, ++tile) {  // columns up to the tile's last row
      if (tile % ln.sets != ln.set) continue;
      const int j = j0 + ln.lane;
      const bool col = j < n;
      T acc[kRows];
      for (int b = 0; b < kRows; ++b) acc[b] = T(0);
      for (int r = 0; r < m; ++r) {
        const T* Gr = d.G + int64_t(r) * n;
        const T gj = col ? wt[r] * Gr[j] : T(0);
        // Constant trip count and guarded loads: acc stays in registers.
        for (int b = 0; b < kRows; ++b) acc[b] += (b < rows ? Gr[i0 + b] : T(0)) * gj;
      }
      for (int b = 0; b < kRows; ++b) {
        const int i = i0 + b;
        if (b < rows && col && j <= i) K[i * n + j] = acc[b] + d.Q[i * n + j] + (i == j ? delta : T(0));
      }
    }
  }
  g.sync();
}

// Factor K (growing the shift once on failure) and, with equalities, Z = L⁻¹Ãᵀ (rows z_e) and the
// Cholesky factor of the Schur complement S = ZᵀZ + δI = Ã K⁻¹ Ãᵀ + δI. Returns false on failure.
template <typename T, typename Grp>
OL_HD bool factor_reduced(const Grp& g, const Problem<T>& d, IPMState<T>& st, T delta) {
  const int n = d.n, p = d.p, ld = st.ld;
  form_K(g, d, st, st.w, st.wt, delta);
  if (!reduced_cholesky(g, st.K, n, ld)) {
    form_K(g, d, st, st.w, st.wt, delta);
    T part = 0;
    for (int i = g.rank(); i < n; i += g.size()) part = ol_max(part, st.K[int64_t(i) * ld + i]);
    const T extra = retry_shift(delta, g.max(part)) - delta;
    g.sync();
    for (int i = g.rank(); i < n; i += g.size()) st.K[int64_t(i) * ld + i] += extra;
    g.sync();
    if (!reduced_cholesky(g, st.K, n, ld)) return false;
  }
  if (p == 0) return true;
  for (int e = 0; e < p; ++e) {
    T* Ze = st.Z + int64_t(e) * ld;
    for (int j = g.rank(); j < n; j += g.size()) Ze[j] = st.At[int64_t(e) * ld + j];
    g.sync();
    reduced_forward(g, st.K, n, ld, Ze);
  }
  for (int idx = g.rank(); idx < p * p; idx += g.size()) {
    const int e = idx / p, f = idx % p;
    st.S[idx] = dot_serial(st.Z + int64_t(e) * ld, st.Z + int64_t(f) * ld, n) + (e == f ? delta : T(0));
  }
  g.sync();
  if (!cholesky(g, st.S, p)) {
    // Rebuild (the failed factorization overwrote S) with the larger shift of K's second try.
    T part = 0;
    for (int idx = g.rank(); idx < p * p; idx += g.size()) {
      const int e = idx / p, f = idx % p;
      st.S[idx] = dot_serial(st.Z + int64_t(e) * ld, st.Z + int64_t(f) * ld, n);
      if (e == f) part = ol_max(part, st.S[idx]);
    }
    const T shift = retry_shift(delta, g.max(part));
    g.sync();
    for (int e = g.rank(); e < p; e += g.size()) st.S[e * p + e] += shift;
    g.sync();
    if (!cholesky(g, st.S, p)) return false;
  }
  return true;
}

// Solve the reduced KKT system  [K Ãᵀ; Ã −δI] (v, dy) = (r₁, −re)  in place: v ← K⁻¹(r₁ − Ãᵀdy),
// dy = S⁻¹(Ã K⁻¹ r₁ + re), through t = L⁻¹r₁:  dy = S⁻¹(Zt + re),  v = L⁻ᵀ(t − Zᵀdy).
template <typename T, typename Grp>
OL_HD void reduced_solve(const Grp& g, const Problem<T>& d, IPMState<T>& st, T* v, const T* re, T* dy) {
  const int n = d.n, p = d.p, ld = st.ld;
  reduced_forward(g, st.K, n, ld, v);
  if (p) {
    mat_times(g, st.Z, ld, p, ld, v, dy);
    for (int e = g.rank(); e < p; e += g.size()) dy[e] += re[e];
    g.sync();
    chol_solve(g, st.S, p, dy);
    for (int e = g.rank(); e < p; e += g.size()) st.tp[e] = -dy[e];
    g.sync();
    mat_t_times(g, st.Z, ld, p, ld, st.tp, v, true);
  }
  reduced_backward(g, st.K, n, ld, v);
}

// Solve the reduced Newton system for residuals (rd, rp, re, rc): outputs dx, ds, dz, dy.
template <typename T, typename Grp>
OL_HD void newton_step(const Grp& g, const Problem<T>& d, IPMState<T>& st, const T* rd, const T* rp,
                       const T* re, const T* rc, T* dx, T* ds, T* dz, T* dy) {
  const int n = d.n, m = d.m, ld = st.ld;
  // r₁ = −r_d − G̃ᵀ(W r_p − r_c/s)
  for (int i = g.rank(); i < m; i += g.size()) st.tm[i] = rc[i] / st.s[i] - st.w[i] * rp[i];
  for (int j = g.rank(); j < n; j += g.size()) dx[j] = -rd[j];
  g.sync();
  mat_t_times(g, st.Gt, ld, m, ld, st.tm, dx, true);
  reduced_solve(g, d, st, dx, re, dy);
  mat_times(g, st.Gt, ld, m, ld, dx, st.tm);  // G̃ dx
  for (int i = g.rank(); i < m; i += g.size()) {
    dz[i] = st.w[i] * (st.tm[i] + rp[i]) - rc[i] / st.s[i];
    ds[i] = -rp[i] - st.tm[i];
  }
  g.sync();
}

// A kept polish factor (forward → backward, so the backward need not refactor): the compact LU of
// the accepted active set (N×N with N = n + k + p, stride N, in the first N0² slots), its pivots
// (N0 slots), the 0/1 active mask (m) and k (last slot; −1 when there is no usable factor).
OL_HD inline int64_t factor_size(int n, int m, int p) {
  const int64_t N0 = int64_t(n) + m + p;
  return N0 * N0 + N0 + m + 1;
}

template <typename T, typename Grp>
OL_HD void keep_factor(const Grp& g, const KKTWork<T>& w, const T* inset, int n, int m, int p, int k, bool repaired,
                       T* keep) {
  const int64_t N0 = int64_t(n) + m + p, N = int64_t(n) + k + p;
  for (int64_t i = g.rank(); i < N * N; i += g.size()) keep[i] = w.LU[i];
  for (int64_t i = g.rank(); i < N; i += g.size()) keep[N0 * N0 + i] = w.piv[i];
  for (int i = g.rank(); i < m; i += g.size()) keep[N0 * N0 + N0 + i] = inset[i];
  g.sync();
  if (g.rank() == 0) keep[N0 * N0 + N0 + m] = repaired ? T(-1) : T(k);
}

// Multiplier repair of a polish round (serial code; a thread group runs it on one member). At a
// degenerate solution the active rows can be linearly dependent (e.g. a contact with zero force:
// all its friction facets and its normal bound are active on 3 variables). Then the active-set KKT
// system fixes x but not the multipliers, and its regularized solution may give some of them a
// negative sign although a nonnegative choice exists. Given the polished x, find y = (λ_𝒜 ≥ 0, ν
// free) minimizing ‖C_𝒜ᵀλ + Aᵀν + Qx + q‖ by Lawson–Hanson NNLS (ν always passive). Returns true,
// with y written to u[n…n+k+p), when the stationarity residual is ≤ tol; `scratch` holds (k+p)² +
// 6(k+p) + 2n scalars, or `scratch_size` ≥ 2(k+p)² + 7(k+p) + 2n of them, in which case the Gram
// matrix of all k + p rows and their products with g are computed once up front: every
// Lawson–Hanson step then works on those (c² multiply-adds for the gradient, no n-length dot
// products with their reductions), instead of recomputing the passive rows' Gram matrix and the
// residual. R is the arithmetic's type (scratch holds R's): T, or double for float data (see
// repair_multipliers_wide).
template <typename R, typename T>
OL_HD bool repair_multipliers(const Problem<T>& d, const int* act, int k, T tol_t, T* u, R* scratch,
                              int64_t scratch_size = 0) {
  const int n = d.n, p = d.p, c = k + p;
  const R tol = R(tol_t);
  R* gram = scratch;              // c×c Cholesky of the passive-set Gram matrix (compacted)
  R* y = gram + int64_t(c) * c;   // current multipliers
  R* sol = y + c;                 // LS solution
  R* wv = sol + c;                // negative gradient
  R* inP = wv + c;                // passive flags
  int* idx = reinterpret_cast<int*>(inP + c);  // passive index list (c ints in 2c scalars)
  R* r = inP + 3 * c;             // residual Mᵀy + g (n)
  R* gq = r + n;                  // the gradient g = Qx + q (n), fixed during the repair
  const int64_t base = int64_t(c) * c + 6 * int64_t(c) + 2 * int64_t(n);
  R* full = scratch_size >= base + int64_t(c) * c + c ? gq + n : nullptr;  // c×c Gram of all rows
  R* b0 = full != nullptr ? full + int64_t(c) * c : nullptr;                  // M g (c)
  const T* x = u;
  auto row = [&](int j) { return j < k ? d.G + int64_t(act[j]) * n : d.A + int64_t(j - k) * n; };
  if (full != nullptr)
    for (int a = 0; a < c; ++a)
      for (int b = 0; b <= a; ++b) full[a * c + b] = full[b * c + a] = dot_wide<R>(row(a), row(b), n);
  R gn = 0;
  for (int i = 0; i < n; ++i) {
    gq[i] = dot_wide<R>(d.Q + int64_t(i) * n, x, n) + R(d.q[i]);
    gn = ol_max(gn, ol_abs(gq[i]));
  }
  if (b0 != nullptr)
    for (int j = 0; j < c; ++j) {
      b0[j] = dot_wide<R>(row(j), gq, n);
    }
  auto residual = [&]() {
    for (int i = 0; i < n; ++i) r[i] = gq[i];
    for (int j = 0; j < c; ++j)
      if (y[j] != R(0)) axpy_wide(r, y[j], row(j), n);
  };
  // LS on the passive set: (M_P M_Pᵀ) s_P = −M_P g, by Cholesky; false if singular.
  auto solve_passive = [&]() {
    int np = 0;
    for (int j = 0; j < c; ++j)
      if (inP[j] > R(0.5)) idx[np++] = j;
    for (int a = 0; a < np; ++a)
      for (int b = 0; b <= a; ++b)
        gram[a * np + b] = full != nullptr ? full[idx[a] * c + idx[b]] : dot_wide<R>(row(idx[a]), row(idx[b]), n);
    for (int j = 0; j < c; ++j) sol[j] = 0;
    if (np == 0) return true;
    if (!cholesky(SerialGroup{}, gram, np)) return false;
    R* rhs_ = wv;  // reuse: −M_P g
    for (int a = 0; a < np; ++a) rhs_[a] = -(b0 != nullptr ? b0[idx[a]] : dot_wide<R>(row(idx[a]), gq, n));
    chol_solve(SerialGroup{}, gram, np, rhs_);
    for (int a = 0; a < np; ++a) sol[idx[a]] = rhs_[a];
    return true;
  };
  for (int j = 0; j < c; ++j) { y[j] = 0; inP[j] = j >= k ? R(1) : R(0); }
  if (p > 0) {
    if (!solve_passive()) return false;
    for (int j = 0; j < c; ++j) y[j] = sol[j];
  }
  const R wtol = tol * (1 + gn) * R(1e-3);
  for (int outer = 0; outer < 3 * c; ++outer) {
    if (full == nullptr) {
      residual();
    } else {
      // m_jᵀ(g + Mᵀy) = b0_j + Σ_i (m_iᵀm_j) y_i for all j at once, as axpys over the rows of the
      // (symmetric) Gram matrix: contiguous in j, and no reduction chain per j.
      for (int j = 0; j < k; ++j) wv[j] = b0[j];
      for (int i = 0; i < c; ++i)
        if (y[i] != R(0)) axpy_wide(wv, y[i], full + int64_t(i) * c, k);
    }
    int t = -1;
    R best = wtol;
    for (int j = 0; j < k; ++j) {
      if (inP[j] > R(0.5)) continue;
      const R wj = full != nullptr ? -wv[j] : -dot_wide<R>(row(j), r, n);
      if (wj > best) { best = wj; t = j; }
    }
    if (t < 0) break;
    inP[t] = 1;
    for (int inner = 0; inner <= c; ++inner) {
      if (!solve_passive()) return false;
      bool feasible = true;
      R alpha = 1;
      for (int j = 0; j < k; ++j)
        if (inP[j] > R(0.5) && !(sol[j] > R(0))) {
          feasible = false;
          const R den = y[j] - sol[j];
          if (den > R(0)) alpha = ol_min(alpha, y[j] / den);
        }
      if (feasible) {
        for (int j = 0; j < c; ++j) y[j] = sol[j];
        break;
      }
      for (int j = 0; j < c; ++j) y[j] += alpha * (sol[j] - y[j]);
      for (int j = 0; j < k; ++j)
        if (inP[j] > R(0.5) && !(y[j] > R(0))) { inP[j] = 0; y[j] = 0; }
    }
  }
  residual();
  R rn = 0;
  for (int i = 0; i < n; ++i) rn = ol_max(rn, ol_abs(r[i]));
  if (!(rn <= tol)) return false;
  for (int j = 0; j < c; ++j) u[n + j] = T(j < k ? ol_max(y[j], R(0)) : y[j]);
  return true;
}

// repair_multipliers in double precision for float data where `scratch` (scratch_size T's) has room
// for it, else in T. Its passive-set least squares go through the normal equations, whose condition
// number is the square of the active rows': at a degenerate float32 vertex (25 active rows and 5
// equalities on 22 variables) float's Cholesky could not bring the residual to the polish tolerance
// that double reaches (the tolerance stays float's). `full`: allow the Gram matrix of all rows.
template <typename T>
OL_HD bool repair_multipliers_wide(const Problem<T>& d, const int* act, int k, T tol, T* u, T* scratch,
                                   int64_t scratch_size, bool full) {
  if constexpr (sizeof(T) < sizeof(double)) {
    // The first 8-byte-aligned address in scratch, and how many doubles fit from there.
    const uintptr_t a = reinterpret_cast<uintptr_t>(scratch);
    const uintptr_t aligned = (a + alignof(double) - 1) & ~uintptr_t(alignof(double) - 1);
    const int64_t cap = (scratch_size * int64_t(sizeof(T)) - int64_t(aligned - a)) / int64_t(sizeof(double));
    const int64_t need = int64_t(k + d.p) * (k + d.p) + 6 * int64_t(k + d.p) + 2 * int64_t(d.n);
    if (need <= cap)
      return repair_multipliers<double>(d, act, k, tol, u, reinterpret_cast<double*>(aligned), full ? cap : 0);
  }
  return repair_multipliers<T>(d, act, k, tol, u, scratch, full ? scratch_size : 0);
}

// Polish (see optlayers/_src/qp/backends/torch_ipm.py::polish): solve the KKT system of the
// guessed active set; accept if primal feasible with non-negative multipliers; otherwise correct
// the guess (drop rows with negative multipliers, add violated rows) up to kPolishRounds − 1 times.
template <typename T, typename Grp>
OL_HD bool polish(const Grp& g, const Problem<T>& d, const Settings<T>& set, T* work, T* x, T* lam, T* nu,
                  int8_t* status, int rounds = kPolishRounds, T* keep = nullptr) {
  const int n = d.n, m = d.m, p = d.p;
  if (!((*status == kSolved) || (*status == kMaxIter))) return false;
  const int64_t N0 = int64_t(n) + m + p;
  KKTWork<T> w{work, work + N0 * N0, work + N0 * N0 + N0, work + N0 * N0 + 2 * N0};
  T* rhs = work + N0 * N0 + 3 * N0;
  T* u = rhs + N0;
  int* act = reinterpret_cast<int*>(u + N0);
  T* gx = u + N0 + m;   // G x (m)
  T* inset = gx + m;    // 0/1 active-set guess (m)
  mat_times(g, d.G, n, m, n, x, gx);
  for (int i = g.rank(); i < m; i += g.size()) inset[i] = lam[i] > d.h[i] - gx[i] ? T(1) : T(0);
  g.sync();
  const T delta = set.kkt_reg * data_scale(g, d);
  T part_h = 0;
  for (int i = g.rank(); i < m; i += g.size()) part_h = ol_max(part_h, ol_abs(d.h[i]));
  const T hn = g.max(part_h);
  for (int round = 0; round < rounds; ++round) {
    int k = 0;
    if (g.rank() == 0)
      for (int i = 0; i < m; ++i)
        if (inset[i] > T(0.5)) act[k++] = i;
    g.sync();
    k = 0;
    for (int i = 0; i < m; ++i) k += inset[i] > T(0.5) ? 1 : 0;
    const int N = n + k + p;
    kkt_assemble_factor(g, d, act, k, delta, w);
    for (int i = g.rank(); i < n; i += g.size()) rhs[i] = -d.q[i];
    for (int a = g.rank(); a < k; a += g.size()) rhs[n + a] = d.h[act[a]];
    for (int e = g.rank(); e < p; e += g.size()) rhs[n + k + e] = d.b[e];
    g.sync();  // rhs is read below under another member-to-index mapping (found by ThreadSanitizer)
    // Solve, then test: primal feasibility, dual sign, residual, finiteness. A solution that fails
    // only the sign test (dependent active rows, e.g. a zero-force grasp contact: the active-set
    // system fixes x but not the multipliers, and its regularized, minimum-norm-like choice has
    // arbitrary signs) is solved once more with the right-hand side G_𝒜x − δλ = h_𝒜 − δλ̂ (λ̂ ≥ 0
    // the interior point's multipliers), which picks the multipliers nearest to λ̂; the refinement
    // is against the exact h_𝒜, so x does not change. Usually that passes, and the NNLS repair
    // below is left for the rest, on the unshifted solution. (Using the shifted solution beyond
    // its acceptance changes which later polish rounds succeed: one of 4,800 grasp QPs then failed
    // every round.)
    T res = 0, rhs_n = 0, viol = 0, neg = 0, ln = 0;
    bool finite = false, primal_ok = false, accept = false;
    // No finite λ̂ on the active rows (the warm start's guess, csrc/qp_cpu_derivatives.cpp::qp_active_set_solve,
    // host only): attempts 1 and 2 would repeat attempt 0 exactly, and are skipped. (On the GPU λ̂ is
    // always the interior point's: no group reduction spent on it there.)
#if defined(__CUDA_ARCH__)
    const bool shiftable = true;
#else
    T part_fin = 0;
    for (int a = g.rank(); a < k; a += g.size()) part_fin = ol_abs(lam[act[a]]) < ol_inf<T>() ? T(1) : part_fin;
    const bool shiftable = g.max(part_fin) > T(0);
#endif
    for (int attempt = 0; attempt < (shiftable ? 3 : 1); ++attempt) {
      const bool shifted = attempt == 1;
      for (int i = g.rank(); i < N; i += g.size()) {
        const T li = (shifted && i >= n && i < n + k) ? lam[act[i - n]] : T(0);
        u[i] = ol_abs(li) < ol_inf<T>() ? rhs[i] - delta * li : rhs[i];  // (a non-finite λ̂: no shift)
      }
      g.sync();
      kkt_refined_solve(g, d, act, k, w, rhs, u, true);
      kkt_matvec(g, d, act, k, u, w.r);
      T part_res = 0, part_rhs = 0;
      bool part_finite = true;
      for (int i = g.rank(); i < N; i += g.size()) {
        part_res = ol_max(part_res, ol_abs(w.r[i] - rhs[i]));
        part_rhs = ol_max(part_rhs, ol_abs(rhs[i]));
        part_finite = part_finite && (u[i] == u[i]) && ol_abs(u[i]) < ol_inf<T>();
      }
      res = g.max(part_res);
      rhs_n = g.max(part_rhs);
      finite = g.max(part_finite ? T(0) : T(1)) == T(0);
      mat_times(g, d.G, n, m, n, u, gx);  // G xp
      T part_viol = 0;
      for (int i = g.rank(); i < m; i += g.size()) part_viol = ol_max(part_viol, gx[i] - d.h[i]);
      viol = g.max(part_viol);
      T part_lmin = 0, part_ln = 0;
      for (int a = g.rank(); a < k; a += g.size()) {
        part_lmin = ol_max(part_lmin, -u[n + a]);
        part_ln = ol_max(part_ln, ol_abs(u[n + a]));
      }
      neg = g.max(part_lmin);
      ln = g.max(part_ln);
      primal_ok = finite && viol <= set.polish_tol * (1 + hn) && res <= set.polish_tol * (1 + rhs_n);
      accept = primal_ok && neg <= set.polish_tol * (1 + ln);
      g.sync();
      if (accept || (attempt == 0 && !primal_ok)) break;
      // Not accepted after the shifted solve: attempt 2 re-solves unshifted, so that the repair
      // and the next round's corrections see exactly what they saw without the second try.
    }
    bool repaired = false;
    // Right x, wrong-signed multipliers (dependent active rows): look for nonnegative ones. The
    // repair is serial; in a thread group its first member runs it while the others wait, and
    // the verdict goes to all through a workspace slot (w.du is free once the solve is done).
    const int64_t need = int64_t(k + p) * (k + p) + 6 * int64_t(k + p) + 2 * int64_t(n);
    if (!accept && primal_ok && need <= N0 * N0)
    {
      if constexpr (Grp::kSerial) {
        accept = repair_multipliers_wide(d, act, k, set.polish_tol * (1 + rhs_n), u, w.LU, N0 * N0, true);
      } else {
        g.sync();  // every member is done reading u and w.du
        if (g.rank() == 0)
          w.du[0] = repair_multipliers_wide(d, act, k, set.polish_tol * (1 + rhs_n), u, w.LU, N0 * N0, false) ? T(1) : T(0);
        g.sync();
        accept = w.du[0] > T(0.5);
        g.sync();
      }
      repaired = accept;  // w.LU now holds the repair's scratch, not the factor
    }
    g.sync();
    if (accept) {
      for (int i = g.rank(); i < n; i += g.size()) x[i] = u[i];
      for (int i = g.rank(); i < m; i += g.size()) lam[i] = 0;
      for (int e = g.rank(); e < p; e += g.size()) nu[e] = u[n + k + e];
      g.sync();
      for (int a = g.rank(); a < k; a += g.size()) lam[act[a]] = ol_max(u[n + a], T(0));
      if (g.rank() == 0) *status = kSolved;
      if (keep != nullptr) keep_factor(g, w, inset, n, m, p, k, repaired, keep);
      g.sync();
      return true;
    }
    // Correct the guess: violated inactive rows join, active rows with negative multipliers leave.
    // Violated as the acceptance test counts it (not any gx > h: rows at rounding level joined a
    // degenerate grasp QP's set and made the next guess wrong). Of the violated rows only those the
    // interior point's iterate (x, λ̂ = lam: not written before acceptance) ranks within kJoinRatio
    // of the likeliest join: first pass marks them (inset = −1) with their ρ in gx (free until the
    // next round's solve), second pass decides.
    const T floor_s = set.polish_tol * (1 + hn);
    T part_best = 0, part_unranked = 0;
    for (int i = g.rank(); i < m; i += g.size()) {
      if (inset[i] < T(0.5) && gx[i] - d.h[i] > floor_s) {
        const T rho = ol_max(lam[i], T(0)) / ol_max(d.h[i] - dot_serial(d.G + int64_t(i) * n, x, n), floor_s);
        if (rho < ol_inf<T>()) part_best = ol_max(part_best, rho);
        else part_unranked = T(1);  // +∞ or NaN
        gx[i] = rho;
        inset[i] = T(-1);
      }
    }
    const T best = g.max(part_best);
    const bool ranked = g.max(part_unranked) == T(0) && best > T(0);
    for (int i = g.rank(); i < m; i += g.size())
      if (inset[i] < T(-0.5)) inset[i] = (!ranked || gx[i] >= T(kJoinRatio) * best) ? T(1) : T(0);
    g.sync();
    for (int a = g.rank(); a < k; a += g.size())
      if (u[n + a] < T(0)) inset[act[a]] = 0;
    g.sync();
  }
  return false;
}

// Equality-only problems (m = 0): one KKT solve, status from the residuals.
template <typename T, typename Grp>
OL_HD void solve_equality_only(const Grp& g, const Problem<T>& d, const Settings<T>& set, T* work, T* x,
                               T* nu, int8_t* status, int32_t* iters) {
  const int n = d.n, p = d.p;
  const int64_t N0 = int64_t(n) + p;
  KKTWork<T> w{work, work + N0 * N0, work + N0 * N0 + N0, work + N0 * N0 + 2 * N0};
  T* rhs = work + N0 * N0 + 3 * N0;
  T* u = rhs + N0;
  const T delta = set.kkt_reg * data_scale(g, d);
  kkt_assemble_factor(g, d, static_cast<const int*>(nullptr), 0, delta, w);
  for (int i = g.rank(); i < n; i += g.size()) rhs[i] = -d.q[i];
  for (int e = g.rank(); e < p; e += g.size()) rhs[n + e] = d.b[e];
  g.sync();
  kkt_refined_solve(g, d, static_cast<const int*>(nullptr), 0, w, rhs, u);
  // Stationarity and feasibility residuals.
  T* r = w.r;
  mat_t_times(g, d.A, n, p, n, u + n, r, false);
  T part_st = 0, part_q = 0;
  bool part_finite = true;
  for (int i = g.rank(); i < n; i += g.size()) {
    T acc = r[i] + d.q[i];
    for (int j = 0; j < n; ++j) acc += d.Q[i * n + j] * u[j];
    part_st = ol_max(part_st, ol_abs(acc));
    part_q = ol_max(part_q, ol_abs(d.q[i]));
    part_finite = part_finite && (u[i] == u[i]) && ol_abs(u[i]) < ol_inf<T>();
  }
  mat_times(g, d.A, n, p, n, u, w.du);
  T part_pr = 0, part_b = 0;
  for (int e = g.rank(); e < p; e += g.size()) {
    part_pr = ol_max(part_pr, ol_abs(w.du[e] - d.b[e]));
    // Scale by the terms of Ax (|A||x|), not only b: a huge regularized x of an unbounded
    // problem must not pass for an inconsistent Ax = b through rounding alone.
    T terms = 0;
    for (int j = 0; j < n; ++j) terms += ol_abs(d.A[int64_t(e) * n + j]) * ol_abs(u[j]);
    part_b = ol_max(part_b, ol_max(ol_abs(d.b[e]), terms));
    part_finite = part_finite && (u[n + e] == u[n + e]) && ol_abs(u[n + e]) < ol_inf<T>();
  }
  const T st = g.max(part_st), qn = g.max(part_q), pr = g.max(part_pr), bn = g.max(part_b);
  const bool finite = g.max(part_finite ? T(0) : T(1)) == T(0);
  for (int i = g.rank(); i < n; i += g.size()) x[i] = u[i];
  for (int e = g.rank(); e < p; e += g.size()) nu[e] = u[n + e];
  if (g.rank() == 0) {
    int8_t code = kSolved;
    if (!(st <= set.polish_tol * (1 + qn))) code = kDualInfeasible;
    if (!(pr <= set.polish_tol * (1 + bn))) code = kPrimalInfeasible;
    if (!finite) code = kNumericalError;
    *status = code;
    *iters = 0;
  }
  g.sync();
}

// `K_override`: optional storage for the n×n reduced matrix (e.g. CUDA shared memory; thread
// groups only, whose rows are not padded).
template <typename T, typename Grp>
OL_HD void solve_qp(const Grp& g, const Problem<T>& d, const Settings<T>& set, T* work, T* x, T* lam, T* nu,
                    int8_t* status, int32_t* iters, T* K_override = nullptr, T* keep = nullptr) {
  const int n = d.n, m = d.m, p = d.p;
  if (keep != nullptr) {  // no factor (yet); zeros elsewhere keep the output deterministic
    const int64_t fs = factor_size(n, m, p);
    for (int64_t i = g.rank(); i < fs - 1; i += g.size()) keep[i] = T(0);
    if (g.rank() == 0) keep[fs - 1] = T(-1);
    g.sync();
  }
  if (m == 0) {
    solve_equality_only(g, d, set, work, x, nu, status, iters);
    return;
  }
  const int ld = row_ld<T, Grp>(n);
  IPMState<T> st = carve(work, n, m, p, ld);
  // Zero the IPM workspace: the padding of rows and vectors must read as zeros.
  for (int64_t i = g.rank(); i < st.ipm_size; i += g.size()) work[i] = T(0);
  g.sync();
  if (K_override != nullptr) st.K = K_override;
  // Row scales (1/‖row‖, 1 for zero rows) and the regularization δ on the scaled data.
  T scale = 1;  // max(1, |Q|, |G̃|, |Ã|): this member's part, reduced below
  for (int64_t i = g.rank(); i < int64_t(n) * n; i += g.size()) scale = ol_max(scale, ol_abs(d.Q[i]));
  for (int i = g.rank(); i < m; i += g.size()) {
    T acc = 0;
    for (int j = 0; j < n; ++j) acc += d.G[int64_t(i) * n + j] * d.G[int64_t(i) * n + j];
    st.gs[i] = acc > T(0) ? T(1) / ol_sqrt(acc) : T(1);
  }
  for (int e = g.rank(); e < p; e += g.size()) {
    T acc = 0;
    for (int j = 0; j < n; ++j) acc += d.A[int64_t(e) * n + j] * d.A[int64_t(e) * n + j];
    st.as[e] = acc > T(0) ? T(1) / ol_sqrt(acc) : T(1);
  }
  g.sync();
  // The scaled copies G̃ = diag(gs) G, Ã = diag(as) A (rows padded to ld with zeros).
  T part = 0;
  for (int i = g.rank(); i < m; i += g.size())
    for (int j = 0; j < n; ++j) {
      const T v = d.G[int64_t(i) * n + j] * st.gs[i];
      st.Gt[int64_t(i) * ld + j] = v;
      part = ol_max(part, ol_abs(v));
    }
  for (int e = g.rank(); e < p; e += g.size())
    for (int j = 0; j < n; ++j) {
      const T v = d.A[int64_t(e) * n + j] * st.as[e];
      st.At[int64_t(e) * ld + j] = v;
      part = ol_max(part, ol_abs(v));
    }
  scale = g.max(ol_max(scale, part));
  const T delta = set.kkt_reg * scale;

  // Scaled right-hand sides h̃, b̃.
  T* hs = st.hs;
  T* bs = st.bs;
  for (int i = g.rank(); i < m; i += g.size()) hs[i] = d.h[i] * st.gs[i];
  for (int e = g.rank(); e < p; e += g.size()) bs[e] = d.b[e] * st.as[e];
  g.sync();

  // Initial point: W = I;  x = K⁻¹(−q + G̃ᵀh̃ − Ãᵀy) with Ãx = b̃; s, z: start_balance.
  for (int i = g.rank(); i < m; i += g.size()) {
    st.w[i] = T(1);
    st.wt[i] = st.gs[i] * st.gs[i];
  }
  g.sync();
  bool ok = factor_reduced(g, d, st, delta);
  for (int j = g.rank(); j < n; j += g.size()) st.x[j] = -d.q[j];
  for (int e = g.rank(); e < p; e += g.size()) st.re[e] = -bs[e];
  g.sync();
  mat_t_times(g, st.Gt, ld, m, ld, hs, st.x, true);
  reduced_solve(g, d, st, st.x, st.re, st.y);
  mat_times(g, st.Gt, ld, m, ld, st.x, st.tm);
  // s⁰ = h̃ − G̃x⁰, z⁰ = −s⁰, shifted and balanced (start_balance).
  T smin_p = ol_inf<T>(), smax_p = -ol_inf<T>();
  for (int i = g.rank(); i < m; i += g.size()) {
    st.s[i] = hs[i] - st.tm[i];
    smin_p = ol_min(smin_p, st.s[i]);
    smax_p = ol_max(smax_p, st.s[i]);
  }
  const T smin = -g.max(-smin_p), smax = g.max(smax_p);
  T a_s, a_z;
  start_offsets<T>(smin, smax, a_s, a_z);
  T part_sz = 0, part_s = 0, part_z = 0;
  for (int i = g.rank(); i < m; i += g.size()) {
    const T s0 = st.s[i], st_i = s0 + a_s, zt_i = -s0 + a_z;
    part_sz += st_i * zt_i;
    part_s += st_i;
    part_z += zt_i;
  }
  const T sum_sz = g.sum(part_sz), sum_s = g.sum(part_s), sum_z = g.sum(part_z);  // (collectives: in order)
  T ds, dz, lo;
  start_balance<T>(smin, smax, sum_sz, sum_s, sum_z, ds, dz, lo);
  for (int i = g.rank(); i < m; i += g.size()) {
    const T s0 = st.s[i];
    st.s[i] = ol_max(s0 + a_s + ds, lo);
    st.z[i] = ol_max(-s0 + a_z + dz, lo);
  }
  g.sync();

  const T qn = inf_norm(g, d.q, n), hn = inf_norm(g, hs, m), bn = inf_norm(g, bs, p);
  int8_t code = kMaxIter;
  int it = 0;
  Progress<T> progress;
  T loose = set.polish_start;  // next early-polish threshold (≤ tol: none)
  // The iterate broke or a factorization failed inside the loop (not at the start).
  bool rescue = false;
  // The iterate of lowest merit so far (xb, zb, yb): what an iteration-limited problem hands to
  // the polish. In float32 the last iterates can drift away from it — the residuals climb back
  // from the rounding floor while sᵀz keeps falling (degenerate grasp QPs) — and the polish's
  // active-set guess from such an iterate is wrong. Same rule as the PyTorch backend.
  T merit_best = ol_inf<T>();
  if (!ok) code = kNumericalError;
  for (; ok && it <= set.max_iter; ++it) {
    // Residuals.
    T* Qx = st.tn;
    for (int i = g.rank(); i < n; i += g.size()) Qx[i] = dot_serial(d.Q + int64_t(i) * n, st.x, n);
    g.sync();
    mat_times(g, st.Gt, ld, m, ld, st.x, st.tm);     // G̃x
    mat_times(g, st.At, ld, p, ld, st.x, st.re);     // Ãx
    mat_t_times(g, st.Gt, ld, m, ld, st.z, st.tn2, false);
    mat_t_times(g, st.At, ld, p, ld, st.y, st.tn2, true);  // G̃ᵀz + Ãᵀy
    const T Gxn = inf_norm(g, st.tm, m), Axn = inf_norm(g, st.re, p), Qxn = inf_norm(g, Qx, n);
    const T Gtzn = inf_norm(g, st.tn2, n);
    T part_ray = 0;
    for (int i = g.rank(); i < m; i += g.size()) part_ray = ol_max(part_ray, st.tm[i]);
    const T Gx_pos = g.max(part_ray);
    for (int j = g.rank(); j < n; j += g.size()) st.rd[j] = Qx[j] + d.q[j] + st.tn2[j];
    for (int i = g.rank(); i < m; i += g.size()) st.rp[i] = st.tm[i] + st.s[i] - hs[i];
    for (int e = g.rank(); e < p; e += g.size()) st.re[e] = st.re[e] - bs[e];
    g.sync();
    const T sz = dot(g, st.s, st.z, m);
    const T mu = sz / T(m);
    const T qx = dot(g, d.q, st.x, n);
    const T xQx = dot(g, st.x, Qx, n);
    const T gap = sz / (1 + ol_abs(T(0.5) * xQx + qx));
    const T pres = ol_max(inf_norm(g, st.rp, m) / (1 + ol_max(hn, Gxn)), inf_norm(g, st.re, p) / (1 + ol_max(bn, Axn)));
    const T dres = inf_norm(g, st.rd, n) / (1 + ol_max(ol_max(qn, Qxn), Gtzn));
    const bool converged = pres <= set.tol && dres <= set.tol && gap <= set.tol;
    const T t_p = -(dot(g, hs, st.z, m) + dot(g, bs, st.y, p));
    // (The sizes are summed only for a claimed certificate; the flags are group-uniform.)
    const bool primal_inf = t_p > T(0) && Gtzn <= set.inf_tol * t_p &&
                            above_cancellation(t_p, dot_size(g, hs, st.z, m) + dot_size(g, bs, st.y, p), set.inf_tol);
    const T ray = ol_max(ol_max(Qxn, Axn), ol_max(Gx_pos, T(0)));
    const bool dual_inf = qx < T(0) && ray <= set.inf_tol * (-qx) &&
                          above_cancellation(-qx, dot_size(g, d.q, st.x, n), set.inf_tol);
    const T total = sz + dot(g, st.x, st.x, n) + dot(g, st.y, st.y, p) + dot(g, st.s, st.s, m);
    // A broken iterate (NaN/Inf: float32 diverging near a degenerate solution) is handled like an
    // unfactorable matrix below: its lowest-merit iterate goes to the polish.
    const bool broken = !(ol_abs(total) < ol_inf<T>());
    if (broken) { code = kNumericalError; rescue = true; break; }
    if (converged) { code = kSolved; break; }
    // Early polish: once the iterate meets a loose tolerance its active set is usually final, and
    // the polish (same acceptance test as at the end: primal feasible, dual sign, KKT residual to
    // polish_tol) then finishes the solve exactly, saving the last interior-point iterations. If
    // it is not accepted, the iteration goes on and tries again once 1000× tighter.
    if (set.polish && loose > set.tol && pres <= loose && dres <= loose && gap <= loose) {
      loose *= T(1e-3);
      for (int j = g.rank(); j < n; j += g.size()) x[j] = st.x[j];
      for (int i = g.rank(); i < m; i += g.size()) lam[i] = st.z[i] * st.gs[i];
      for (int e = g.rank(); e < p; e += g.size()) nu[e] = st.y[e] * st.as[e];
      if (g.rank() == 0) *status = kMaxIter;
      g.sync();
      if (polish(g, d, set, st.polish, x, lam, nu, status, kEarlyPolishRounds, keep)) {
        if (g.rank() == 0) *iters = it;
        g.sync();
        return;
      }
    }
    if (primal_inf) { code = kPrimalInfeasible; break; }
    if (dual_inf) { code = kDualInfeasible; break; }
    // Progress: the merit or sᵀz fell by kStallDecrease (the gap term of the merit is relative to
    // 1 + |f(x)| and can rise while f(x) moves towards a small optimum although sᵀz falls).
    // Progress towards an infeasibility certificate counts too (on an infeasible problem the merit
    // grows while these ratios fall geometrically).
    const T merit = ol_max(ol_max(pres, dres), gap);
    if (merit < merit_best) {  // group-uniform: every member computed the same merit
      merit_best = merit;
      for (int j = g.rank(); j < n; j += g.size()) st.xb[j] = st.x[j];
      for (int i = g.rank(); i < m; i += g.size()) st.zb[i] = st.z[i];
      for (int e = g.rank(); e < p; e += g.size()) st.yb[e] = st.y[e];
    }
    const T cert = ol_min(t_p > T(0) ? Gtzn / t_p : ol_inf<T>(), qx < T(0) ? ray / (-qx) : ol_inf<T>());
    if (progress.stalled(merit, sz, cert, ol_max(pres, dres)) || it == set.max_iter) { code = kMaxIter; break; }

    // Factor the reduced system at W = Z S⁻¹.
    for (int i = g.rank(); i < m; i += g.size()) {
      st.w[i] = st.z[i] / st.s[i];
      st.wt[i] = st.w[i] * st.gs[i] * st.gs[i];
    }
    g.sync();
    if (!factor_reduced(g, d, st, delta)) { code = kNumericalError; rescue = true; break; }
    // Predictor.
    for (int i = g.rank(); i < m; i += g.size()) st.rc[i] = st.s[i] * st.z[i];
    g.sync();
    newton_step(g, d, st, st.rd, st.rp, st.re, st.rc, st.dxa, st.dsa, st.dza, st.dya);
    const T aa = ol_min(T(1), ol_min(max_step(g, st.s, st.dsa, m), max_step(g, st.z, st.dza, m)));
    T part_mu = 0;
    for (int i = g.rank(); i < m; i += g.size()) part_mu += (st.s[i] + aa * st.dsa[i]) * (st.z[i] + aa * st.dza[i]);
    const T mu_aff = g.sum(part_mu) / T(m);
    T ratio = mu_aff / mu;
    ratio = ol_min(ol_max(ratio, T(0)), T(1));
    const T sigma = ratio * ratio * ratio;
    // Corrector.
    for (int i = g.rank(); i < m; i += g.size()) st.rc[i] = st.s[i] * st.z[i] + st.dsa[i] * st.dza[i] - sigma * mu;
    g.sync();
    newton_step(g, d, st, st.rd, st.rp, st.re, st.rc, st.dx, st.ds, st.dz, st.dy);
    const T alpha = ol_min(T(1), set.step_to_boundary * ol_min(max_step(g, st.s, st.ds, m), max_step(g, st.z, st.dz, m)));
    for (int j = g.rank(); j < n; j += g.size()) st.x[j] += alpha * st.dx[j];
    for (int i = g.rank(); i < m; i += g.size()) { st.s[i] += alpha * st.ds[i]; st.z[i] += alpha * st.dz[i]; }
    for (int e = g.rank(); e < p; e += g.size()) st.y[e] += alpha * st.dy[e];
    g.sync();
  }
  // Unscale the multipliers and write the result: the lowest-merit iterate for a problem the
  // polish gets as an iteration-limited one (stalled, out of iterations, broken or unfactorable).
  const bool use_best = (code == kMaxIter || rescue) && merit_best < ol_inf<T>();
  const T* xo = use_best ? st.xb : st.x;
  const T* zo = use_best ? st.zb : st.z;
  const T* yo = use_best ? st.yb : st.y;
  for (int j = g.rank(); j < n; j += g.size()) x[j] = xo[j];
  for (int i = g.rank(); i < m; i += g.size()) lam[i] = zo[i] * st.gs[i];
  for (int e = g.rank(); e < p; e += g.size()) nu[e] = yo[e] * st.as[e];
  // A reduced matrix that could not be factored late in the iteration (float32 near a degenerate
  // solution: K's condition number grows like 1/μ), or an iterate that broke, leaves a best
  // iterate whose active set is often right: the polish gets it as it gets an iteration-limited
  // one, and only its acceptance test (primal and dual feasible, KKT residual to polish_tol)
  // turns it into SOLVED. Without a finite best iterate the status stays kNumericalError.
  const bool rescued = rescue && set.polish && merit_best < ol_inf<T>();
  if (g.rank() == 0) { *status = rescued ? int8_t(kMaxIter) : code; *iters = it; }
  g.sync();
  if (set.polish && !polish(g, d, set, st.polish, x, lam, nu, status, kPolishRounds, keep) && rescue) {
    if (g.rank() == 0) *status = kNumericalError;
    g.sync();
  }
}

}  // namespace optlayers
