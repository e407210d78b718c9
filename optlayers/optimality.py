"""Optimality conditions to pair with :func:`optlayers.custom_root` / ``custom_fixed_point``.

- :func:`gradient_optimality` — ``∇_x f(x, θ) = 0`` (unconstrained).
- :func:`kkt_optimality` — KKT conditions of ``min f s.t. h = 0, g ≤ 0``.
- :func:`prox_grad_fixed_point` — ``x = prox_{ηg}(x − η∇f(x))``.
- :func:`projected_gradient_fixed_point` — ``x = P_C(x − η∇f(x))``.
- :func:`mirror_descent_fixed_point` — ``x = P^φ_C(∇φ(x) − η∇f(x))``.
"""

from optlayers._src.optimality.conditions import (
    gradient_optimality,
    kkt_optimality,
    mirror_descent_fixed_point,
    projected_gradient_fixed_point,
    prox_grad_fixed_point,
)

__all__ = [
    "gradient_optimality",
    "kkt_optimality",
    "mirror_descent_fixed_point",
    "projected_gradient_fixed_point",
    "prox_grad_fixed_point",
]
