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
    # A new Arnoldi vector whose norm is below this fraction of ‖A v_j‖ is rounding noise: the
    # Krylov space is (numerically) invariant and the cycle's solution is exact ("happy breakdown").
    breakdown = 16 * torch.finfo(b2.dtype).eps
    with torch.no_grad():
        b_norm = rownorm(b2)
        threshold = torch.clamp(tol * b_norm, min=atol)
    iterations = 0
    # b = 0: the solution is 0 whatever the initial guess (a guess would otherwise be "refined"
    # towards 0 until the zero threshold is met, which it never is exactly).
    x = torch.where((b_norm == 0)[:, None], torch.zeros_like(x), x)
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
        # Per problem, which of the cycle's columns count: a problem stops extending its basis once
        # its residual estimate is below the threshold or its Arnoldi process broke down. Its later
        # columns (built from rounding noise, which under vmap or in a batch the others keep
        # computing) are masked out of the triangular solve — they had made y = R⁻¹g explode
        # (gmres(2I, [1, 1, 0, …]) returned −1.3e30 under vmap).
        live = active.clone()
        use: list[torch.Tensor] = []
        for j in range(m):
            w = mv(V[j])
            iterations += 1
            with torch.no_grad():
                w_norm = rownorm(w).detach()
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
            use.append(live)
            with torch.no_grad():
                res_est = g[j + 1].detach().abs()
                broke = h_next.detach() <= breakdown * w_norm
                live = live & (res_est > threshold) & ~broke
                if not vm and not bool(live.any()):
                    break
            V.append(torch.where(live[:, None], w * safe_div(torch.ones_like(h_next), h_next)[:, None],
                                 torch.zeros_like(w)))
        k = len(R_cols)
        # R (B, k, k) upper triangular; y = R^{-1} g[:k]. A problem's columns past its last live one
        # (and every column of an inactive problem) become unit columns with a zero right-hand side,
        # so they take no step; so does a column whose pivot vanished.
        R = torch.stack(
            [torch.stack(col + [torch.zeros_like(beta)] * (k - len(col)), dim=1) for col in R_cols],
            dim=2,
        )
        used = torch.stack(use, dim=1)  # (B, k)
        diag = torch.diagonal(R, dim1=1, dim2=2)
        keep = used & (diag.abs() > tiny)
        eye = torch.eye(k, dtype=R.dtype, device=R.device).expand_as(R)
        R = torch.where(keep[:, None, :], R, eye)
        rhs = torch.where(keep, torch.stack(g[:k], dim=1), torch.zeros_like(diag))
        y = torch.linalg.solve_triangular(R, rhs[:, :, None], upper=True)[:, :, 0]
        x = x + torch.einsum("bk,kbn->bn", y, torch.stack(V[:k]))
        r = b2 - mv(x)
        iterations += 1
        if vm and iterations >= maxiter:
            break
    return finish("gmres", fl, x, rownorm(r), b_norm, threshold, iterations, on_failure, return_info)
