"""The route :func:`optlayers.solve_qp` takes for sparse data or ``backend="osqp"``.

``solve_qp``'s form ``Ax = b, Gx ≤ h`` becomes OSQP's ``l ≤ A_osqp x ≤ u`` with

    A_osqp = [A; G],     l = [b; −∞],     u = [b; h],

and the multipliers split back as ``ν = y[:p]`` (equalities) and ``λ = y[p:] ≥ 0``
(inequalities) — the same sign conventions as the dense backends (Qx + q + Gᵀλ + Aᵀν = 0).
Options: ``tol`` sets OSQP's ``eps_abs = eps_rel`` (default 1e-6), ``polish`` the active-set
polish, and ``max_iter`` (interior-point iterations in the dense family) is mapped to
``ADMM_ITERS_PER_IPM_ITER × max_iter`` ADMM iterations (options.py).
"""

from __future__ import annotations

import math

import torch

from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.sparse import options as opts
from optlayers._src.sparse.problem import broadcast_shapes, is_sparse
from optlayers._src.status import OnFailure, apply_failure_policy


def wants_sparse(Q, q, G, h, A, b, backend) -> bool:
    """Whether ``solve_qp`` must take the sparse route: any sparse input, or backend="osqp".

    Raises ``ValueError`` for sparse data with a dense backend named explicitly.
    """
    which = Backend.resolve(backend)
    sparse = [name for name, t in zip("QqGhAb", (Q, q, G, h, A, b)) if is_sparse(t)]
    if which is Backend.OSQP:
        return True
    if sparse and which is not Backend.AUTO:
        raise ValueError(
            f"{', '.join(sparse)} {'is' if len(sparse) == 1 else 'are'} sparse, which only backend='osqp' "
            f"(or 'auto') solves; backend {which.value!r} is dense — densify with .to_dense() to use it."
        )
    return bool(sparse)


def _bound(name: str, v, rows: int, matrix: str, q: torch.Tensor, allow_inf: bool, check_values: bool) -> None:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(v).__name__}")
    if v.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor; got layout {v.layout} (use {name}.to_dense())")
    if v.dim() < 1 or v.shape[-1] != rows:
        raise ValueError(f"{name} must have shape (*, {rows}) (one entry per row of {matrix}); got {tuple(v.shape)}")
    if v.dtype != q.dtype:
        raise ValueError(f"{name} has dtype {v.dtype} but q has {q.dtype}; all QP data must share one dtype")
    if v.device != q.device:
        raise ValueError(f"{name} is on device {v.device} but q is on {q.device}; all QP data must be on one device.")
    if not check_values:
        return
    bad = torch.isnan(v) | (v == -math.inf) | ((v == math.inf) if not allow_inf else torch.zeros_like(v, dtype=torch.bool))
    if bool(bad.any()):
        if allow_inf:
            raise ValueError(
                f"{name} contains NaN or -inf entries (+inf, no bound, is allowed). The OSQP route "
                f"rejects an upper bound of -inf; the dense backends report its problem as PRIMAL_INFEASIBLE"
            )
        raise ValueError(f"{name} contains NaN or Inf entries; the QP data must be finite")


def solve_qp_osqp(Q, q, G, h, A, b, *, options: QPOptions, on_failure: OnFailure, check_inputs: bool, return_solution: bool):
    """``solve_qp`` on sparse data (see the module docstring); returns x or a ``QPSolution``."""
    from optlayers._src.qp.api import QPSolution  # lazy: qp.api imports this module
    from optlayers._src.sparse.api import run
    from optlayers._src.sparse.problem import canonicalize

    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor; got {type(q).__name__}")
    if q.dtype not in (torch.float32, torch.float64):  # (first: the others are compared with q's)
        raise ValueError(f"q must be float32 or float64; got {q.dtype}")
    if check_inputs:
        # G and A are stacked into OSQP's one constraint matrix below, whose checks would name it
        # "A"; dense matrices are checked here under their own names.
        for name, M in (("Q", Q), ("G", G), ("A", A)):
            if (isinstance(M, torch.Tensor) and M.layout == torch.strided and M.is_floating_point()
                    and not bool(torch.isfinite(M).all())):
                raise ValueError(f"{name} contains NaN or Inf entries; the QP data must be finite")
    for mat, vec, M, v in (("G", "h", G, h), ("A", "b", A, b)):
        if (M is None) != (v is None):
            raise ValueError(f"{mat} and {vec} must be given together; {mat if M is None else vec} is missing")
    eps = options.tol if options.tol is not None else opts.DEFAULT_EPS
    osqp_options = opts.OSQPOptions(
        eps_abs=eps, eps_rel=eps, max_iter=opts.ADMM_ITERS_PER_IPM_ITER * int(options.max_iter), polish=options.polish
    )
    blocks, lows, ups = [], [], []  # per block: lower bounds (None = −∞) and upper bounds
    p = 0
    if A is not None:
        if not isinstance(A, torch.Tensor) or A.dim() < 2:
            raise ValueError(f"A must be a tensor of shape (*, p, n); got {getattr(A, 'shape', type(A).__name__)}")
        p = int(A.shape[-2])
        _bound("b", b, p, "A", q, allow_inf=False, check_values=check_inputs)
        blocks.append(("A", A))
        lows.append(b)
        ups.append(b)
    if G is not None:
        if not isinstance(G, torch.Tensor) or G.dim() < 2:
            raise ValueError(f"G must be a tensor of shape (*, m, n); got {getattr(G, 'shape', type(G).__name__)}")
        mG = int(G.shape[-2])
        _bound("h", h, mG, "G", q, allow_inf=True, check_values=check_inputs)
        blocks.append(("G", G))
        lows.append(None)
        ups.append(h)
    l = u = None
    if blocks:
        vecs = [v for v in ups if v is not None]
        try:
            batch = broadcast_shapes(*(v.shape[:-1] for v in vecs))
        except RuntimeError:
            raise ValueError(
                f"the batch dimensions of b and h do not broadcast together ({', '.join(str(tuple(v.shape)) for v in vecs)})"
            ) from None
        ex = lambda v: v.expand(tuple(batch) + v.shape[-1:])  # noqa: E731
        l = torch.cat([ex(lo if lo is not None else q.new_full(up.shape[-1:], -math.inf)) for lo, up in zip(lows, ups)], -1)
        u = torch.cat([ex(up) for up in ups], -1)
    data = canonicalize(Q, q, blocks, l, u, check_values=check_inputs, names={"P": "Q", "l": "b", "u": "b/h"})
    x, y, status, iterations, _ = run(data, osqp_options, None)
    nu, lam = y[..., :p], y[..., p:]
    x, lam, nu = apply_failure_policy(status, (x, lam, nu), on_failure, what="QP")
    if not return_solution:
        return x
    return QPSolution(x=x, lam=lam, nu=nu, status=status, iterations=iterations, backend=Backend.OSQP.value)
