"""BiCGSTAB for nonsymmetric systems (van der Vorst, SIAM J. Sci. Stat. Comput. 13, 1992)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from optlayers._src.linear_solve._common import finish, in_vmap, prepare, rowdot, rownorm, safe_div


def bicgstab(
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
    """Solve ``(A + ridge·I) x = b`` for a general nonsingular ``A`` by BiCGSTAB.

    Saad, *Iterative Methods for Sparse Linear Systems*, Alg. 7.7; two matvecs per iteration;
    ``maxiter`` counts iterations. Same arguments and per-problem semantics as
    :func:`optlayers.linear_solve.cg`. BiCGSTAB can break down (``ρ = <r̂, r> = 0``); a
    broken-down problem is frozen and reported as not converged.
    """
    fl, mv, b2, x, tol, atol, maxiter = prepare(
        matvec, b, init, tol, atol, maxiter, batch_dims, ridge, on_failure
    )
    vm = in_vmap()
    with torch.no_grad():
        b_norm = rownorm(b2)
        threshold = torch.clamp(tol * b_norm, min=atol)
    r = b2 - mv(x)
    iterations = 1
    r_hat = r
    ones = torch.ones_like(b_norm)
    rho, alpha, omega = ones, ones, ones
    v = torch.zeros_like(b2)
    p = torch.zeros_like(b2)
    for _ in range(maxiter):
        with torch.no_grad():
            active = rownorm(r.detach()) > threshold
            if not vm and not bool(active.any()):
                break
        rho_new = rowdot(r_hat, r)
        active = active & (rho_new.detach() != 0)  # breakdown: freeze the problem
        beta = safe_div(rho_new, rho) * safe_div(alpha, omega)
        p_new = r + beta[:, None] * (p - omega[:, None] * v)
        v_new = mv(p_new)
        alpha_new = safe_div(rho_new, rowdot(r_hat, v_new))
        s = r - alpha_new[:, None] * v_new
        t = mv(s)
        iterations += 2
        omega_new = safe_div(rowdot(t, s), rowdot(t, t))
        x_new = x + alpha_new[:, None] * p_new + omega_new[:, None] * s
        r_new = s - omega_new[:, None] * t
        a2 = active[:, None]
        x = torch.where(a2, x_new, x)
        r = torch.where(a2, r_new, r)
        p = torch.where(a2, p_new, p)
        v = torch.where(a2, v_new, v)
        rho = torch.where(active, rho_new, rho)
        alpha = torch.where(active, alpha_new, alpha)
        omega = torch.where(active, omega_new, omega)
    residual = rownorm(b2 - mv(x)) if not vm else rownorm(r)
    return finish("bicgstab", fl, x, residual, b_norm, threshold, iterations, on_failure, return_info)
