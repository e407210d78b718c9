"""The active-set reduced KKT system of a sparse QP, factored sparsely — shared by the polish
step of the forward pass and by the implicit backward.

At a solution (x, y) of  min ½xᵀPx + qᵀx  s.t.  l ≤ Ax ≤ u  with active set 𝒜 (rows at a bound:
y_i > 0 at u_i, y_i < 0 at l_i, and every equality row l_i = u_i), the KKT conditions that stay
valid under small perturbations of the data (strict complementarity) are

    P x + q + A_𝒜ᵀ y_𝒜 = 0,      A_𝒜 x = b_𝒜 (= u_i or l_i, the active bound),      y_ℐ = 0,

linear in (x, y_𝒜) with the symmetric indefinite matrix

    K = ⎡ P     A_𝒜ᵀ ⎤        (size n + |𝒜|).
        ⎣ A_𝒜   0    ⎦

**Why the reduced system and not the full one.** The full system (all m rows, with the rows of
inactive constraints reduced to ``dy_i = 0``, as the dense family writes it so that a batch with
different active sets is one batched tensor) has the same solution: its inactive rows decouple
exactly. Sparse, per-problem factorization has no batching to gain from the full form, and the
reduced one is strictly smaller — n + |𝒜| instead of n + m unknowns, and no fill-in from the
inactive rows of A, which are typically most of them (box constraints, MPC input/state limits).
It is also exactly the system of the polish step, so the forward pass factors it once and the
backward reuses that factorization (one back-solve per problem). Its only drawback — the
pattern depends on 𝒜, so symbolic analysis cannot be shared between different active sets — is
offset by sharing the *numeric* factorization between problems with the same values of P, A
and the same 𝒜 (a batch over q, l, u, or repeated calls; see ``cache.py``).

Numerics: K is singular when active rows are linearly dependent or P is singular on their null
space, and an LDLᵀ factorization without pivoting may not exist for an indefinite K. We factor
the quasi-definite regularization (Vanderbei 1995; the same device as OSQP's polish)

    K_δ = ⎡ P + δI   A_𝒜ᵀ ⎤ ,     δ = KKT_REG · max(1, max|P|, max|A|),
          ⎣ A_𝒜      −δI  ⎦

which has an LDLᵀ factorization for every symmetric ordering, with QDLDL (AMD ordering; it ships
with cvxpy/OSQP's ecosystem) or scipy's SuperLU when QDLDL is missing, then refine against the
exact K: u ← u + K_δ⁻¹(rhs − K u). The iteration contracts by ≈ δ‖K⁻¹‖ per step, so a few steps
give the exact solution when K is nonsingular; when K is singular it stays finite and returns a
regularized (minimum-norm-like) solution — the documented element of the generalized Jacobian
at degenerate points, as in the dense family.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp

from optlayers._src.sparse import options as opts
from optlayers._src.sparse.problem import Pattern

INF = np.inf


def classify(x, y, z, l, u) -> np.ndarray:
    """Active set from an (approximate) primal-dual point: (m,) int8, +1 at the upper bound,
    −1 at the lower bound, 0 inactive. Equality rows are always active (sign of y, + at 0)."""
    up = (y > u - z) & np.isfinite(u)
    lo = (-y > z - l) & np.isfinite(l)
    eq = l == u
    sign = np.zeros(y.shape, np.int8)
    sign[lo] = -1
    sign[up & ~lo] = 1
    both = up & lo  # only at infeasible iterates; y decides
    sign[both] = np.where(y[both] >= 0, 1, -1)
    sign[eq] = np.where(y[eq] >= 0, 1, -1)
    return sign


def csc(pattern: Pattern, values: np.ndarray) -> sp.csc_matrix:
    return sp.csc_matrix((values, pattern.indices, pattern.indptr), shape=pattern.shape)


def _symmetric(Pt: sp.csc_matrix) -> sp.csr_matrix:
    """Full symmetric P from its upper triangle."""
    return (Pt + Pt.T - sp.diags(Pt.diagonal())).tocsr()


class _Backsolve:
    """K_δ⁻¹ through QDLDL (upper triangle, AMD) or SuperLU (full matrix)."""

    def __init__(self, K_upper: sp.csc_matrix):
        try:
            import qdldl
        except ImportError:  # optional: scipy's SuperLU works everywhere
            qdldl = None
        if qdldl is not None:
            self._qdldl = qdldl.Solver(K_upper, upper=True)
            self._lu = None
        else:
            import scipy.sparse.linalg as sla

            full = (K_upper + K_upper.T - sp.diags(K_upper.diagonal())).tocsc()
            self._qdldl = None
            self._lu = sla.splu(full)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        if self._qdldl is not None:
            return self._qdldl.solve(r)
        return self._lu.solve(r)


class ReducedKKT:
    """Factorization of the reduced KKT matrix for one problem (values of P, A) and active set.

    ``active``: indices of the active rows (sorted); ``sign``: (m,) int8 from :func:`classify`.
    """

    def __init__(self, P_pattern: Pattern, P_vals: np.ndarray, A_pattern: Pattern, A_vals: np.ndarray, sign: np.ndarray):
        n = P_pattern.shape[0]
        self.n = n
        self.sign = sign
        self.active = np.flatnonzero(sign)
        k = self.active.shape[0]
        Pt = csc(P_pattern, P_vals)
        A = csc(A_pattern, A_vals).tocsr()
        self.Aa = A[self.active]
        self.AaT = self.Aa.T.tocsr()
        self.P = _symmetric(Pt)
        scale = max(1.0, float(np.abs(P_vals).max(initial=0.0)), float(np.abs(A_vals).max(initial=0.0)))
        # K_δ is quasi-definite, so it has an LDLᵀ factorization in exact arithmetic for any
        # ordering; in floating point, where P is zero or singular (LPs), pivots of size δ come out
        # of cancellations between terms of size ‖A‖²/δ and can round to exactly 0: QDLDL then
        # refuses the matrix ("not quasi-definite") — 27% of the polish factorizations of a fuzz
        # over random LPs, most of them well conditioned (cond(K) ≈ 14). A larger δ keeps the
        # pivots above the rounding of those terms; the refinement against the exact K removes
        # it (its contraction is ~δ‖K⁻¹‖, checked by the polish's acceptance test).
        error = None
        for grow in opts.KKT_REG_GROWTH:
            self.delta = opts.KKT_REG * grow * scale
            K_upper = sp.bmat(
                [[sp.triu(Pt) + self.delta * sp.eye(n), self.AaT], [None, -self.delta * sp.eye(k)]],
                format="csc",
            )
            try:
                self._solve = _Backsolve(K_upper)
                return
            except RuntimeError as err:
                error = err
        raise error

    @property
    def size(self) -> int:
        return self.n + self.active.shape[0]

    def with_sign(self, sign: np.ndarray) -> "ReducedKKT":
        """The same factorization (same active rows) with other bound sides — e.g. the sign of
        an equality row's multiplier differs between problems sharing the factorization."""
        other = copy.copy(self)
        other.sign = sign.copy()
        return other

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """The exact K v."""
        vx, vy = v[: self.n], v[self.n:]
        return np.concatenate([self.P @ vx + self.AaT @ vy, self.Aa @ vx])

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """K u = rhs (rhs, u: (n + |𝒜|,)) by K_δ⁻¹ and iterative refinement against K."""
        u = self._solve(rhs)
        scale = max(float(np.abs(rhs).max(initial=0.0)), 1e-300)
        for _ in range(opts.REFINE_MAX_STEPS):
            r = rhs - self.matvec(u)
            if not np.all(np.isfinite(r)) or float(np.abs(r).max(initial=0.0)) <= opts.REFINE_TOL * scale:
                break
            u = u + self._solve(r)
        return u


