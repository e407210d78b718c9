"""Options of the sparse (OSQP) QP layer and the named tolerances of the sparse family.

OSQP is an ADMM solver: each iteration costs one back-solve with a factorization made at set-up,
so it runs hundreds to thousands of cheap iterations to modest accuracy (``eps_abs``/``eps_rel``).
We then *polish*: solve the KKT system of the active set that OSQP identified, exactly, with a
sparse LDLᵀ factorization (``kkt.py``); when the active set is right (the usual case at a
strictly complementary solution) this gives the solution to ~1e-12, and the same factorization
is reused by the implicit backward.
"""

from __future__ import annotations

import dataclasses

# ---------------------------------------------------------------------------------------------
# Named tolerances (one place for the sparse family; the dense family's live in tolerances.py).
# ---------------------------------------------------------------------------------------------

# OSQP's stopping tolerances when none are given. Tighter than OSQP's own 1e-3 default, because
# the active set read off the ADMM iterate must be right for the polish (and the gradient) to be
# exact; looser values make the polish fail more often, tighter ones cost ADMM iterations.
DEFAULT_EPS = 1e-6
# Infeasibility certificates (OSQP's eps_prim_inf / eps_dual_inf).
DEFAULT_EPS_INFEASIBLE = 1e-7
# OSQP's ADMM iteration cap when none is given (OSQP's own default is 4,000).
DEFAULT_MAX_ITER = 10_000
# solve_qp's ``max_iter`` counts interior-point iterations (default 50). An IPM iteration costs a
# factorization; an ADMM iteration one back-solve, and OSQP needs 10²–10⁴ of them. The sparse
# route maps solve_qp's max_iter to this many ADMM iterations per unit, so the shared default
# (50) gives the customary 10,000 and lowering/raising max_iter lowers/raises OSQP's cap.
ADMM_ITERS_PER_IPM_ITER = 200

# Static regularization of the reduced KKT matrix, relative to the data scale: we factor the
# quasi-definite K_δ = [[P + δI, A_𝒜ᵀ], [A_𝒜, −δI]], which has an LDLᵀ factorization for any
# symmetric permutation (Vanderbei 1995), then refine against the exact K.
KKT_REG = 1e-9
# Where K_δ cannot be factored (a pivot rounded to zero, see kkt.ReducedKKT), δ is grown by these
# factors in turn before the factorization is declared failed.
KKT_REG_GROWTH = (1.0, 1e2, 1e4)
# Iterative refinement against the exact K: at most this many steps, stopping once the relative
# residual is below REFINE_TOL. Each step costs one back-solve and one sparse mat-vec.
REFINE_MAX_STEPS = 8
REFINE_TOL = 1e-14
# Active-set classification from the ADMM iterate (x, y, z = Ax): row i is upper-active when
# y_i > u_i − z_i, lower-active when −y_i > z_i − l_i (the exact rule at a strictly complementary
# solution, the same as the dense family's ``classify_active``); equality rows (l_i = u_i) are
# always active.
# Polish acceptance: the polished point is exact on its active set (stationarity, the active
# rows at their bounds, y = 0 elsewhere), so it is *the* solution iff it is also primal feasible
# on the inactive rows and its multipliers have the right signs. We accept it only if those hold
# to POLISH_TOL relative to the data (round-off level), so that ``polished`` means exact: a
# wrong-but-almost-right active set (violations within OSQP's eps) is not accepted, OSQP resumes
# from its iterate with its tolerances divided by POLISH_RETRY_FACTOR and the polish is tried
# again, up to POLISH_RETRIES times; then OSQP's own solution is returned (accurate to eps).
POLISH_TOL = 1e-9
POLISH_RETRIES = 2
POLISH_RETRY_FACTOR = 100.0
# A cached solver's warm-started solve gets at most REUSE_ITER_FACTOR times the ADMM iterations
# its last successful solve took (at least REUSE_MIN_ITER, at most max_iter) before the problem is
# handed to a fresh solver (``solver.py``): a reused solve that fails otherwise spends the whole
# budget (10,000 iterations) first — on float32 pinned vertices 60 of 64 repeated solves did.
REUSE_ITER_FACTOR = 4
REUSE_MIN_ITER = 250
# Relative symmetry tolerance of P (input check), as in the dense family.
SYMMETRY_TOL = 1e-10
SYMMETRY_TOL_FLOAT32 = 1e-5


