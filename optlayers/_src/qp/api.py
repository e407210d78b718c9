"""Public entry points of the dense QP layer: :func:`solve_qp`, :class:`QPLayer`, :class:`QPSolution`."""

from __future__ import annotations

import dataclasses

import torch
from torch.autograd import forward_ad

from optlayers._src.qp import backends, certificates, functional, kkt, scaling
from optlayers._src.qp import warm_start as warm
from optlayers._src.qp.backends import RawSolution
from optlayers._src.qp.backward import QPSolutionMap
from optlayers._src.qp.linalg import mv
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import QPData, canonicalize
from optlayers._src.sparse import route as sparse_route
from optlayers._src.sparse.problem import is_sparse
from optlayers._src.status import OnFailure, Status, apply_failure_policy


@dataclasses.dataclass
class QPSolution:
    """Solution of a batch of QPs (``*`` is the broadcast batch shape of the inputs).

    Attributes:
        x: (*, n) primal solution.
        lam: (*, m) multipliers of ``Gx ≤ h`` (≥ 0).
        nu: (*, p) multipliers of ``Ax = b``.
        status: (*,) int8 :class:`~optlayers.Status` codes (0 = solved).
        iterations: (*,) int32 interior-point iterations per problem.
        backend: name of the backend that solved the batch.

    ``x``, ``lam`` and ``nu`` are all differentiable. Failed problems hold NaN (only with
    ``on_failure="nan"``; the default raises).
    """

    x: torch.Tensor
    lam: torch.Tensor
    nu: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    backend: str

    @property
    def ok(self) -> torch.Tensor:
        """(*,) bool: which problems solved."""
        return self.status == Status.SOLVED


def _has_tangent(t: torch.Tensor) -> bool:
    return forward_ad.unpack_dual(t).tangent is not None


def _needs_derivative(data: QPData) -> bool:
    ts = data.tensors()
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return True
    return _has_forward_tangents(data)


def _has_forward_tangents(data: QPData) -> bool:
    return any(_has_tangent(t) for t in data.tensors())


