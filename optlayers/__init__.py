"""optlayers: differentiable convex-optimization layers for PyTorch.

Public API (see README.md and DESIGN.md §2):

- ``solve_qp``, ``QPLayer``, ``QPSolution`` — batched dense QPs with an implicit KKT backward.
- ``Status``, ``SolverError``, ``OnFailure`` — per-problem status and the failure policy.
- ``testing`` — ``random_qp`` and ``check_grad`` for your own tests.
"""

from optlayers._src.status import OnFailure, SolverError, Status
from optlayers.qp import Backend, QPLayer, QPOptions, QPSolution, solve_qp
from optlayers import native, testing
from optlayers import implicit, linear_solve, optimality, projection
from optlayers.implicit import custom_fixed_point, custom_root, root_jvp, root_vjp
from optlayers.conic import CvxpyLayer

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "CvxpyLayer",
    "QPLayer",
    "QPOptions",
    "QPSolution",
    "solve_qp",
    "OnFailure",
    "SolverError",
    "Status",
    "native",
    "testing",
    "custom_fixed_point",
    "custom_root",
    "root_jvp",
    "root_vjp",
    "implicit",
    "linear_solve",
    "optimality",
    "projection",
]
