"""Builders of optimality conditions ``F(x, θ) = 0`` and fixed points ``x = T(x, θ)``.

Each builder returns a plain function meant for :func:`optlayers.custom_root` /
:func:`optlayers.custom_fixed_point`; the solver decorated with it must take the same
arguments after the first. Objectives ``fun(x, params)`` return a scalar: for a batch of
independent problems, return the *sum* of their objectives (the gradient of the sum is the
batch of gradients). ``x`` may be a tensor or a pytree of tensors (tuple/list/dict).

References: Blondel et al., "Efficient and Modular Implicit Differentiation" (NeurIPS 2022),
§2.2 and Appendix (KKT conditions, proximal gradient, projected gradient, mirror descent fixed
points); Nocedal & Wright, *Numerical Optimization*, Thm. 12.1 (KKT).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from optlayers._src.implicit.pytree import flatten, tree_map

Objective = Callable[[Any, Any], torch.Tensor]


def _grad(fun: Objective, name: str = "fun") -> Callable[..., Any]:
    def grad_fn(x, *params):
        def scalar(xx, *pp):
            out = fun(xx, *pp)
            if not isinstance(out, torch.Tensor) or out.numel() != 1:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"{name} must return a scalar tensor (sum the objectives of a batch); got {shape}"
                )
            return out.reshape(())

        return torch.func.grad(scalar)(x, *params)

    return grad_fn


def _tree_vdot(a: Any, b: Any) -> torch.Tensor:
    la, _ = flatten(a)
    lb, _ = flatten(b)
    if len(la) != len(lb):
        raise ValueError("multipliers and constraint values must have the same structure")
    return sum((u * v).sum() for u, v in zip(la, lb))


def gradient_optimality(fun: Objective) -> Callable[..., Any]:
    """Stationarity of an unconstrained problem: ``F(x, params) = ∇_x fun(x, params)``.

    For ``x*(θ) = argmin_x fun(x, θ)`` with ``fun`` twice differentiable and ``∇²_x fun``
    nonsingular at ``x*``. ``∂F/∂x`` is the Hessian (symmetric, positive definite for strongly
    convex ``fun``), so ``solve=ol.linear_solve.cg`` applies.

    Returns ``F(x, params)``, ``x`` a tensor or pytree, same structure out. ``params`` can be
    any pytree; ``fun(x, params)`` must return a scalar tensor.
    """
    g = _grad(fun)

    def optimality_fun(x, params):
        return g(x, params)

    return optimality_fun


def kkt_optimality(
    obj_fun: Objective,
    eq_fun: Callable[[Any, Any], Any] | None = None,
    ineq_fun: Callable[[Any, Any], Any] | None = None,
) -> Callable[..., Any]:
    """KKT conditions of ``min_x f(x, θ_f) s.t. h(x, θ_h) = 0, g(x, θ_g) ≤ 0``.

    With the Lagrangian ``L = f + <ν, h> + <λ, g>`` the returned function is

        F((x, ν, λ), θ_f, θ_h, θ_g) = ( ∇_x L(x, ν, λ),     # stationarity, shaped like x
                                         h(x, θ_h),           # primal feasibility, like ν
                                         λ ⊙ g(x, θ_g) )      # complementarity, like λ

    whose root is a KKT point. Its Jacobian in ``(x, ν, λ)`` is nonsingular at a solution with
    LICQ, strict complementarity and second-order sufficiency (Nocedal & Wright Thm 12.6 /
    Fiacco 1976), where the implicit function theorem applies. It is not symmetric: use
    gmres/bicgstab/dense, not cg.

    Args:
        obj_fun: ``f(x, θ_f)`` -> scalar.
        eq_fun: ``h(x, θ_h)`` -> tensor (or pytree) of equality residuals, or None.
        ineq_fun: ``g(x, θ_g)`` -> tensor (or pytree), feasible where ``≤ 0``, or None.

    Returns:
        ``F(z, params_obj, params_eq=None, params_ineq=None)`` with ``z = (x, ν, λ)``; ``ν``
        (``λ``) has the structure of ``h``'s (``g``'s) output, and is ``None`` when ``eq_fun``
        (``ineq_fun``) is None. The output has the structure of ``z``.
    """

    def lagrangian(x, nu, lam, params_obj, params_eq, params_ineq):
        value = obj_fun(x, params_obj)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError("obj_fun must return a scalar tensor (sum the objectives of a batch)")
        value = value.reshape(())
        if eq_fun is not None:
            value = value + _tree_vdot(nu, eq_fun(x, params_eq))
        if ineq_fun is not None:
            value = value + _tree_vdot(lam, ineq_fun(x, params_ineq))
        return value

    grad_l = torch.func.grad(lagrangian, argnums=0)

    def optimality_fun(z, params_obj, params_eq=None, params_ineq=None):
        if not (isinstance(z, (tuple, list)) and len(z) == 3):
            raise ValueError("kkt_optimality: z must be the triple (x, nu, lam) (None for absent ones)")
        x, nu, lam = z
        if (nu is None) != (eq_fun is None):
            raise ValueError("kkt_optimality: nu must be None exactly when eq_fun is None")
        if (lam is None) != (ineq_fun is None):
            raise ValueError("kkt_optimality: lam must be None exactly when ineq_fun is None")
        stationarity = grad_l(x, nu, lam, params_obj, params_eq, params_ineq)
        primal = eq_fun(x, params_eq) if eq_fun is not None else None
        comp = (
            tree_map(lambda l, g: l * g, lam, ineq_fun(x, params_ineq)) if ineq_fun is not None else None
        )
        return (stationarity, primal, comp)

    return optimality_fun


def prox_grad_fixed_point(
    fun: Objective, prox: Callable[..., Any], step_size: float = 1.0
) -> Callable[..., Any]:
    """Fixed point of proximal gradient for ``min_x f(x, θ_f) + g(x, θ_g)``:

        T(x, θ_f, θ_g) = prox_{η g}(x − η ∇_x f(x, θ_f), θ_g)

    with ``prox(y, θ_g, scaling=η)`` (e.g. :func:`optlayers.projection.prox_lasso`). ``x*`` is
    a minimizer iff ``x* = T(x*)`` for any ``η > 0``. For ``custom_fixed_point``.
    The Jacobian is well defined where the prox is differentiable (e.g. no ``|y_i|`` exactly at
    the lasso threshold); choose ``η`` about ``1/L`` (``L`` the Lipschitz constant of ∇f) for a
    well-conditioned ``I − ∂T/∂x``.
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0; got {step_size}")
    g = _grad(fun)

    def fixed_point_fun(x, params_fun, params_prox):
        y = tree_map(lambda xi, gi: xi - step_size * gi, x, g(x, params_fun))
        return prox(y, params_prox, step_size)

    return fixed_point_fun