@dataclasses.dataclass(frozen=True)
class OSQPOptions:
    """Settings of the sparse QP layer (a subset of OSQP's, plus our polish).

    Attributes:
        eps_abs, eps_rel: OSQP's absolute / relative stopping tolerances (default 1e-6).
        eps_infeasible: tolerance of OSQP's primal and dual infeasibility certificates.
        max_iter: cap on ADMM iterations; problems still running get ``Status.MAX_ITER``.
        polish: solve the KKT system of the active set OSQP found, exactly (sparse LDLᵀ), and
            keep the result only if it is primal feasible with correctly signed multipliers to
            round-off (then it is the exact solution; see POLISH_TOL); the factorization is reused by the
            backward. Replaces OSQP's own ``polishing`` (which we leave off: same maths, but its
            factorization is not reachable from Python).
        warm_start: start ADMM from the previous solution of the same solver slot (same sparsity
            pattern, same batch index) instead of from zero.
        time_limit: seconds per problem (``None``: no limit); problems cut off get ``MAX_ITER``.
        rho, sigma, alpha, scaling, adaptive_rho: OSQP's ADMM parameters (defaults are OSQP's;
            ``rho=None`` is OSQP's 0.1).
        verbose: let OSQP print its progress.
    """

    eps_abs: float = DEFAULT_EPS
    eps_rel: float = DEFAULT_EPS
    eps_infeasible: float = DEFAULT_EPS_INFEASIBLE
    max_iter: int = DEFAULT_MAX_ITER
    polish: bool = True
    warm_start: bool = True
    time_limit: float | None = None
    rho: float | None = None
    sigma: float = 1e-6
    alpha: float = 1.6
    scaling: int = 10
    adaptive_rho: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        for name in ("eps_abs", "eps_rel", "eps_infeasible"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0.0 and v < 1.0):
                raise ValueError(f"{name} must be a number in [0, 1); got {v!r}")
        if self.eps_abs == 0.0 and self.eps_rel == 0.0:
            raise ValueError("eps_abs and eps_rel cannot both be 0 (OSQP would never stop)")
        if not isinstance(self.max_iter, int) or isinstance(self.max_iter, bool) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer; got {self.max_iter!r}")
        if self.time_limit is not None and not (self.time_limit > 0):
            raise ValueError(f"time_limit must be positive seconds or None; got {self.time_limit!r}")
        for name in ("rho", "sigma"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}")
        if not (0.0 < self.alpha < 2.0):
            raise ValueError(f"alpha must be in (0, 2); got {self.alpha!r}")
        if not isinstance(self.scaling, int) or self.scaling < 0:
            raise ValueError(f"scaling must be a non-negative integer; got {self.scaling!r}")

    def setup_key(self) -> tuple:
        """The settings OSQP cannot change after set-up (part of the solver-cache key)."""
        return (self.rho, self.sigma, self.scaling, bool(self.adaptive_rho))

    def osqp_settings(self) -> dict:
        """Settings passed to ``OSQP.setup`` / ``update_settings`` (updatable ones)."""
        return dict(
            eps_abs=float(self.eps_abs),
            eps_rel=float(self.eps_rel),
            eps_prim_inf=float(self.eps_infeasible),
            eps_dual_inf=float(self.eps_infeasible),
            max_iter=int(self.max_iter),
            polishing=False,
            warm_starting=bool(self.warm_start),
            time_limit=float(self.time_limit) if self.time_limit is not None else 1e10,
            alpha=float(self.alpha),
            verbose=bool(self.verbose),
        )

    def setup_settings(self) -> dict:
        # rho only when given: OSQP's Python set-up applies an explicit rho by a second
        # factorization (update_rho) after the first.
        extra = {} if self.rho is None else {"rho": float(self.rho)}
        return dict(
            **extra,
            sigma=float(self.sigma),
            scaling=int(self.scaling),
            adaptive_rho=bool(self.adaptive_rho),
            **self.osqp_settings(),
        )

    def tightened(self, factor: float) -> "OSQPOptions":
        return dataclasses.replace(self, eps_abs=self.eps_abs / factor, eps_rel=self.eps_rel / factor)
