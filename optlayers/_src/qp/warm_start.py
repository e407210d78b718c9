"""Warm start of the dense QP layers from a guess of the active set (e.g. an earlier solution's).

Where a sequence of QPs changes slowly — the lower level of a bilevel loop between two outer
steps, MPC between two time steps, a layer evaluated on nearby inputs — the active set of the
new solution is usually that of the old one. The warm start first solves, for every problem,
the KKT system of the guessed active set (``active_set.py``: one batched factorization, plus up
to ``WARM_START_ROUNDS − 1`` corrected guesses for the problems rejected) and accepts the result
only where it satisfies every KKT condition of the new QP to ``polish_tol`` — the test the
interior point's polish uses, so an accepted problem is solved exactly as accurately as a cold
one. Everything else is solved from scratch by the backend. Accepted problems report 0
interior-point iterations.

This is a guess-and-verify scheme, not an interior-point warm start (those are notoriously
fragile): it costs one or two KKT solves per problem and pays when most guesses are right.
With ``Q`` singular (several optimal x), an accepted point is optimal but need not be the one a
cold solve returns.
"""

from __future__ import annotations

import torch

from optlayers._src.qp import active_set
from optlayers._src.qp.backends import QPBackend, RawSolution
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import QPData
from optlayers._src.status import Status

# Active-set guesses tried per problem before it is solved from scratch: the given one and one
# correction (rows with negative multipliers leave, violated rows join).
WARM_START_ROUNDS = 2


def guess_of(warm_start, data: QPData, *, strict: bool = True) -> torch.Tensor | None:
    """The (B, m) 0/1 active-set guess (dtype of the data) for ``data``, or None.

    ``warm_start`` is a :class:`~optlayers.QPSolution` (its rows with ``λ > 0``) or a tensor of
    shape (*, m) that broadcasts to the batch shape — bool, or numbers where nonzero means
    active. Wrong shapes or devices raise ``ValueError`` naming ``warm_start``; with
    ``strict=False`` a shape mismatch returns None instead (``QPLayer`` across batch sizes).
    Returns None when the problems have no inequalities or there are none (nothing to guess).
    """
    lam = getattr(warm_start, "lam", None)
    if lam is not None:
        guess = lam.detach() > 0  # NaN (a failed problem) is not active
    elif isinstance(warm_start, torch.Tensor):
        guess = warm_start.detach()
        guess = guess if guess.dtype == torch.bool else guess != 0
    else:
        raise ValueError(
            f"warm_start must be a QPSolution (from return_solution=True) or an active-set tensor "
            f"of shape (*, m); got {type(warm_start).__name__}"
        )
    if data.m == 0 or data.B == 0:
        return None
    if guess.device != data.device:
        raise ValueError(f"warm_start is on {guess.device} but the problem data is on {data.device}")
    want = tuple(data.batch_shape) + (data.m,)
    try:
        if guess.dim() == 0 or guess.shape[-1] != data.m:
            raise RuntimeError
        guess = guess.expand(want)
    except RuntimeError:
        if not strict:
            return None
        raise ValueError(
            f"warm_start must have shape (*, m) broadcastable to {want} (batch shape {tuple(data.batch_shape)}, "
            f"m = {data.m} inequalities); got {tuple(guess.shape)}"
        ) from None
    return guess.reshape(data.B, data.m).to(data.dtype)


def solve(data: QPData, guess: torch.Tensor, backend: QPBackend, options: QPOptions,
          keep_factor: bool = False) -> RawSolution:
    """Solve the (detached) batch: the guessed active sets first, the backend for the rest.
    ``keep_factor``: a backward will follow (the native CPU path then keeps its polish LUs for it
    where that pays, as ``qp_solve`` does under autograd)."""
    kind = "native" if backend.name is Backend.NATIVE else "torch"
    if kind == "native":
        from optlayers._src.native import ops

        if ops.has_active_set_solve(data):
            # CPU (and CUDA for the small kernel's problems): every round in one native pass (the
            # polish's solve, test, NNLS repair and correction per problem) instead of ~20 tensor
            # ops a round around qp_kkt_solve.
            x, lam, nu, status, native_factor = ops.active_set_solve(data, guess, WARM_START_ROUNDS, keep_factor)
            return _native_rest(data, backend, options, x, lam, nu, status, native_factor, keep_factor)
    # Otherwise tensor ops around a batched K-solve: the native one (C++, refined per problem) is
    # several times faster than the PyTorch factor on small problems. No NNLS repair here: a
    # rejected problem's cold solve polishes (and repairs) it anyway.
    B, n, m, p = data.B, data.n, data.m, data.p
    ref = data.q
    x0, lam0, nu0 = ref.new_zeros(B, n), ref.new_zeros(B, m), ref.new_zeros(B, p)
    status0 = torch.full((B,), int(Status.MAX_ITER), dtype=torch.int8, device=ref.device)
    everyone = torch.arange(B, device=ref.device)
    x, lam, nu, status, parts = active_set.solve_active_sets(
        data, guess, everyone, x0, lam0, nu0, status0, WARM_START_ROUNDS, repair=False, solver=kind
    )
    iterations = torch.zeros(B, dtype=torch.int32, device=ref.device)
    rest = torch.nonzero(status != int(Status.SOLVED)).squeeze(-1)
    if rest.numel():
        cold = backend.solve(data.take(rest), options)
        x[rest], lam[rest], nu[rest], status[rest] = cold.x, cold.lam, cold.nu, cold.status
        iterations[rest] = cold.iterations
        kind = cold.kkt_solver
        if cold.factor is not None:
            parts = parts + [(rest, cold.factor)]
    # The backward reuses the factors when every problem has one of the torch K-solve's kind;
    # otherwise it refactors (the native K-solve always does).
    factor = active_set.merge_factors(data, parts) if kind == "torch" else None
    return RawSolution(x=x, lam=lam, nu=nu, status=status, iterations=iterations, factor=factor, kkt_solver=kind)


def _native_rest(data, backend, options, x, lam, nu, status, native_factor, keep_factor) -> RawSolution:
    """The native path's cold part: the problems no guess finished, solved from scratch; the kept
    polish LUs of both parts merged (a row whose last slot is −1 has none; CPU only)."""
    iterations = torch.zeros(data.B, dtype=torch.int32, device=data.device)
    nf = native_factor if native_factor.numel() else None
    rest = torch.nonzero(status != int(Status.SOLVED)).squeeze(-1)
    if rest.numel():
        sub = data.take(rest)
        cold = backend.solve_keeping(sub, options) if keep_factor else backend.solve(sub, options)
        x[rest], lam[rest], nu[rest], status[rest] = cold.x, cold.lam, cold.nu, cold.status
        iterations[rest] = cold.iterations
        if nf is not None:
            if cold.native_factor is not None:
                nf[rest] = cold.native_factor
            else:
                nf[rest, -1] = -1
    return RawSolution(x=x, lam=lam, nu=nu, status=status, iterations=iterations, kkt_solver="native",
                       native_factor=nf)