def _attach(data: QPData, raw: RawSolution) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Route the solution through :class:`QPSolutionMap` so autograd sees the KKT derivative."""
    ok = (raw.status == Status.SOLVED).unsqueeze(-1)
    # Failed problems carry zeros into the map (finite, so their zero upstream gradients stay
    # zero in shared-input sums); the failure policy NaN-fills them afterwards.
    x = torch.where(ok, raw.x, torch.zeros_like(raw.x))
    lam = torch.where(ok, raw.lam, torch.zeros_like(raw.lam))
    nu = torch.where(ok, raw.nu, torch.zeros_like(raw.nu))
    plain = data.detach()
    mask = kkt.classify_active(lam, plain.h - mv(plain.G, x))
    if raw.kkt_solver == "native":
        # The lu slot carries the native polish LUs (if kept) and the pivots slot the statuses to
        # qp_backward, which skips the failed problems as the op's own backward does.
        empty = x.new_empty(0)
        lu = raw.native_factor if raw.native_factor is not None else empty
        factors = (mask, lu, raw.status.to(torch.int32), empty)
    else:
        fac = raw.factor
        if fac is None or not bool(ok.all()):
            fac = kkt.factor(plain, mask)
        factors = (fac.mask, fac.lu, fac.pivots, fac.delta)
    return QPSolutionMap.apply(*data.tensors(), x, lam, nu, *factors, raw.kkt_solver)


def solve_qp(
    Q: torch.Tensor | None,
    q: torch.Tensor,
    G: torch.Tensor | None = None,
    h: torch.Tensor | None = None,
    A: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    backend: Backend | str = "auto",
    return_solution: bool = False,
    on_failure: OnFailure | str = "raise",
    check_inputs: bool = True,
    tol: float | None = None,
    max_iter: int = 50,
    polish: bool = True,
    warm_start: "QPSolution | torch.Tensor | None" = None,
) -> torch.Tensor | QPSolution:
    """Solve a batch of convex QPs, differentiably::

        minimize_x  ½ xᵀ Q x + qᵀ x    subject to   A x = b,   G x ≤ h

    Args:
        Q: (*, n, n) symmetric positive semidefinite, or ``None`` for ``Q = 0`` (an LP).
        q: (*, n).
        G, h: (*, m, n) and (*, m) inequality constraints, or both ``None``. ``h`` may hold
            ``+inf`` (no bound) and ``-inf`` (an impossible one: ``PRIMAL_INFEASIBLE``); they are
            recognized by the input checks (not with ``check_inputs=False``).
        A, b: (*, p, n) and (*, p) equality constraints, or both ``None``.
            Leading batch dimensions ``*`` broadcast; data without them is shared by the
            whole batch and never copied per problem (its gradient is the sum over the batch).
        backend: ``"auto"``, ``"torch"`` or another registered dense backend, or ``"osqp"``.
            Sparse ``Q``/``G``/``A`` (torch sparse COO/CSR) always go to ``"osqp"``
            (see :func:`optlayers.solve_sparse_qp` and ``docs/sparse.md``).
        return_solution: return a :class:`QPSolution` (x, duals, status, iterations) instead of x.
        on_failure: ``"raise"`` raises :class:`~optlayers.SolverError` naming the failed batch
            indices; ``"nan"`` fills their outputs with NaN (read ``status`` to tell which).
        check_inputs: validate finiteness, symmetry and positive semidefiniteness of ``Q``
            (costs one Cholesky per distinct ``Q``; shapes, dtypes and devices are always checked).
        tol: relative tolerance of the interior point (default 1e-9 float64, 1e-5 float32).
        max_iter: interior-point iteration cap. A problem the interior point leaves unsolved
            (stalled, broken down, or at the default cap) is searched for a certificate of
            infeasibility or unboundedness (``optlayers/_src/qp/certificates.py``): its status
            is then PRIMAL_INFEASIBLE or DUAL_INFEASIBLE instead of MAX_ITER. With ``max_iter``
            below the default, problems that reach it stay MAX_ITER (no search cost).
        polish: finish with an exact active-set solve (recommended; gives ~1e-14 in float64).
        warm_start: a guess of the active sets — a :class:`QPSolution` of earlier, similar
            problems (its rows with ``λ > 0``) or a (*, m) bool tensor. Each problem first tries
            the KKT system of its guess (and one correction) and keeps the result only if it
            passes the polish's optimality test; the others are solved from scratch. Accepted
            problems report 0 iterations. Pays when most guesses are right (bilevel loops, MPC);
            see ``optlayers/_src/qp/warm_start.py``.

    Returns:
        ``x`` of shape (*, n), or a :class:`QPSolution` if ``return_solution``.

    Gradients with respect to every input come from one solve with the active-set KKT matrix at
    the solution (reverse mode and forward mode); see ``optlayers/_src/qp/backward.py``. Higher
    derivatives (``create_graph=True``) are exact on the active set; ``torch.func`` transforms
    (``grad``, ``jacrev``, ``jacfwd``, ``vmap``, …) apply, ``vmap`` folding into the batch (see
    ``optlayers/_src/qp/functional.py``).

    Badly scaled problems (variables in units far apart, an objective of scale far from 1) are
    rescaled before the dense backends solve them and the results mapped back, exactly, gradients
    included; see ``optlayers/_src/qp/scaling.py``.
    """
    options = QPOptions(tol=tol, max_iter=max_iter, polish=polish)
    if functional.transformed(Q, q, G, h, A, b):  # inside torch.func.grad / vmap / jacrev / …
        return _solve_qp_transformed(Q, q, G, h, A, b, backend, return_solution, on_failure, check_inputs,
                                     options, warm_start)
    return _solve_qp(Q, q, G, h, A, b, backend, return_solution, on_failure, check_inputs, options, warm_start)


def _solve_qp_transformed(Q, q, G, h, A, b, backend, return_solution, on_failure, check_inputs, options,
                          warm_start):
    """:func:`solve_qp` on inputs wrapped by a ``torch.func`` transform (``functional.py``)."""
    functional.refuse(backend, warm_start, [n for n, t in zip("QqGhAb", (Q, q, G, h, A, b)) if is_sparse(t)])
    config = functional.SolveConfig(Backend.resolve(backend), options, OnFailure.resolve(on_failure), check_inputs)
    x, lam, nu, status, iterations = functional.solve(Q, q, G, h, A, b, config)
    if not return_solution:
        return x
    return QPSolution(x=x, lam=lam, nu=nu, status=status, iterations=iterations, backend=config.backend.value)


def _solve_qp(Q, q, G, h, A, b, backend, return_solution, on_failure, check_inputs, options: QPOptions,
              warm_start, warm_strict: bool = True):
    """:func:`solve_qp` with its options resolved; ``warm_strict=False`` ignores a warm start
    whose shape does not fit the batch (``QPLayer`` across batch sizes) instead of raising."""
    policy = OnFailure.resolve(on_failure)
    if sparse_route.wants_sparse(Q, q, G, h, A, b, backend):  # sparse data or backend="osqp"
        if warm_strict:  # (QPLayer: the OSQP route warm-starts by itself)
            _refuse_sparse_warm_start(warm_start)
        return sparse_route.solve_qp_osqp(
            Q, q, G, h, A, b,
            options=options, on_failure=policy, check_inputs=check_inputs, return_solution=return_solution,
        )
    data = canonicalize(Q, q, G, h, A, b, check_values=check_inputs)
    scaled = scaling.plan(data)  # None unless the variables', the rows' or the objective's scale is far off
    work = data if scaled is None else scaled.apply(data)
    be = backends.select(backend, work)
    guess = None if warm_start is None else warm.guess_of(warm_start, work, strict=warm_strict)
    x, lam, nu, raw = _solve_work(work, be, options, guess)
    redo = scaling.solution_scales(raw.x, raw.status, work)  # (in the units the backend saw)
    if scaled is not None:
        x, lam, nu = scaled.unscale(x, lam, nu)
    if redo is not None:
        x, lam, nu, raw = _at_solution_scale(data, scaled, redo, be, options, guess, (x, lam, nu), raw)
    data = work  # (the certificates below judge the problem the backend solved)
    shape = data.batch_shape
    if len(shape) != 1:  # (B, ·) is already the shape of a one-dimensional batch
        x, lam, nu = (t.reshape(tuple(shape) + t.shape[-1:]) for t in (x, lam, nu))
    # A problem the interior point could not finish may still be provably infeasible.
    status = certificates.certify_failures(data.detach(), raw.status, raw.iterations, options.max_iter)
    status = status.reshape(shape)
    x, lam, nu = apply_failure_policy(status, (x, lam, nu), policy, what="QP")
    if not return_solution:
        return x
    return QPSolution(
        x=x, lam=lam, nu=nu, status=status, iterations=raw.iterations.reshape(shape), backend=be.name.value
    )


def _solve_work(work, be, options: QPOptions, guess):
    """``(x, λ, ν, raw)`` of the (scaled) problems ``work`` by the backend ``be``, differentiable in
    ``work``'s tensors where they require it (the backend's own op, or the KKT adjoint attached)."""
    # (A duck-typed test: isinstance against the runtime-checkable Protocol costs ~50 µs a call.)
    if guess is not None:
        with torch.no_grad():
            raw = warm.solve(work.detach(), guess, be, options, keep_factor=_needs_derivative(work))
        x, lam, nu = _attach(work, raw) if _needs_derivative(work) else (raw.x, raw.lam, raw.nu)
    elif callable(getattr(be, "solve_differentiable", None)) and not _has_forward_tangents(work):
        # The backend's op carries its own (registered) reverse-mode autograd, which uses the
        # same KKT adjoint; forward-mode tangents take the QPSolutionMap route below instead.
        raw = be.solve_differentiable(work, options)
        x, lam, nu = raw.x, raw.lam, raw.nu
    else:
        with torch.no_grad():
            raw = be.solve(work.detach(), options)
        if _needs_derivative(work):
            x, lam, nu = _attach(work, raw)
        else:
            x, lam, nu = raw.x, raw.lam, raw.nu
    return x, lam, nu, raw


def _at_solution_scale(data, scaled, redo, be, options: QPOptions, guess, first, raw):
    """The problems ``redo = (idx, τ)`` (``scaling.solution_scales``: a first solution far from unit
    size in the scaled units) solved again with q, h, b divided by τ, so that the solver's tests,
    whose floors are absolute ("1 + ‖·‖"), judge the solution relative to its size. A second solve
    is taken where it is SOLVED or the first was not; its iterations add to the first's.
    ``first`` = (x, λ, ν) of the first solve in the original units; returns them and ``raw``
    updated (status, iterations), differentiable as the first (``index_copy``). See
    ``scaling.at_solution_scale``."""
    idx, tau = redo
    sub = data.take(idx)
    plan = scaling.at_solution_scale(None if scaled is None else scaled.take(idx), tau, sub)
    x2, lam2, nu2, raw2 = _solve_work(plan.apply(sub), be, options, None if guess is None else guess[idx])
    x2, lam2, nu2 = plan.unscale(x2, lam2, nu2)
    take = (raw2.status == Status.SOLVED) | (raw.status[idx] != Status.SOLVED)
    if not bool(take.any()):
        return (*first, raw)
    rows = torch.nonzero(take).squeeze(-1)
    ids = idx[rows]
    x, lam, nu = (t.index_copy(0, ids, t2[rows]) for t, t2 in zip(first, (x2, lam2, nu2)))
    status = raw.status.clone()
    status[ids] = raw2.status[rows]
    iterations = raw.iterations.clone()
    iterations[ids] += raw2.iterations[rows].to(iterations.dtype)
    return x, lam, nu, dataclasses.replace(raw, status=status, iterations=iterations)


def _refuse_sparse_warm_start(warm_start) -> None:
    if warm_start is not None:
        raise ValueError(
            "warm_start is for dense QPs; the sparse (OSQP) route warm-starts by itself from the "
            "previous solve of the same sparsity pattern (see solve_sparse_qp's warm_start option)"
        )


class QPLayer(torch.nn.Module):
    """A batched QP as a layer: ``layer(Q, q, G, h, A, b) -> x`` (see :func:`solve_qp`).

    The options are fixed at construction; the call takes only problem data.

    With ``warm_start=True`` the layer keeps the active sets of its last call (not part of the
    ``state_dict``) and warm-starts the next call from them when the batch shape and ``m`` match
    (see :func:`solve_qp`'s ``warm_start``); otherwise that call is solved cold. Use it where
    consecutive calls see similar problems (an unrolled optimization, MPC); :meth:`reset_warm_start`
    forgets the stored guess. Calls under ``torch.func`` transforms (``vmap``, ``grad`` of a
    ``functional_call``) are solved cold and store nothing.
    """

    def __init__(
        self,
        backend: Backend | str = "auto",
        *,
        return_solution: bool = False,
        on_failure: OnFailure | str = "raise",
        check_inputs: bool = True,
        tol: float | None = None,
        max_iter: int = 50,
        polish: bool = True,
        warm_start: bool = False,
    ):
        super().__init__()
        self.backend = Backend.resolve(backend)
        self.options = QPOptions(tol=tol, max_iter=max_iter, polish=polish)
        self.on_failure = OnFailure.resolve(on_failure)
        self.check_inputs = check_inputs
        self.return_solution = return_solution
        self.warm_start = bool(warm_start)
        self._guess: torch.Tensor | None = None

    def reset_warm_start(self) -> None:
        """Forget the stored active sets: the next call is solved cold."""
        self._guess = None

    def forward(self, Q, q, G=None, h=None, A=None, b=None):
        if functional.transformed(Q, q, G, h, A, b):  # torch.func (e.g. vmap(grad(functional_call)))
            # solved cold, and no guess is stored: the warm start is an optimization of plain calls
            return _solve_qp_transformed(Q, q, G, h, A, b, self.backend, self.return_solution, self.on_failure,
                                         self.check_inputs, self.options, None)
        sol = _solve_qp(
            Q, q, G, h, A, b, self.backend, self.return_solution or self.warm_start, self.on_failure,
            self.check_inputs, self.options, self._guess if self.warm_start else None, warm_strict=False,
        )
        if not self.warm_start:
            return sol
        self._guess = sol.lam.detach() > 0
        return sol if self.return_solution else sol.x

    def extra_repr(self) -> str:
        warm = ", warm_start=True" if self.warm_start else ""
        return f"backend={self.backend.value!r}, on_failure={self.on_failure.value!r}, {self.options}{warm}"
