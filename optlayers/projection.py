"""Euclidean projections onto simple convex sets, and proximal operators.

Projections act on the last dimension (``(..., n)``, leading dimensions are a batch) and are
differentiable (their Jacobians are used by implicit differentiation):

- :func:`projection_non_negative`, :func:`projection_box`
- :func:`projection_simplex` (sparsemax), :func:`projection_l1_ball`, :func:`projection_l2_ball`
- :func:`projection_hyperplane`, :func:`projection_halfspace`, :func:`projection_affine_set`

Proximal operators ``prox(x, hyperparams, scaling)`` (elementwise): :func:`prox_none`,
:func:`prox_lasso`, :func:`prox_ridge`, :func:`prox_elastic_net`.
"""

from optlayers._src.projection.projections import (
    projection_affine_set,
    projection_box,
    projection_halfspace,
    projection_hyperplane,
    projection_l1_ball,
    projection_l2_ball,
    projection_non_negative,
    projection_simplex,
)
from optlayers._src.projection.prox import prox_elastic_net, prox_lasso, prox_none, prox_ridge

__all__ = [
    "projection_affine_set",
    "projection_box",
    "projection_halfspace",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l2_ball",
    "projection_non_negative",
    "projection_simplex",
    "prox_elastic_net",
    "prox_lasso",
    "prox_none",
    "prox_ridge",
]
