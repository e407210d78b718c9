"""Dense batched QP layers (public module)."""

from optlayers._src.qp.api import QPLayer, QPSolution, solve_qp
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.value import qp_value

__all__ = ["Backend", "QPLayer", "QPOptions", "QPSolution", "qp_value", "solve_qp"]
