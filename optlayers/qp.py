"""Dense batched QP layers (public module)."""

from optlayers._src.qp.api import QPLayer, QPSolution, solve_qp
from optlayers._src.qp.options import Backend, QPOptions

__all__ = ["Backend", "QPLayer", "QPOptions", "QPSolution", "solve_qp"]
