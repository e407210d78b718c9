"""Differentiable convex-optimization layers from CVXPY problems (LP, QP, SOCP, SDP, exp cone).

- :class:`CvxpyLayer` — a DPP ``cvxpy.Problem`` as a PyTorch layer, call-compatible with
  ``cvxpylayers.torch.CvxpyLayer``; solved by SCS (default) or Clarabel, differentiated by our
  implicit derivative of the cone program (reverse and forward mode).
- :class:`ConicSolution` — what ``return_solution=True`` returns (values, status, iterations).
- :class:`ConicOptions`, :class:`BackwardMode` — the parsed solver settings / derivative modes.

See ``docs/conic.md``.
"""

from optlayers._src.conic.layer import ConicSolution, CvxpyLayer
from optlayers._src.conic.options import BackwardMode, ConicOptions

__all__ = ["BackwardMode", "ConicOptions", "ConicSolution", "CvxpyLayer"]
