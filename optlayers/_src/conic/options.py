"""Options and named tolerances of the conic (CVXPY) layer — one place for every number.

The solver-facing defaults are chosen so that, *with default settings*, solutions are accurate
to about 1e-8 (well inside the 1e-6 target) and gradients agree with a sharp reference
(diffcp + SCS at ``eps=1e-12``) to about 1e-7 relative on well-conditioned problems.

``solver_args`` (the cvxpylayers-compatible dict) is parsed once, at the public boundary, into a
frozen :class:`ConicOptions`; nothing below the layer sees a free-form dict except the
solver-specific ``extra`` settings, which are validated against the solver's own names.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping

from optlayers._src.qp.options import Backend

# ---------------------------------------------------------------------------------------------
# Named tolerances and sizes (one place).

# SCS (first-order, ADMM on the homogeneous self-dual embedding). Its stopping test is on the
# primal/dual residuals and the gap, relative to the data scale. We stop SCS at 1e-7 and let the
# Newton refinement below take over where needed: SCS's tail at 1e-9 can stall for tens of
# thousands of iterations on degenerate problems (a TV denoiser with a large weight: 12 of 48
# problems at the iteration limit), while at 1e-7 it stops in ~100 iterations with residuals
# mostly below the refinement trigger (1e-8); the others get a Newton step (→ ~1e-13).
# Measured solution errors with these defaults: 1e-8..1e-10 (vs. CVXPY + SCS at 1e-12);
# cvxpylayers' defaults (diffcp + SCS at eps 1e-4..1e-5) give 1e-3.
SCS_EPS_ABS = 1e-7
SCS_EPS_REL = 1e-7
# Certificates of infeasibility / unboundedness.
SCS_EPS_INFEAS = 1e-9
# Iteration cap. A problem that reaches it with a solution estimate ("solved_inaccurate") is
# still rescued when the refinement certifies it (residual ≤ REFINE_TOL).
SCS_MAX_ITERS = 20_000
# Linear solver of SCS: its dense LDL ("cpu_dense") when the program is small and its data dense
# enough (half the time of the sparse QDLDL on the dense QP benchmark, n=100, m=110), else QDLDL.
SCS_DENSE_MAX_DIM = 1000
SCS_DENSE_MIN_DENSITY = 0.05
# Initial dual scale of SCS (its default is 0.1). Measured on our test and benchmark problems
# (LP, QP, SOCP, SDP, exp cone, portfolio) at eps 1e-9: 1.0 needs 0.4-1× the iterations of 0.1,
# never notably more. Adaptive scaling still adjusts it during the solve.
SCS_SCALE = 1.0
# Scale memory: a layer starts SCS at the median final (adapted) scale of the previous call's
# solved problems, rounded to SCS_SCALE_GRID steps per decade (so the cached workspaces keep
# their settings from call to call). On the dense QP benchmark SCS adapts 1.0 → 0.085 during
# every solve; starting there halves the iterations (128 → 67). Pass solver_args={"scale": s} to
# fix it.
SCS_SCALE_GRID = 4

# Clarabel (interior point) takes eps_abs -> tol_gap_abs and tol_feas, eps_rel -> tol_gap_rel
# (its own defaults are 1e-8); its iteration cap:
CLARABEL_MAX_ITER = 200

# The "qp" route (``qp_route.py``): programs with only zero and nonnegative cones (LPs and QPs)
# are solved by the library's batched dense interior point ``ol.solve_qp`` (native kernel when
# built) and differentiated through its active-set KKT backward. Its relative tolerance is
# min(eps_abs, eps_rel, QP_TOL) — the polish then takes float64 solutions to ~1e-14, so a loose
# SCS-style ``eps`` never makes it less accurate; its iteration cap is ``max_iters`` if given,
# else QP_MAX_ITER (interior-point iterations: 8-30 on our problems).
QP_TOL = 1e-9
QP_MAX_ITER = 50
# solver="auto" (the default) takes the qp route when the program has only zero/nonnegative
# cones and its reduced dense QP (after eliminating CVXPY's auxiliary variables) has at most
# QP_AUTO_MAX_N variables and QP_AUTO_MAX_ROWS constraint rows; the dense interior point costs
# O(n³ + rows·n²) per iteration and problem, whatever the sparsity, so large sparse programs stay
# with SCS (measured: see docs/conic.md).
QP_AUTO_MAX_N = 512
QP_AUTO_MAX_ROWS = 2048

# Backward pass. "auto" uses the dense direct mode when the derivative system (N = n + m
# unknowns per problem) is at most DENSE_MAX_DIM; each dense chunk of the batch holds at most
# DENSE_MAX_BYTES of float64 matrices (the batch is processed in chunks below that).
DENSE_MAX_DIM = 1200
DENSE_MAX_BYTES = 256 * 2**20
# Dense mode solves a reduced symmetric system (derivative._ReducedDense): eigen-directions of
# DΠ with eigenvalue λ < REDUCED_SPLIT are eliminated (weight λ/(1−λ) ≤ 99), the others kept
# (weight (1−λ)/λ ≤ 0.0102). Any value in (0, 1) is exact in exact arithmetic; closer to 1
# keeps fewer unknowns but amplifies rounding in the eliminated directions by up to
# 1/(1 − REDUCED_SPLIT). 0.99 eliminates the middle eigen-directions of second-order cones at
# typical solutions (eigenvalues 0.9-0.97 on the portfolio benchmark), shrinking its system from
# 154 to ~96 unknowns (4x less LU work).
REDUCED_SPLIT = 0.99
# A dense LU solve is accepted when ||Jᵀu - g|| <= DENSE_RESIDUAL_TOL * (||J||·||u|| + ||g||);
# otherwise (singular or nearly singular J, a degenerate solution) the problem falls back to a
# minimum-norm least-squares solve.
DENSE_RESIDUAL_TOL = 1e-8
# Iterative (matrix-free) mode: GMRES from ``ol.linear_solve`` on the batch, then scipy LSMR
# per problem for any problem GMRES did not converge on (LSMR gives the least-squares solution
# at degenerate points, where the system is singular).
ITERATIVE_TOL = 1e-10
ITERATIVE_MAXITER_FACTOR = 10  # GMRES budget: factor * N matrix-vector products
ITERATIVE_RESTART = 50
LSMR_MAXITER_FACTOR = 10

# Newton refinement ("polish") of the solver's point on the residual map (derivative.refine):
# problems whose residual ‖R‖∞ exceeds REFINE_TRIGGER · (1 + max(‖c‖∞, ‖b‖∞)) are refined until
# it is below REFINE_TOL · (same scale); at most REFINE_MAX_STEPS Newton steps, each with at most
# REFINE_BACKTRACKS halvings. With SCS at its default 1e-7 a minority of problems is refined (0-40 %
# on the benchmark problems); Clarabel's SOC/PSD/exp-cone points (residuals 1e-7..1e-5, solution
# errors up to 1e-5) always are.
REFINE_TRIGGER = 1e-8
REFINE_TOL = 1e-12
REFINE_MAX_STEPS = 3
REFINE_BACKTRACKS = 6

# Exponential-cone projection (Friberg 2021, univariate root search).
EXP_ROOT_ITERS = 80            # safeguarded Newton/bisection steps (vectorized, fixed count)
EXP_BRACKET_STEPS = 60         # doublings when a bracket side is unbounded
EXP_MAX_RHO = 600.0            # |rho| beyond this would overflow exp(); bracket is clipped
EXP_INSIDE_TOL = 1e-13         # relative tolerance of the "already in the cone" tests
# ---------------------------------------------------------------------------------------------


class BackwardMode(str, enum.Enum):
    """How the derivative system is solved in the backward pass.

    ``"auto"``: dense if the system is small (see ``DENSE_MAX_DIM``), else iterative.
    ``"dense"``: batched LU of the (n+m)×(n+m) Jacobian of the residual map (least squares
    fallback at singular points). ``"iterative"``: matrix-free GMRES / LSMR.
    """

    AUTO = "auto"
    DENSE = "dense"
    ITERATIVE = "iterative"

    @classmethod
    def resolve(cls, value: "BackwardMode | str") -> "BackwardMode":
        if isinstance(value, cls):
            return value
        aliases = {"lsqr": cls.ITERATIVE, "lsmr": cls.ITERATIVE}  # diffcp's mode names
        key = str(value).lower()
        if key in aliases:
            return aliases[key]
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"backward must be one of {choices}; got {value!r}") from None


class ConicSolver(str, enum.Enum):
    """Which solver a :class:`~optlayers.CvxpyLayer` uses (strings accepted everywhere).

    ``"auto"`` (default): ``"qp"`` when the cone program is an LP/QP (zero and nonnegative cones
    only) of moderate size (``QP_AUTO_MAX_N``, ``QP_AUTO_MAX_ROWS``) and no SCS-only setting was
    passed, else ``"scs"``. ``"qp"``: the batched dense interior point ``ol.solve_qp``,
    differentiated through its own KKT backward (LP/QP programs only). ``"scs"``, ``"clarabel"``:
    the conic solvers, differentiated by ``derivative.py``. cvxpylayers' spellings ``cp.SCS``,
    ``cp.CLARABEL`` and ``"diffcp"`` (SCS underneath) are accepted, and so are the matching
    :class:`~optlayers.Backend` members.
    """

    AUTO = "auto"
    QP = "qp"
    SCS = "scs"
    CLARABEL = "clarabel"

    @classmethod
    def resolve(cls, value: "ConicSolver | Backend | str | None") -> "ConicSolver":
        if value is None:
            return cls.AUTO
        if isinstance(value, cls):
            return value
        key = str(value.value if isinstance(value, enum.Enum) else value).lower()
        if key == "diffcp":
            return cls.SCS
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"solver must be one of {choices} for a CvxpyLayer; got {value!r}") from None


# Kept for callers that listed the conic solvers by Backend member.
CONIC_BACKENDS = (Backend.SCS, Backend.CLARABEL)

# Settings forwarded verbatim to each solver (validated here so a typo is a clear error).
SCS_SETTINGS = frozenset({
    "normalize", "scale", "adaptive_scale", "rho_x", "alpha", "acceleration_lookback",
    "acceleration_interval", "time_limit_secs", "write_data_filename", "log_csv_filename",
    "linear_solver",
})
CLARABEL_SETTINGS = frozenset({
    "tol_gap_abs", "tol_gap_rel", "tol_feas", "tol_infeas_abs", "tol_infeas_rel", "tol_ktratio",
    "reduced_tol_gap_abs", "reduced_tol_gap_rel", "reduced_tol_feas", "reduced_tol_infeas_abs",
    "reduced_tol_infeas_rel", "reduced_tol_ktratio", "equilibrate_enable", "equilibrate_max_iter",
    "equilibrate_min_scaling", "equilibrate_max_scaling", "linesearch_backtrack_step",
    "min_switch_step_length", "min_terminate_step_length", "max_step_fraction", "direct_kkt_solver",
    "direct_solve_method", "static_regularization_enable", "static_regularization_constant",
    "static_regularization_proportional", "dynamic_regularization_enable",
    "dynamic_regularization_eps", "dynamic_regularization_delta", "iterative_refinement_enable",
    "iterative_refinement_reltol", "iterative_refinement_abstol", "iterative_refinement_max_iter",
    "iterative_refinement_stop_ratio", "presolve_enable", "time_limit", "max_threads",
})
# Settings of the qp route: ``polish`` (solve_qp's active-set polish, default True) and
# ``qp_backend`` (solve_qp's ``backend``: "auto" (default), "native", "torch").
QP_SETTINGS = frozenset({"polish", "qp_backend"})
_SETTINGS = {
    ConicSolver.SCS: SCS_SETTINGS,
    ConicSolver.CLARABEL: CLARABEL_SETTINGS,
    ConicSolver.QP: QP_SETTINGS,
    ConicSolver.AUTO: SCS_SETTINGS | QP_SETTINGS,
}


@dataclasses.dataclass(frozen=True)
class ConicOptions:
    """Everything that configures a solve and its derivative.

    Attributes:
        backend: the :class:`ConicSolver`: ``"auto"`` (default), ``"qp"``, ``"scs"`` or
            ``"clarabel"``.
        eps_abs, eps_rel: stopping tolerances (default 1e-7 both, then Newton refinement, see
            ``refine``): SCS ``eps_abs``/``eps_rel``;
            Clarabel ``tol_gap_abs`` = ``tol_feas`` = ``eps_abs``, ``tol_gap_rel`` = ``eps_rel``;
            qp route: ``tol`` = min(eps_abs, eps_rel, ``QP_TOL``).
        eps_infeas: SCS infeasibility-certificate tolerance.
        max_iters: iteration cap (SCS: ADMM iterations; Clarabel, qp: interior-point
            iterations). ``None`` uses the backend's default (20 000 for SCS, 200 for Clarabel,
            50 for qp).
        backward: :class:`BackwardMode` of the derivative solve.
        n_jobs: worker threads solving the batch (SCS releases the GIL while solving);
            ``None`` means ``os.cpu_count()``, ``1`` solves sequentially. (The qp route runs
            one batched solve; its native kernel uses torch's intra-op threads.)
        warm_start: start SCS from the previous call's solution of the same batch index
            (when the previous call had the same batch size); interior points (Clarabel, qp)
            ignore it.
        refine: polish the solver's point by Newton steps on the residual map when its
            residual is above ``REFINE_TRIGGER`` (see ``derivative.refine``).
        verbose: print the solver's log.
        extra: further solver-specific settings (names checked against the solver's own).
    """

    backend: ConicSolver = ConicSolver.AUTO
    eps_abs: float = SCS_EPS_ABS
    eps_rel: float = SCS_EPS_REL
    eps_infeas: float = SCS_EPS_INFEAS
    max_iters: int | None = None
    backward: BackwardMode = BackwardMode.AUTO
    n_jobs: int | None = None
    warm_start: bool = False
    refine: bool = True
    verbose: bool = False
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", ConicSolver.resolve(self.backend))
        for name in ("eps_abs", "eps_rel", "eps_infeas"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 < float(v) < 1.0):
                raise ValueError(f"solver_args[{name!r}] must be a number in (0, 1); got {v!r}")
        if self.max_iters is not None and (not isinstance(self.max_iters, int) or self.max_iters < 1):
            raise ValueError(f"solver_args['max_iters'] must be a positive int; got {self.max_iters!r}")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, int) or self.n_jobs < 1):
            raise ValueError(f"n_jobs must be a positive int or None; got {self.n_jobs!r}")
        allowed = _SETTINGS[self.backend]
        for key, value in self.extra:
            if key not in allowed:
                which = "scs or qp" if self.backend is ConicSolver.AUTO else self.backend.value
                raise ValueError(
                    f"solver_args: {key!r} is not a {which} setting; accepted: "
                    f"{sorted(_GENERIC_KEYS)} and the {which} settings {sorted(allowed)}"
                )
            if key == "qp_backend" and str(getattr(value, "value", value)).lower() not in ("auto", "native", "torch"):
                raise ValueError(f"solver_args['qp_backend'] must be 'auto', 'native' or 'torch'; got {value!r}")

    def scs_only_settings(self) -> list[str]:
        """The extra settings that only SCS understands (they make ``"auto"`` choose SCS)."""
        return [k for k, _ in self.extra if k in SCS_SETTINGS and k not in QP_SETTINGS]

    def qp_settings(self) -> list[str]:
        return [k for k, _ in self.extra if k in QP_SETTINGS]

    def extra_dict(self) -> dict[str, Any]:
        return dict(self.extra)

    def with_args(self, solver_args: Mapping[str, Any] | None) -> "ConicOptions":
        """A copy updated by a cvxpylayers-style ``solver_args`` dict (see :func:`parse_solver_args`)."""
        if not solver_args:
            return self
        return parse_solver_args(solver_args, base=self)


# Keys understood directly, with the cvxpylayers/diffcp spellings mapped onto our fields.
_GENERIC_KEYS = frozenset({
    "solver", "solve_method", "eps", "eps_abs", "eps_rel", "eps_infeas", "max_iters", "max_iter",
    "backward", "mode", "n_jobs", "n_jobs_forward", "n_jobs_backward", "warm_start", "verbose",
    "refine",
})


def parse_solver_args(solver_args: Mapping[str, Any], base: ConicOptions | None = None) -> ConicOptions:
    """Parse a cvxpylayers-compatible ``solver_args`` dict into :class:`ConicOptions`.

    Accepted keys: ``solve_method``/``solver`` (``"auto"``, ``"qp"``, ``"SCS"``, ``"Clarabel"``), ``eps`` (sets both
    ``eps_abs`` and ``eps_rel``), ``eps_abs``, ``eps_rel``, ``eps_infeas``, ``max_iters``,
    ``mode``/``backward`` (``"dense"``, ``"iterative"``, diffcp's ``"lsqr"``/``"lsmr"``),
    ``n_jobs``/``n_jobs_forward``, ``n_jobs_backward`` (ignored: the backward is batched),
    ``warm_start``, ``refine``, ``verbose``, and any setting of the chosen solver (e.g.
    ``acceleration_lookback`` for SCS, ``tol_feas`` for Clarabel, ``polish`` / ``qp_backend``
    for qp; with ``"auto"`` the SCS and qp settings are accepted, and an SCS-only setting makes
    it choose SCS).
    """
    if not isinstance(solver_args, Mapping):
        raise ValueError(f"solver_args must be a dict; got {type(solver_args).__name__}")
    base = base or ConicOptions()
    fields: dict[str, Any] = {}
    extra = dict(base.extra)
    backend = base.backend
    for key in ("solver", "solve_method"):
        if key in solver_args:
            backend = ConicSolver.resolve(solver_args[key])
            if backend != base.backend:
                # settings of the other solver do not carry over
                extra = {k: v for k, v in extra.items() if k in _SETTINGS[backend]}
    fields["backend"] = backend
    for key, value in solver_args.items():
        if key in ("solver", "solve_method", "n_jobs_backward"):
            continue
        if key == "eps":
            fields["eps_abs"] = fields["eps_rel"] = value
        elif key in ("eps_abs", "eps_rel", "eps_infeas", "verbose", "warm_start", "refine"):
            fields[key] = value
        elif key in ("max_iters", "max_iter"):
            fields["max_iters"] = value
        elif key in ("mode", "backward"):
            fields["backward"] = BackwardMode.resolve(value)
        elif key in ("n_jobs", "n_jobs_forward"):
            fields["n_jobs"] = None if value in (None, -1) else value
        else:
            extra[key] = value
    fields["extra"] = tuple(sorted(extra.items()))
    return dataclasses.replace(base, **fields)
