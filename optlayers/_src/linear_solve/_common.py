"""Shared machinery of the linear solvers: pytree <-> (B, n) matrices, tolerances, reporting.

Every solver works internally on a 2-D tensor ``(B, n)``: ``B`` independent problems (the
product of the ``batch_dims`` leading dimensions shared by every leaf of ``b``) of ``n``
unknowns each (the remaining entries of all leaves, concatenated). Inner products, norms and
stopping tests are per problem, so each problem of a batch converges on its own; the user's
``matvec`` must therefore act independently on each batch element (block diagonal), which is
what any batched optimality condition gives.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable

import torch

from optlayers._src.implicit.pytree import TreeDef, describe_leaves, flatten

# ---------------------------------------------------------------------------------------------
# Tolerances (one place). Stopping test per problem:  ||b - A x|| <= max(tol * ||b||, atol).
# float64 is the reference; float32 cannot reach much below ~1e-6 relative (eps ~ 1.2e-7, and
# Krylov recurrences lose a few digits).
DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# A direct (dense) solve is accepted when its relative residual is below this multiple of the
# dtype's epsilon times the condition-free bound n; above it the matrix is numerically singular.
DENSE_RESIDUAL_FACTOR = 1e3
# A direct solve warns when cond(A) > DENSE_MAX_COND_EPS / eps (4.5e13 in float64, 8e4 in
# float32): the solution then has fewer than ~2 correct digits.
DENSE_MAX_COND_EPS = 1e-2
# Default iteration budget: MAXITER_PER_UNKNOWN * n matrix-vector products (scipy's default for
# CG is 10 n), and never fewer than MIN_MAXITER.
MAXITER_PER_UNKNOWN = 10
MIN_MAXITER = 100
# Default GMRES restart length (Krylov basis size between restarts).
GMRES_RESTART = 30
# ---------------------------------------------------------------------------------------------


class LinearSolveError(RuntimeError):
    """A linear solve failed: non-finite values, or non-convergence with ``on_failure="raise"``.

    Attributes: ``info`` — the :class:`LinearSolveInfo` of the failed solve.
    """

    def __init__(self, message: str, info: "LinearSolveInfo"):
        super().__init__(message)
        self.info = info


class LinearSolveWarning(RuntimeWarning):
    """A linear solve stopped at its iteration limit before reaching its tolerance.

    Turn it into an error with ``warnings.simplefilter("error", LinearSolveWarning)`` or pass
    ``on_failure="raise"`` to the solver.
    """


@dataclasses.dataclass
class LinearSolveInfo:
    """Outcome of a linear solve.

    Attributes:
        converged: ``(B,)`` bool, per problem, whether ``||b - A x|| <= max(tol ||b||, atol)``.
        residual_norm: ``(B,)`` final ``||b - A x||`` (2-norm over all unknowns of a problem).
        b_norm: ``(B,)`` ``||b||``.
        iterations: number of matrix-vector products with ``A`` spent (for ``normal_cg``, with
            ``AᵀA``; for ``dense``, the ``n`` products that built the matrix).
        batch_shape: the batch shape (``B`` is its product).
        method: name of the solver.
    """

    converged: torch.Tensor
    residual_norm: torch.Tensor
    b_norm: torch.Tensor
    iterations: int
    batch_shape: tuple[int, ...]
    method: str

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


def resolve_on_failure(on_failure: str) -> str:
    if on_failure not in ("warn", "raise"):
        raise ValueError(f"on_failure must be 'warn' or 'raise'; got {on_failure!r}")
    return on_failure


def in_vmap() -> bool:
    """True when called under ``torch.func.vmap`` (at any nesting level).

    Under vmap, data-dependent Python control flow (early stopping, ``bool(tensor)``) is not
    allowed, so the solvers then run their full iteration budget and cannot report
    non-convergence. Uses torch's functorch interpreter stack (the only way to ask).
    """
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    except ImportError:  # pragma: no cover - layout of a future torch
        return False
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


class Flattener:
    """Maps a pytree of tensors with ``batch_dims`` leading batch dimensions to ``(B, n)``."""

    def __init__(self, tree: Any, batch_dims: int, what: str = "b"):
        if not isinstance(batch_dims, int) or batch_dims < 0:
            raise ValueError(f"batch_dims must be a non-negative int; got {batch_dims!r}")
        leaves, treedef = flatten(tree)
        if not leaves:
            raise ValueError(f"{what} has no tensor leaves")
        for leaf in leaves:
            if not isinstance(leaf, torch.Tensor):
                raise TypeError(
                    f"{what} must be a tensor or a pytree of tensors; found a leaf of type "
                    f"{type(leaf).__name__} in {describe_leaves(leaves)}"
                )
            if not leaf.is_floating_point():
                raise TypeError(f"{what} must be floating point; got dtype {leaf.dtype}")
        dtypes = {leaf.dtype for leaf in leaves}
        devices = {leaf.device for leaf in leaves}
        if len(dtypes) > 1:
            raise ValueError(f"all leaves of {what} must share one dtype; got {sorted(map(str, dtypes))}")
        if len(devices) > 1:
            raise ValueError(f"all leaves of {what} must be on one device; got {sorted(map(str, devices))}")
        batch_shape = None
        for leaf in leaves:
            if leaf.dim() < batch_dims:
                raise ValueError(
                    f"batch_dims={batch_dims} but a leaf of {what} has shape {tuple(leaf.shape)}"
                )
            bs = tuple(leaf.shape[:batch_dims])
            if batch_shape is None:
                batch_shape = bs
            elif bs != batch_shape:
                raise ValueError(
                    f"every leaf of {what} must share the batch shape (the first batch_dims="
                    f"{batch_dims} dims); got {describe_leaves(leaves)}"
                )
        self.treedef: TreeDef = treedef
        self.batch_dims = batch_dims
        self.batch_shape: tuple[int, ...] = batch_shape or ()
        self.shapes = [tuple(leaf.shape[batch_dims:]) for leaf in leaves]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.B = math.prod(self.batch_shape)
        self.n = sum(self.sizes)
        self.dtype = leaves[0].dtype
        self.device = leaves[0].device
        self.what = what

    def ravel(self, tree: Any, what: str | None = None) -> torch.Tensor:
        leaves, treedef = flatten(tree)
        if treedef != self.treedef:
            raise ValueError(
                f"{what or self.what} has structure {treedef}, expected {self.treedef} (the "
                "structure of b)"
            )
        parts = []
        for leaf, shape in zip(leaves, self.shapes):
            if not isinstance(leaf, torch.Tensor) or tuple(leaf.shape) != self.batch_shape + shape:
                got = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
                raise ValueError(
                    f"{what or self.what}: a leaf has shape {got}, expected "
                    f"{self.batch_shape + shape} (the shape of the matching leaf of b)"
                )
            parts.append(leaf.reshape(self.B, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def unravel(self, flat: torch.Tensor) -> Any:
        leaves = []
        for chunk, shape in zip(torch.split(flat, self.sizes, dim=1), self.shapes):
            leaves.append(chunk.reshape(self.batch_shape + shape))
        return self.treedef.unflatten(leaves)

    def flat_matvec(self, matvec: Callable[[Any], Any], name: str = "matvec"):
        def mv(v: torch.Tensor) -> torch.Tensor:
            return self.ravel(matvec(self.unravel(v)), what=f"the output of {name}")

        return mv


def prepare(matvec, b, init, tol, atol, maxiter, batch_dims, ridge, on_failure, per_unknown=True):
    """Common argument checks; returns (flattener, flat matvec, b2d, x0, tol, atol, maxiter)."""
    if not callable(matvec):
        raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
    resolve_on_failure(on_failure)
    fl = Flattener(b, batch_dims, "b")
    b2 = fl.ravel(b)
    if init is None:
        x0 = torch.zeros_like(b2)
    else:
        x0 = fl.ravel(init, what="init").to(b2.dtype)
    if tol is None:
        tol = DEFAULT_TOL.get(fl.dtype, DEFAULT_TOL[torch.float32])
    if not (tol >= 0 and atol >= 0):
        raise ValueError(f"tol and atol must be >= 0; got tol={tol}, atol={atol}")
    if maxiter is None:
        maxiter = max(MAXITER_PER_UNKNOWN * fl.n, MIN_MAXITER) if per_unknown else MIN_MAXITER
    if not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter must be a non-negative int; got {maxiter!r}")
    if ridge is not None and not (float(ridge) >= 0):
        raise ValueError(f"ridge must be >= 0; got {ridge!r}")
    mv = fl.flat_matvec(matvec)
    if ridge:
        base = mv
        mv = lambda v: base(v) + ridge * v  # noqa: E731  (A + ridge I) v
    return fl, mv, b2, x0, tol, atol, maxiter


def rownorm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v, dim=1)


def rowdot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(dim=1)


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den == 0 (frozen or broken-down rows). Differentiable."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def finish(
    method: str,
    fl: Flattener,
    x: torch.Tensor,
    residual: torch.Tensor,
    b_norm: torch.Tensor,
    threshold: torch.Tensor,
    iterations: int,
    on_failure: str,
    return_info: bool,
):
    """Check the outcome, warn or raise on failure, and unravel the solution.

    ``residual`` and ``b_norm`` are ``(B,)``. Under vmap nothing can be checked (the values are
    batched), the solution is returned as is.
    """
    if in_vmap():
        if return_info:
            raise RuntimeError("return_info=True is not supported under torch.func.vmap")
        return fl.unravel(x)
    with torch.no_grad():
        res = residual.detach()
        converged = res <= threshold.detach()
        finite = bool(torch.isfinite(x.detach()).all()) and bool(torch.isfinite(res).all())
    info = LinearSolveInfo(
        converged=converged & torch.isfinite(res),
        residual_norm=res,
        b_norm=b_norm.detach(),
        iterations=iterations,
        batch_shape=fl.batch_shape,
        method=method,
    )
    if not finite:
        raise LinearSolveError(
            f"linear_solve.{method}: the solution has non-finite values (NaN/Inf): the "
            "matrix is singular or the iteration broke down. Try linear_solve.dense, a ridge, "
            "or check the matvec for NaN.",
            info,
        )
    if not bool(info.converged.all()):
        bad = torch.nonzero(~info.converged).flatten().tolist()
        worst = int(torch.argmax(torch.where(info.converged, torch.zeros_like(res), res / b_norm.detach().clamp_min(torch.finfo(res.dtype).tiny))))
        rel = float(res[worst] / b_norm[worst].detach().clamp_min(torch.finfo(res.dtype).tiny))
        where = ""
        if fl.batch_shape:
            shown = [tuple(int(i) for i in torch.unravel_index(torch.tensor(k), fl.batch_shape)) for k in bad[:5]]
            where = f" for {len(bad)} of {fl.B} problems (batch indices {shown}{' ...' if len(bad) > 5 else ''})"
        msg = (
            f"linear_solve.{method} did not converge{where} after {iterations} iterations: "
            f"worst relative residual ||b - Ax||/||b|| = {rel:.3e} (threshold: "
            f"{float(threshold[worst] / b_norm[worst].detach().clamp_min(torch.finfo(res.dtype).tiny)):.1e}). "
            "Increase maxiter, add a ridge, or use a solver suited to the matrix (cg needs "
            "symmetric positive definite, gmres/bicgstab any nonsingular, dense any small one)."
        )
        if on_failure == "raise":
            raise LinearSolveError(msg, info)
        warnings.warn(msg, LinearSolveWarning, stacklevel=3)
    sol = fl.unravel(x)
    return (sol, info) if return_info else sol