def projected_gradient_fixed_point(
    fun: Objective, projection: Callable[[Any, Any], Any], step_size: float = 1.0
) -> Callable[..., Any]:
    """Fixed point of projected gradient for ``min_{x ∈ C(θ_C)} f(x, θ_f)``:

        T(x, θ_f, θ_C) = P_C(x − η ∇_x f(x, θ_f), θ_C)

    with ``projection(y, θ_C)`` (e.g. ``lambda y, r: projection_l2_ball(y, r)``). For
    ``custom_fixed_point``.
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0; got {step_size}")
    g = _grad(fun)

    def fixed_point_fun(x, params_fun, params_proj):
        y = tree_map(lambda xi, gi: xi - step_size * gi, x, g(x, params_fun))
        return projection(y, params_proj)

    return fixed_point_fun


def mirror_descent_fixed_point(
    fun: Objective,
    mapping_fun: Callable[[Any], Any],
    projection: Callable[[Any, Any], Any],
    step_size: float = 1.0,
) -> Callable[..., Any]:
    """Fixed point of mirror descent for ``min_{x ∈ C} f(x, θ_f)`` with mirror map ``φ``:

        T(x, θ_f, θ_C) = P^φ_C(∇φ(x) − η ∇_x f(x, θ_f), θ_C)

    where ``mapping_fun = ∇φ`` and ``projection(y, θ_C) = argmin_{x∈C} φ(x) − <y, x>`` (the
    Bregman projection of ``∇φ*(y)``). Entropy on the simplex: ``mapping_fun = torch.log``,
    ``projection = lambda y, _: torch.softmax(y, -1)`` gives the exponentiated-gradient
    fixed point ``x = softmax(log x − η∇f(x))`` (Beck & Teboulle 2003). For
    ``custom_fixed_point``; ``x`` must stay in the domain of ``∇φ`` (e.g. ``x > 0``).
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0; got {step_size}")
    g = _grad(fun)

    def fixed_point_fun(x, params_fun, params_proj):
        y = tree_map(lambda mi, gi: mi - step_size * gi, mapping_fun(x), g(x, params_fun))
        return projection(y, params_proj)

    return fixed_point_fun
