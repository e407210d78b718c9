"""Large sparse QPs through OSQP, with a sparse implicit backward (public module).

- :func:`solve_sparse_qp` / :class:`SparseQPLayer` — ``min ½xᵀPx + qᵀx  s.t.  l ≤ Ax ≤ u`` with
  torch sparse (COO/CSR) or dense data, two-sided rows, batches sharing one sparsity pattern.
- :class:`SparseQPSolution` — what ``return_solution=True`` returns (x, y, status, ...).
- :class:`OSQPOptions` — tolerances, iteration cap, polish, warm start, ADMM parameters.
- :class:`SolverCache`, :func:`default_cache`, :func:`clear_cache` — OSQP solvers reused by
  sparsity pattern (value updates and warm starts instead of new set-ups); ``cache.stats``
  counts set-ups, updates and factorizations.
- :func:`csr_tensor` — ``torch.sparse_csr_tensor`` with a backward that does not densify (torch's
  own densifies the gradient of ``values``; ``torch.sparse_coo_tensor`` is fine as it is).

:func:`optlayers.solve_qp` and :class:`optlayers.QPLayer` route sparse ``Q``/``G``/``A`` (or
``backend="osqp"``) here automatically. See ``docs/sparse.md``.
"""

from optlayers._src.sparse.api import SparseQPLayer, SparseQPSolution, solve_sparse_qp
from optlayers._src.sparse.cache import CacheStats, SolverCache, default_cache
from optlayers._src.sparse.options import OSQPOptions
from optlayers._src.sparse.problem import is_sparse
from optlayers._src.sparse.tensors import csr_tensor


def clear_cache() -> None:
    """Empty the module-level solver cache used by ``solve_sparse_qp`` / ``solve_qp``."""
    default_cache().clear()


__all__ = [
    "CacheStats",
    "OSQPOptions",
    "SolverCache",
    "SparseQPLayer",
    "SparseQPSolution",
    "clear_cache",
    "csr_tensor",
    "default_cache",
    "is_sparse",
    "solve_sparse_qp",
]
