"""Conjugate gradient (symmetric positive definite A) and CG on the normal equations.

Both are written with differentiable torch operations only, so a solve run with grad enabled
can itself be differentiated (used by double backward through ``custom_root``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from optlayers._src.linear_solve._common import (
    finish,
    in_vmap,
    prepare,
    rowdot,
    rownorm,
    safe_div,
)


def cg(
    matvec: Callable[[Any], Any],
    b: Any,
    *,
    init: Any = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    batch_dims: int = 0,
    on_failure: str = "warn",
    return_info: bool = False,
) -> Any:
    """Solve ``(A + ridge·I) x = b`` for symmetric positive definite ``A`` by conjugate gradient.

    Hestenes & Stiefel (1952); Saad, *Iterative Methods for Sparse Linear Systems*, Alg. 6.18.
    Each of the ``B`` batch problems runs its own recurrence (own step sizes, own stopping
    test); a converged problem is frozen while the others continue.

    Args:
        matvec: ``v ↦ A v``, a linear function from pytrees shaped like ``b`` to the same.
        b: right-hand side: a tensor or a pytree of tensors. Every leaf has shape
            ``batch_shape + leaf_shape`` with the same ``batch_shape`` (``batch_dims`` dims).
        init: initial guess, same structure and shapes as ``b`` (default zeros).
        tol, atol: stop problem ``i`` when ``||b_i - A x_i|| <= max(tol ||b_i||, atol)``;
            default ``tol`` 1e-10 (float64) / 1e-5 (float32).
        maxiter: iteration limit (one matvec each); default ``max(10 n, 100)``.
        ridge: optional Tikhonov term added to ``A``.
        batch_dims: number of leading dimensions of every leaf that index independent
            problems (``matvec`` must not mix them). 0: one problem made of all entries.
        on_failure: ``"warn"`` (default) issues a :class:`LinearSolveWarning` with the
            residual when the limit is hit; ``"raise"`` raises :class:`LinearSolveError`.
            Non-finite results always raise.
        return_info: also return a :class:`LinearSolveInfo`.

    Returns:
        ``x`` with the structure and shapes of ``b`` (and the info if requested).
    """
    fl, mv, b2, x, tol, atol, maxiter = prepare(
        matvec, b, init, tol, atol, maxiter, batch_dims, ridge, on_failure
    )
    return _cg_flat("cg", fl, mv, b2, x, tol, atol, maxiter, on_failure, return_info)


def _cg_flat(method, fl, mv, b2, x, tol, atol, maxiter, on_failure, return_info, residual_of=None):
    vm = in_vmap()
    with torch.no_grad():
        b_norm = rownorm(b2)
        threshold = torch.clamp(tol * b_norm, min=atol)
    r = b2 - mv(x) if (init_nonzero := bool(vm) or bool((x != 0).any())) else b2
    iterations = 1 if init_nonzero else 0
    p = r
    rs = rowdot(r, r)
    for _ in range(maxiter):
        with torch.no_grad():
            active = rs.detach().sqrt() > threshold
            if not vm and not bool(active.any()):
                break
        Ap = mv(p)
        iterations += 1
        pAp = rowdot(p, Ap)
        alpha = torch.where(active, safe_div(rs, pAp), torch.zeros_like(rs))
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rs_new = rowdot(r, r)
        beta = torch.where(active, safe_div(rs_new, rs), torch.zeros_like(rs))
        p = torch.where(active[:, None], r + beta[:, None] * p, p)
        rs = torch.where(active, rs_new, rs)
    # Report the true residual (the recursive one drifts): one more product.
    if residual_of is None:
        residual = rownorm(b2 - mv(x)) if not vm else rs.sqrt()
    else:
        residual = residual_of(x)
    return finish(method, fl, x, residual, b_norm, threshold, iterations, on_failure, return_info)


def normal_cg(
    matvec: Callable[[Any], Any],
    b: Any,
    *,
    init: Any = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    batch_dims: int = 0,
    on_failure: str = "warn",
    return_info: bool = False,
    rmatvec: Callable[[Any], Any] | None = None,
) -> Any:
    """Solve ``(A + ridge·I) x = b`` by CG on the normal equations ``MᵀM x = Mᵀb``, ``M = A + ridge·I`` (CGNR).

    Works for any nonsingular square ``A`` (and gives the least-squares solution otherwise),
    at the price of squaring the condition number. ``Aᵀ`` is obtained by reverse-mode autodiff
    of ``matvec`` (which is linear, so its VJP at zero is the transpose) unless ``rmatvec``
    is given. Same arguments as :func:`cg`; ``b``, ``init`` and ``x`` live in the same space
    (``A`` square). The stopping test is on the normal-equation residual
    ``||Mᵀ(b - M x)|| <= max(tol ||Mᵀ b||, atol)``, which is what is reported. ``ridge`` has
    the same meaning as for every other solver (it shifts ``A``, not ``AᵀA``). ``rmatvec``:
    optional ``u ↦ Aᵀu`` (without the ridge).
    """
    fl, mv, b2, x, tol, atol, maxiter = prepare(
        matvec, b, init, tol, atol, maxiter, batch_dims, ridge, on_failure
    )
    if rmatvec is not None:
        rmv_user = fl.flat_matvec(rmatvec, name="rmatvec")

        def rmv(u: torch.Tensor) -> torch.Tensor:
            return rmv_user(u) + ridge * u if ridge else rmv_user(u)
    else:
        def rmv(u: torch.Tensor) -> torch.Tensor:
            # A (+ ridge I) is linear: its vjp at any point is u ↦ Aᵀ u. Evaluate at zeros.
            _, vjp_fn = torch.func.vjp(mv, torch.zeros_like(u))
            return vjp_fn(u)[0]

    def normal_mv(v):
        return rmv(mv(v))

    rhs = rmv(b2)
    return _cg_flat("normal_cg", fl, normal_mv, rhs, x, tol, atol, maxiter, on_failure, return_info)
