"""Generic implicit differentiation (the JAXopt idea, in PyTorch).

Write the optimality condition ``F(x, θ) = 0`` (or fixed point ``x = T(x, θ)``) of your
problem, decorate any solver of it, and get exact derivatives of its solution in reverse and
forward mode, without unrolling the solver:

- :func:`custom_root` — decorator for ``solver(init, *args, **kwargs)`` given ``F``.
- :func:`custom_fixed_point` — the same for fixed points ``x = T(x, θ)``.
- :func:`root_vjp`, :func:`root_jvp` — the VJP / JVP of a root as plain functions.

See docs/implicit.md.
"""

from optlayers._src.implicit.custom_root import (
    custom_fixed_point,
    custom_root,
    root_jvp,
    root_vjp,
)

__all__ = ["custom_fixed_point", "custom_root", "root_jvp", "root_vjp"]
