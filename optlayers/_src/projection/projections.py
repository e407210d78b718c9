"""Euclidean projections onto simple convex sets, batched over leading dimensions.

``projection_C(x, ...) = argmin_{y ∈ C} ½‖y − x‖²``. Every function acts on the last dimension
of ``x`` (``(..., n)``), treats the leading dimensions as a batch, and is written with
differentiable torch operations: autograd gives the Jacobian of the projection (an element of
the generalized Jacobian at the measure-zero set of kinks), and the functions compose with
``torch.func`` (vmap, jacrev, jacfwd). These are the building blocks of the projected-gradient
and proximal-gradient optimality conditions in :mod:`optlayers.optimality`.
"""

from __future__ import annotations

import torch

from optlayers._src.transforms import transformed

Tensorish = torch.Tensor | float


def _check_x(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point; got dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension (..., n); got a scalar")


def _checkable(value) -> bool:
    """Whether a tensor argument's values can be checked here: not wrapped by a ``torch.func``
    transform (a data-dependent ``if`` is an error under ``vmap``, and these functions run inside
    the transformed fixed-point maps of :mod:`optlayers.optimality`)."""
    return isinstance(value, torch.Tensor) and not transformed(value)


def _check_sign(value: Tensorish, name: str, strict: bool = True) -> None:
    """``value > 0`` (``strict``) or ``≥ 0``, for a number or every entry of a tensor (outside
    transforms, see :func:`_checkable`; a tensor radius of −1 had returned a reflected point, a
    tensor l1reg of −1 enlarged |x|)."""
    bound = "> 0" if strict else ">= 0"
    if isinstance(value, (int, float)) and not (value > 0 if strict else value >= 0):
        raise ValueError(f"{name} must be {bound}; got {value}")
    if _checkable(value) and not bool((value > 0 if strict else value >= 0).all()):
        raise ValueError(f"{name} must be {bound}; got a tensor with entries {value.detach().min().item():g}")


def _check_nonzero_rows(a: torch.Tensor, name: str) -> None:
    """Each (..., n) row of ``a`` nonzero (a = 0 had given NaN)."""
    if _checkable(a) and not bool((a != 0).any(dim=-1).all()):
        raise ValueError(f"{name} must be nonzero (it defines a hyperplane aᵀy = b); got a zero row")


def projection_non_negative(x: torch.Tensor) -> torch.Tensor:
    """Projection onto the non-negative orthant ``{y ≥ 0}``: ``max(x, 0)``. Any shape.

    Jacobian: ``diag(1[x > 0])``.
    """
    _check_x(x)
    return torch.relu(x)


def projection_box(x: torch.Tensor, lower: Tensorish, upper: Tensorish) -> torch.Tensor:
    """Projection onto the box ``{lower ≤ y ≤ upper}``: ``clip(x, lower, upper)``.

    Args:
        x: ``(..., n)`` (any shape).
        lower, upper: floats or tensors broadcastable to ``x`` with ``lower ≤ upper``.

    Jacobian w.r.t. ``x``: ``diag(1[lower < x < upper])``; w.r.t. the bounds: identity on the
    entries clipped to them.
    """
    _check_x(x)
    lo = torch.as_tensor(lower, dtype=x.dtype, device=x.device)
    hi = torch.as_tensor(upper, dtype=x.dtype, device=x.device)
    if not isinstance(lower, torch.Tensor) and not isinstance(upper, torch.Tensor) and lower > upper:
        raise ValueError(f"projection_box: lower must be <= upper; got lower={lower}, upper={upper}")
    if (_checkable(lower) or _checkable(upper)) and not bool((lo <= hi).all()):
        raise ValueError("projection_box: lower must be <= upper entrywise; got an entry with lower > upper")
    # max(min(x, hi), lo) with tensor bounds (torch.clamp accepts tensor bounds too, but its
    # gradient w.r.t. the bounds is what we want only through minimum/maximum).
    return torch.maximum(torch.minimum(x, hi), lo)


def _simplex_threshold(x: torch.Tensor, value: Tensorish) -> torch.Tensor:
    """τ such that ``Σ_i max(x_i − τ, 0) = value``, shape ``(...,)``.

    Sort-based algorithm (Held, Wolfe & Crowder 1974; Duchi et al. 2008; Condat 2016, Alg. 1):
    with ``u`` sorted decreasingly and ``c_k = Σ_{j≤k} u_j``, the support size is
    ``ρ = max{k : u_k − (c_k − value)/k > 0}`` and ``τ = (c_ρ − value)/ρ``. Differentiable:
    ``∂τ/∂x_i = 1/ρ`` on the support, 0 elsewhere; ``∂τ/∂value = −1/ρ``.
    """
    n = x.shape[-1]
    u, _ = torch.sort(x, dim=-1, descending=True)
    value_t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    css = torch.cumsum(u, dim=-1) - value_t[..., None]
    k = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    cond = (u - css / k) > 0
    rho = cond.to(torch.int64).sum(dim=-1, keepdim=True).clamp_min(1)  # ≥ 1 for value > 0
    tau = torch.gather(css, -1, rho - 1) / rho.to(x.dtype)
    return tau[..., 0]


def projection_simplex(x: torch.Tensor, value: Tensorish = 1.0) -> torch.Tensor:
    """Projection onto the simplex ``{y ≥ 0, Σ_i y_i = value}`` (sparsemax when value = 1).

    Args:
        x: ``(..., n)``; the last dimension is projected, the others are a batch.
        value: ``> 0``, a float or a tensor broadcastable to ``x.shape[:-1]``.

    Returns:
        ``(..., n)``: ``max(x − τ, 0)`` with the threshold τ of :func:`_simplex_threshold`.

    Jacobian (Martins & Astudillo 2016, sparsemax): with ``s = 1[y > 0]``,
    ``∂y/∂x = diag(s) − s sᵀ / |s|``.
    """
    _check_x(x)
    _check_sign(value, "value")
    tau = _simplex_threshold(x, value)
    return torch.relu(x - tau[..., None])


def projection_l1_ball(x: torch.Tensor, radius: Tensorish = 1.0) -> torch.Tensor:
    """Projection onto the ℓ1 ball ``{‖y‖₁ ≤ radius}`` along the last dimension.

    Inside the ball ``x`` is returned; outside, ``sign(x) ⊙ projection_simplex(|x|, radius)``
    (Duchi et al. 2008). ``x``: ``(..., n)``; ``radius > 0``, float or tensor broadcastable to
    ``x.shape[:-1]``.
    """
    _check_x(x)
    _check_sign(radius, "radius")
    r = torch.as_tensor(radius, dtype=x.dtype, device=x.device)
    inside = x.abs().sum(dim=-1) <= r
    proj = torch.sign(x) * projection_simplex(x.abs(), r)
    return torch.where(inside[..., None], x, proj)


def _norm(x: torch.Tensor) -> torch.Tensor:
    """‖x‖₂ over the last dimension; in float32 and narrower scaled by max|x_i| first, where the sum
    of squares overflows from ‖x‖ ≈ 1.8e19 (projection_l2_ball had returned 0) and underflows
    below ≈ 1e-23 (it had left x unprojected). Differentiable (the scale is a constant)."""
    if x.dtype == torch.float64:
        return torch.linalg.vector_norm(x, dim=-1)
    with torch.no_grad():
        s = x.abs().amax(dim=-1, keepdim=True)
        s = torch.where(s > 0, s, torch.ones_like(s))
    return s[..., 0] * torch.linalg.vector_norm(x / s, dim=-1)


def projection_l2_ball(x: torch.Tensor, radius: Tensorish = 1.0) -> torch.Tensor:
    """Projection onto the ℓ2 ball ``{‖y‖₂ ≤ radius}``: ``x · min(1, radius/‖x‖)``.

    ``x``: ``(..., n)``; ``radius > 0``, float or tensor broadcastable to ``x.shape[:-1]``.
    Jacobian outside the ball: ``(radius/‖x‖)(I − x xᵀ/‖x‖²)``.
    """
    _check_x(x)
    _check_sign(radius, "radius")
    r = torch.as_tensor(radius, dtype=x.dtype, device=x.device)
    norm = _norm(x)
    # Guard the division at x = 0 (inside the ball, factor 1) so the gradient stays finite.
    safe = torch.where(norm > r, norm, torch.ones_like(norm))
    factor = torch.where(norm > r, r / safe, torch.ones_like(norm))
    return x * factor[..., None]


def projection_hyperplane(x: torch.Tensor, a: torch.Tensor, b: Tensorish) -> torch.Tensor:
    """Projection onto the hyperplane ``{y : aᵀy = b}``: ``x − (aᵀx − b)/‖a‖² · a``.

    Args:
        x: ``(..., n)``.
        a: ``(..., n)`` (broadcastable to ``x``), nonzero.
        b: float or tensor broadcastable to ``x.shape[:-1]``.
    """
    _check_x(x)
    _check_x(a, "a")
    _check_nonzero_rows(a, "a")
    bt = torch.as_tensor(b, dtype=x.dtype, device=x.device)
    a_sq = (a * a).sum(dim=-1)
    scale = ((a * x).sum(dim=-1) - bt) / a_sq
    return x - scale[..., None] * a


def projection_halfspace(x: torch.Tensor, a: torch.Tensor, b: Tensorish) -> torch.Tensor:
    """Projection onto the half-space ``{y : aᵀy ≤ b}``: ``x − max(aᵀx − b, 0)/‖a‖² · a``.

    Shapes as :func:`projection_hyperplane`.
    """
    _check_x(x)
    _check_x(a, "a")
    _check_nonzero_rows(a, "a")
    bt = torch.as_tensor(b, dtype=x.dtype, device=x.device)
    scale = torch.relu((a * x).sum(dim=-1) - bt) / (a * a).sum(dim=-1)
    return x - scale[..., None] * a


def projection_affine_set(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Projection onto the affine set ``{y : A y = b}``.

    ``y = x − Aᵀ (A Aᵀ)⁻¹ (A x − b)``, computed with a Cholesky factorization of ``A Aᵀ``.

    Args:
        x: ``(..., n)``.
        A: ``(..., m, n)`` with full row rank ``m ≤ n`` (batch dims broadcast with ``x``'s).
        b: ``(..., m)``.

    Raises:
        ValueError: if ``A`` is not ``(..., m, n)`` with ``n = x.shape[-1]``, ``b`` not
            ``(..., m)``, or ``A Aᵀ`` is numerically singular (rank-deficient ``A``).
    """
    _check_x(x)
    _check_x(A, "A")
    _check_x(b, "b")
    if A.dim() < 2 or A.shape[-1] != x.shape[-1]:
        raise ValueError(f"projection_affine_set: A must be (..., m, n) with n = {x.shape[-1]}; got {tuple(A.shape)}")
    if b.shape[-1] != A.shape[-2]:
        raise ValueError(f"projection_affine_set: b must be (..., m) with m = {A.shape[-2]}; got {tuple(b.shape)}")
    residual = (A @ x[..., None])[..., 0] - b
    L, info = torch.linalg.cholesky_ex(A @ A.transpose(-1, -2))
    from optlayers._src.linear_solve._common import in_vmap

    if not in_vmap() and bool((info != 0).any()):
        raise ValueError("projection_affine_set: A A^T is singular; A must have full row rank")
    z = torch.cholesky_solve(residual[..., None], L)
    return x - (A.transpose(-1, -2) @ z)[..., 0]