def polish(kkt: ReducedKKT, q, A: sp.csr_matrix, l, u):
    """The exact solution of the equality-constrained QP on the active set of ``kkt``, and
    whether it is *the* solution: primal feasible on the inactive rows and with multipliers of
    the right sign on the active ones, to ``POLISH_TOL`` relative (round-off level; see
    ``options.py``). Returns (x, y, accepted)."""
    sign = kkt.sign
    act = kkt.active
    b = np.where(sign[act] > 0, u[act], l[act])
    sol = kkt.solve(np.concatenate([-q, b]))
    if not np.all(np.isfinite(sol)):
        return None, None, False
    x = sol[: kkt.n]
    y = np.zeros(A.shape[0])
    y[act] = sol[kkt.n:]
    z = A @ x
    tol_p = opts.POLISH_TOL * (1.0 + float(np.abs(z).max(initial=0.0)))
    viol = np.maximum(np.maximum(l - z, z - u), 0.0)
    viol[act] = 0.0
    Px, Aty = kkt.P @ x, kkt.AaT @ sol[kkt.n:]
    dual_scale = max(float(np.abs(Px).max(initial=0.0)), float(np.abs(q).max(initial=0.0)),
                     float(np.abs(Aty).max(initial=0.0)))
    tol_d = opts.POLISH_TOL * (1.0 + dual_scale)
    eq = l[act] == u[act]
    wrong = np.where(sign[act] > 0, -y[act], y[act])
    wrong[eq] = 0.0
    # The KKT solve itself must have succeeded: the regularized factor plus refinement can stall
    # (e.g. an objective 1e4 times the constraints' scale made δ a tenth of the Schur complement
    # and the polished x was off by 4e-2 while signs and feasibility passed).
    stat = float(np.abs(Px + q + Aty).max(initial=0.0))
    on_rows = float(np.abs(z[act] - b).max(initial=0.0))
    ok = (float(viol.max(initial=0.0)) <= tol_p and float(wrong.max(initial=0.0)) <= tol_d
          and stat <= tol_d and on_rows <= tol_p)
    return x, y, ok
