"""optlayers: differentiable convex-optimization layers for PyTorch.

Public API (see README.md and DESIGN.md §2):

- ``solve_qp``, ``QPLayer``, ``QPSolution`` — batched dense QPs with an implicit KKT backward.
- ``qp_value`` — the optimal value of a QP batch, differentiated by the envelope theorem.
- ``Status``, ``SolverError``, ``OnFailure`` — per-problem status and the failure policy.
- ``testing`` — ``random_qp`` and ``check_grad`` for your own tests.
- ``solve_sparse_qp``, ``SparseQPLayer`` (module ``sparse``) — large sparse QPs via OSQP with a
  sparse implicit backward; ``solve_qp`` routes sparse inputs there.
"""

from optlayers._src.status import OnFailure, SolverError, Status
from optlayers.qp import Backend, QPLayer, QPOptions, QPSolution, qp_value, solve_qp
from optlayers import native, testing
from optlayers import implicit, linear_solve, optimality, projection
from optlayers.implicit import custom_fixed_point, custom_root, root_jvp, root_vjp
from optlayers.conic import CvxpyLayer
from optlayers import sparse
from optlayers.sparse import SparseQPLayer, SparseQPSolution, solve_sparse_qp

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "CvxpyLayer",
    "QPLayer",
    "QPOptions",
    "QPSolution",
    "solve_qp",
    "qp_value",
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
    "sparse",
    "SparseQPLayer",
    "SparseQPSolution",
    "solve_sparse_qp",
]
