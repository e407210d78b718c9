"""Matrix-free linear solvers over pytrees and batches.

All solvers share one signature::

    x = solve(matvec, b, *, init=None, tol=None, atol=0.0, maxiter=None, ridge=None,
              batch_dims=0, on_failure="warn", return_info=False)

solving ``(A + ridge·I) x = b`` where ``matvec(v) = A v`` maps pytrees shaped like ``b`` to
the same. Configure one once with :func:`functools.partial`, e.g.
``functools.partial(ol.linear_solve.cg, tol=1e-8, batch_dims=1)``.

- :func:`cg` — symmetric positive definite ``A`` (Hessians of convex objectives).
- :func:`normal_cg` — any nonsingular ``A``, via ``AᵀA`` (squares the condition number).
- :func:`gmres` — any nonsingular ``A`` (restarted, Givens rotations).
- :func:`bicgstab` — any nonsingular ``A`` (short recurrences, two matvecs per iteration).
- :func:`dense` — builds ``A`` with ``n`` matvecs and LU-factorizes it (small systems).

Non-convergence is never silent: by default a :class:`LinearSolveWarning` gives the residual;
``on_failure="raise"`` raises :class:`LinearSolveError`; non-finite results always raise.
"""

from optlayers._src.linear_solve._common import (
    LinearSolveError,
    LinearSolveInfo,
    LinearSolveWarning,
)
from optlayers._src.linear_solve.bicgstab import bicgstab
from optlayers._src.linear_solve.cg import cg, normal_cg
from optlayers._src.linear_solve.dense import dense, materialize
from optlayers._src.linear_solve.gmres import gmres

__all__ = [
    "LinearSolveError",
    "LinearSolveInfo",
    "LinearSolveWarning",
    "bicgstab",
    "cg",
    "dense",
    "gmres",
    "materialize",
    "normal_cg",
]
