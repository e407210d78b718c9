"""Restarted GMRES for general nonsingular systems (Saad & Schultz, SIAM J. Sci. Stat. Comput.
7, 1986; Saad, *Iterative Methods for Sparse Linear Systems*, Alg. 6.9 with Givens rotations)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from optlayers._src.linear_solve._common import (
    GMRES_RESTART,
    finish,
    in_vmap,
    prepare,
    rowdot,
    rownorm,
    safe_div,
)


def gmres(
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
    restart: int = GMRES_RESTART,
) -> Any:
    """Solve ``(A + ridge·I) x = b`` for a general nonsingular ``A`` by restarted GMRES.

    Each cycle builds an orthonormal Krylov basis ``V`` of size ``≤ restart`` by Arnoldi
    (modified Gram–Schmidt), keeps the Hessenberg matrix ``H`` triangular with Givens
    rotations (so the residual norm ``|g_{j+1}|`` is known after every step without extra
    products), and updates ``x += V y`` with ``R y = g``. Inner products are per batch problem.

    Args: as :func:`optlayers.linear_solve.cg`, plus ``restart`` (Krylov dimension per cycle).
    ``maxiter`` counts matvecs over all cycles (default ``max(10 n, 100)``).
    """
    fl, mv, b2, x, tol, atol, maxiter = prepare(
        matvec, b, init, tol, atol, maxiter, batch_dims, ridge, on_failure
    )
    if not isinstance(restart, int) or restart < 1:
        raise ValueError(f"restart must be a positive int; got {restart!r}")
    vm = in_vmap()
    tiny = torch.finfo(b2.dtype).tiny
    with torch.no_grad():
        b_norm = rownorm(b2)
        threshold = torch.clamp(tol * b_norm, min=atol)
    iterations = 0
    r = b2 - mv(x) if (vm or bool((x != 0).any())) else b2
    while True:
        beta = rownorm(r)
        with torch.no_grad():
            active = beta.detach() > threshold
            if not vm and not bool(active.any()):
                break
        if iterations >= maxiter:
            break
        m = min(restart, maxiter - iterations, fl.n)
        V = [r * safe_div(torch.ones_like(beta), beta)[:, None]]
        g = [beta]  # rotated right-hand side beta*e1
        R_cols: list[list[torch.Tensor]] = []
        cs: list[torch.Tensor] = []
        sn: list[torch.Tensor] = []
        for j in range(m):
            w = mv(V[j])
            iterations += 1
            h = []
            for i in range(j + 1):  # modified Gram–Schmidt
                hij = rowdot(w, V[i])
                w = w - hij[:, None] * V[i]
                h.append(hij)
            h_next = rownorm(w)
            # Apply previous rotations to the new column, then a new one zeroing h_next.
            for i in range(j):
                hi, hi1 = h[i], h[i + 1]
                h[i] = cs[i] * hi + sn[i] * hi1
                h[i + 1] = -sn[i] * hi + cs[i] * hi1
            denom = torch.sqrt(h[j] ** 2 + h_next**2)
            c = torch.where(denom > tiny, safe_div(h[j], denom), torch.ones_like(denom))
            s = safe_div(h_next, denom)
            h[j] = c * h[j] + s * h_next
            cs.append(c)
            sn.append(s)
            g.append(-s * g[j])
            g[j] = c * g[j]
            R_cols.append(h)
            V.append(w * safe_div(torch.ones_like(h_next), h_next)[:, None])
            with torch.no_grad():
                res_est = g[j + 1].detach().abs()
                if not vm and not bool(((res_est > threshold) & active).any()):
                    break
        k = len(R_cols)
        # R (B, k, k) upper triangular; y = R^{-1} g[:k]. Inactive or broken-down problems get
        # a unit diagonal and zero rhs so that they take no step.
        R = torch.stack(
            [torch.stack(col + [torch.zeros_like(beta)] * (k - len(col)), dim=1) for col in R_cols],
            dim=2,
        )
        diag = torch.diagonal(R, dim1=1, dim2=2)
        bad = (diag.abs() <= tiny) | ~active[:, None]
        R = R + torch.diag_embed(torch.where(bad, 1.0 - diag, torch.zeros_like(diag)))
        rhs = torch.where(active[:, None], torch.stack(g[:k], dim=1), torch.zeros_like(diag))
        y = torch.linalg.solve_triangular(R, rhs[:, :, None], upper=True)[:, :, 0]
        x = x + torch.einsum("bk,kbn->bn", y, torch.stack(V[:k]))
        r = b2 - mv(x)
        iterations += 1
        if vm and iterations >= maxiter:
            break
    return finish("gmres", fl, x, rownorm(r), b_norm, threshold, iterations, on_failure, return_info)
