"""Direct solve: materialize the matrix with ``n`` matvecs and factorize it (LU)."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from optlayers._src.linear_solve._common import (
    DENSE_MAX_COND_EPS,
    DENSE_RESIDUAL_FACTOR,
    LinearSolveWarning,
    Flattener,
    LinearSolveError,
    LinearSolveInfo,
    finish,
    in_vmap,
    resolve_on_failure,
    rownorm,
)


def materialize(matvec: Callable[[Any], Any], like: Any, *, batch_dims: int = 0, vectorize: bool = True) -> torch.Tensor:
    """The matrix of the linear map ``matvec`` as a ``(B, n, n)`` tensor.

    Column ``i`` is ``A e_i``; the ``n`` products are evaluated for all ``B`` batch problems at
    once (``matvec`` acts on each batch element separately), with ``torch.func.vmap`` when
    ``vectorize`` (one batched call) or a Python loop otherwise. ``like`` is a pytree shaped
    like the vectors ``matvec`` acts on.
    """
    fl = Flattener(like, batch_dims, "b")
    mv = fl.flat_matvec(matvec)
    eye = torch.eye(fl.n, dtype=fl.dtype, device=fl.device)
    basis = eye[:, None, :].expand(fl.n, fl.B, fl.n)
    if vectorize:
        cols = torch.func.vmap(mv)(basis)  # (n, B, n): cols[i] = A e_i
    else:
        cols = torch.stack([mv(basis[i]) for i in range(fl.n)])
    return cols.permute(1, 2, 0)


def dense(
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
    vectorize: bool = True,
) -> Any:
    """Solve ``(A + ridge·I) x = b`` exactly: build ``A`` (``n`` matvecs), LU-factorize it.

    Cost ``O(B n^3)`` time and ``O(B n^2)`` memory: for small systems (n up to a few
    thousand), or as the reference in tests. ``init`` and ``maxiter`` are accepted for a
    uniform signature and ignored. ``tol``/``atol`` are not used to stop (there is no
    iteration) but the solution is checked: a condition number above ``1e-2/eps`` (4.5e13 in
    float64) or a relative residual ``||b − Ax|| / (||A||_F ||x|| + ||b||)`` above
    ``1e3 · n · eps`` is reported per ``on_failure``, and an exactly singular matrix (zero
    pivot) always raises :class:`LinearSolveError`. (The condition number costs an SVD.)

    ``vectorize=False`` builds the matrix with a Python loop instead of ``torch.func.vmap``
    (for matvecs that vmap cannot trace, e.g. with data-dependent Python control flow).
    The solve is differentiable (``torch.linalg.solve``).
    """
    del init, maxiter, tol  # uniform signature; a direct solve needs none of them
    if not callable(matvec):
        raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
    resolve_on_failure(on_failure)
    if ridge is not None and not (float(ridge) >= 0):
        raise ValueError(f"ridge must be >= 0; got {ridge!r}")
    fl = Flattener(b, batch_dims, "b")
    b2 = fl.ravel(b)
    A = materialize(matvec, b, batch_dims=batch_dims, vectorize=vectorize)
    if ridge:
        A = A + ridge * torch.eye(fl.n, dtype=A.dtype, device=A.device)
    vm = in_vmap()
    if vm:
        x = torch.linalg.solve(A, b2)
        return finish("dense", fl, x, rownorm(b2), rownorm(b2), rownorm(b2), fl.n, on_failure, return_info)
    x, info = torch.linalg.solve_ex(A, b2)
    b_norm = rownorm(b2).detach()
    if bool((info != 0).any()):
        bad = torch.nonzero(info).flatten().tolist()
        raise LinearSolveError(
            f"linear_solve.dense: the matrix is exactly singular (zero pivot) for batch "
            f"problem(s) {bad[:10]}. Add a ridge (ridge=1e-8 ...) or remove the degeneracy.",
            LinearSolveInfo(info == 0, torch.full_like(b_norm, float("inf")), b_norm, fl.n, fl.batch_shape, "dense"),
        )
    with torch.no_grad():
        cond = torch.linalg.cond(A.detach())
        ill = cond > DENSE_MAX_COND_EPS / torch.finfo(b2.dtype).eps
    if bool(ill.any()):
        bad = torch.nonzero(ill).flatten().tolist()
        msg = (
            f"linear_solve.dense: the matrix is numerically singular for batch problem(s) "
            f"{bad[:10]} (condition number {float(cond.max()):.2e}); the solution is unreliable. "
            "Add a ridge or remove the degeneracy."
        )
        if on_failure == "raise":
            raise LinearSolveError(msg, LinearSolveInfo(~ill, torch.full_like(b_norm, float("nan")), b_norm, fl.n, fl.batch_shape, "dense"))
        warnings.warn(msg, LinearSolveWarning, stacklevel=2)
    residual = rownorm(b2 - (A @ x[:, :, None])[:, :, 0])
    eps = torch.finfo(b2.dtype).eps
    with torch.no_grad():
        scale = torch.linalg.matrix_norm(A.detach(), ord="fro") * rownorm(x.detach()) + b_norm
        threshold = torch.clamp(DENSE_RESIDUAL_FACTOR * fl.n * eps * scale, min=atol)
    return finish("dense", fl, x, residual, b_norm, threshold, fl.n, on_failure, return_info)
