"""Differentiable convex-optimization layers from CVXPY problems (LP, QP, SOCP, SDP, exp cone).

- :class:`CvxpyLayer` — a DPP ``cvxpy.Problem`` as a PyTorch layer, call-compatible with
  ``cvxpylayers.torch.CvxpyLayer``; LPs/QPs solved by the batched dense interior point
  ``solve_qp`` (the "qp" route, differentiated through its KKT backward), other programs by SCS
  or Clarabel, differentiated by our implicit derivative of the cone program (reverse and
  forward mode).
- :class:`ConicSolution` — what ``return_solution=True`` returns (values, status, iterations).
- :class:`ConicOptions`, :class:`BackwardMode`, :class:`ConicSolver` — the parsed solver
  settings / derivative modes / solver names (``"auto"``, ``"qp"``, ``"scs"``, ``"clarabel"``).

See ``docs/conic.md``.
"""

from optlayers._src.conic.layer import ConicSolution, CvxpyLayer
from optlayers._src.conic.options import BackwardMode, ConicOptions, ConicSolver

__all__ = ["BackwardMode", "ConicOptions", "ConicSolution", "ConicSolver", "CvxpyLayer"]
