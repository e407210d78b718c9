"""Differentiable optimal value of a QP, differentiated by the envelope theorem (no linear solve).

For each problem of the batch

    V(θ) = min_x  ½ xᵀ Q x + qᵀ x   s.t.  A x = b,  G x ≤ h,        θ = (Q, q, G, h, A, b).

With the Lagrangian  L(x, λ, ν; θ) = ½ xᵀQx + qᵀx + λᵀ(Gx − h) + νᵀ(Ax − b)  and a KKT point
(x*, λ*, ν*), the envelope theorem (Danskin's theorem for the min over x, combined with strong
duality of the convex QP; e.g. Bonnans & Shapiro 2000, Thm 4.24) gives

    dV = ∂_θ L(x*, λ*, ν*; θ)[dθ]
       = ½ x*ᵀ dQ x* + dqᵀ x* + λ*ᵀ(dG x* − dh) + ν*ᵀ(dA x* − db),

hence the reverse-mode gradients, for an upstream scalar ḡ per problem,

    ∇Q = ḡ ½ x xᵀ     ∇q = ḡ x
    ∇G = ḡ λ xᵀ       ∇h = −ḡ λ
    ∇A = ḡ ν xᵀ       ∇b = −ḡ ν

No KKT system is solved: the backward costs a few outer products. (Second derivatives do need
one: when the backward is recorded — ``create_graph=True``, e.g. for a Hessian of V — the solution
in the formulas above is put on the graph through ``backward.QPSolutionMap``, whose derivative is
the implicit KKT derivative, so ∇²_q V = ∂x*/∂q and so on.) It agrees with the gradient
of ½xᵀQx + qᵀx computed through the implicit KKT derivative of ``solve_qp`` (the derivative of
x along the active set is orthogonal to Qx + q = −Gᵀλ − Aᵀν), and it stays exact where the KKT
derivative is only a generalized-Jacobian element: with Q ≻ 0, x* is unique and V is C¹ in
(Q, q) at every point, degenerate active sets included. Where the multipliers are not unique
(linearly dependent active constraints) V may be non-differentiable in (G, h, A, b); the result
is then the one given by the multipliers the solver returned (in h and b, a subgradient of the
convex function V(h, b)).

Shared inputs (no batch dimension) get the batch sum of the per-problem gradients, as in
:func:`~optlayers.solve_qp`. Problems that fail get zero gradient, and their value is handled by
the failure policy (raise, or NaN with the status).
"""

from __future__ import annotations

import dataclasses

import torch

from optlayers._src.qp import backends, certificates, functional, kkt, scaling
from optlayers._src.qp import warm_start as warm
from optlayers._src.qp.api import QPSolution, _refuse_sparse_warm_start
from optlayers._src.qp.backward import QPSolutionMap, data_of, native_solve_available
from optlayers._src.qp.linalg import mv, outer, reduce_to
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import canonicalize
from optlayers._src.sparse.problem import is_sparse
from optlayers._src.status import OnFailure, Status, apply_failure_policy


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-problem inner product ``(B, k), (B, k) → (B,)``."""
    return (u * v).sum(-1)


class QPOptimalValue(torch.autograd.Function):
    """``(Q, q, G, h, A, b; x*, λ*, ν*) ↦ V = ½ x*ᵀQx* + qᵀx*`` with the envelope derivative.

    Inputs are canonical (:class:`~optlayers._src.qp.problem.QPData` layout: batched ``(B, …)``
    or shared); the solution ``(x*, λ*, ν*)`` (B, n), (B, m), (B, p) is a non-differentiable
    input, zero for failed problems (which therefore get zero gradient). Output: (B,).
    ``kind``: the K-solve of a recorded backward (``"native"`` for the native backend's solutions,
    else ``"torch"``).
    """

    @staticmethod
    def forward(Q, q, G, h, A, b, x, lam, nu, kind="torch"):
        return 0.5 * _dot(x, mv(Q, x)) + _dot(q, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.kind = inputs[9] if len(inputs) > 9 else "torch"
        ctx.save_for_backward(*inputs[:9])
        ctx.save_for_forward(*inputs[:9])

    @staticmethod
    def backward(ctx, gv):
        Q, q, G, h, A, b, x, lam, nu = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled() and x.shape[0]:
            # create_graph=True: the formulas below on the graph need x*(θ), λ*(θ), ν*(θ).
            x, lam, nu = _on_graph(data_of(Q, q, G, h, A, b, x.shape[0]), x, lam, nu, ctx.kind)
        g = gv.unsqueeze(-1)  # (B, 1)
        gx = g * x
        grads = [None] * 9
        if need[0]:
            grads[0] = reduce_to(0.5 * outer(gx, x), Q)
        if need[1]:
            grads[1] = reduce_to(gx, q)
        if need[2]:
            grads[2] = reduce_to(outer(g * lam, x), G)
        if need[3]:
            grads[3] = reduce_to(-g * lam, h)
        if need[4]:
            grads[4] = reduce_to(outer(g * nu, x), A)
        if need[5]:
            grads[5] = reduce_to(-g * nu, b)
        return tuple(grads) + (None,)

    @staticmethod
    def jvp(ctx, dQ, dq, dG, dh, dA, db, *_):
        Q, q, G, h, A, b, x, lam, nu = ctx.saved_tensors
        dv = x.new_zeros(x.shape[0])
        if dQ is not None:
            dv = dv + 0.5 * _dot(x, mv(dQ, x))
        if dq is not None:
            dv = dv + _dot(dq.expand_as(x), x)
        if dG is not None:
            dv = dv + _dot(lam, mv(dG, x))
        if dh is not None:
            dv = dv - _dot(lam, dh.expand_as(lam))
        if dA is not None:
            dv = dv + _dot(nu, mv(dA, x))
        if db is not None:
            dv = dv - _dot(nu, db.expand_as(nu))
        return dv


def _on_graph(data, x, lam, nu, kind: str):
    """The solution (x, λ, ν) of ``data`` through :class:`QPSolutionMap`, so that it carries the
    implicit derivative: with the native K-solve for the native backend's solutions (where it is
    available), else a torch KKT factor of its active set. Failed problems enter as zeros (and get
    zero upstream gradients)."""
    plain = data.detach()
    mask = kkt.classify_active(lam, plain.h - mv(plain.G, x))
    if kind == "native" and native_solve_available(plain):
        # (The native kind's slots: no kept factor, the statuses — all "solved" here.)
        empty, solved = x.new_empty(0), torch.zeros(data.B, dtype=torch.int32, device=x.device)
        return QPSolutionMap.apply(*data.tensors(), x, lam, nu, mask, empty, solved, empty, "native")
    fac = kkt.factor(plain, mask, keep_matrix=False)
    return QPSolutionMap.apply(*data.tensors(), x, lam, nu, fac.mask, fac.lu, fac.pivots, fac.delta, "torch")


def qp_value(
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
    warm_start: QPSolution | torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, QPSolution]:
    """Optimal value of a batch of convex QPs, differentiable by the envelope theorem::

        V = min_x  ½ xᵀ Q x + qᵀ x    subject to   A x = b,   G x ≤ h

    Takes exactly the inputs and options of :func:`~optlayers.solve_qp` (same shapes, same
    broadcasting: data without batch dimensions, e.g. one ``G``, ``h`` for all problems, is
    shared, never copied, and gets the batch-summed gradient).

    Args:
        Q: (*, n, n) symmetric positive semidefinite, or ``None`` (an LP).
        q: (*, n).
        G, h: (*, m, n), (*, m) or both ``None``.
        A, b: (*, p, n), (*, p) or both ``None``.
        backend, on_failure, check_inputs, tol, max_iter, polish, warm_start: as in
            :func:`~optlayers.solve_qp` (``"osqp"`` included, without ``warm_start``; the data
            must be dense).
        return_solution: also return the :class:`~optlayers.QPSolution` (x, λ, ν, status,
            iterations). Its tensors are **not** differentiable (use ``solve_qp`` for ∂x/∂θ).

    Returns:
        ``V`` of shape ``(*)`` (a 0-dim tensor for one unbatched problem), or ``(V, solution)``.
        The constant part of a user's objective (e.g. ½‖w‖² in ½‖Wf − w‖²) is not included.

    Gradients (reverse and forward mode) come from the envelope theorem,
    ∇Q = ½xxᵀ, ∇q = x, ∇G = λxᵀ, ∇h = −λ, ∇A = νxᵀ, ∇b = −ν (times the upstream gradient):
    no linear solve, so the backward is much cheaper than differentiating x. Higher derivatives
    (``create_graph=True``: Hessians of V, Hessian-vector products) go through the implicit KKT
    derivative of x*, λ*, ν*: ∇²_q V = ∂x*/∂q. Under ``torch.func`` (``grad``, ``vmap``,
    ``hessian``, …) the same formulas apply (``optlayers/_src/qp/functional.py``). Failed
    problems: NaN value (with ``on_failure="nan"``) and zero gradient. See
    ``optlayers/_src/qp/value.py`` for the derivation.
    """
    options = QPOptions(tol=tol, max_iter=max_iter, polish=polish)
    policy = OnFailure.resolve(on_failure)
    sparse = [name for name, t in zip("QqGhAb", (Q, q, G, h, A, b)) if is_sparse(t)]
    if sparse:
        raise ValueError(
            f"qp_value takes dense tensors; {', '.join(sparse)} {'is' if len(sparse) == 1 else 'are'} sparse. "
            "Densify with .to_dense() (backend='osqp' also accepts dense data), or differentiate "
            "½xᵀQx + qᵀx through solve_qp's sparse route."
        )
    if functional.transformed(Q, q, G, h, A, b):  # inside torch.func.grad / vmap / hessian / …
        functional.refuse(backend, warm_start, [])
        config = functional.SolveConfig(Backend.resolve(backend), options, policy, check_inputs)
        value, x, lam, nu, status, iterations = functional.value(Q, q, G, h, A, b, config)
        if not return_solution:
            return value
        return value, QPSolution(x=x, lam=lam, nu=nu, status=status, iterations=iterations,
                                 backend=config.backend.value)
    data = canonicalize(Q, q, G, h, A, b, check_values=check_inputs)
    if Backend.resolve(backend) is Backend.OSQP:
        _refuse_sparse_warm_start(warm_start)
        raw, name = _solve_via_osqp(data, Q, q, G, h, A, b, tol, max_iter, polish)
    else:
        from optlayers._src.qp.api import _at_solution_scale

        scaled = scaling.plan(data)  # the solve sees the scaled data; the value is of the original
        work = data if scaled is None else scaled.apply(data)
        be = backends.select(backend, work)
        guess = None if warm_start is None else warm.guess_of(warm_start, work)
        with torch.no_grad():
            raw = be.solve(work.detach(), options) if guess is None else warm.solve(work.detach(), guess, be, options)
            redo = scaling.solution_scales(raw.x, raw.status, work)  # (as solve_qp: see scaling.py)
            x, lam, nu = (raw.x, raw.lam, raw.nu) if scaled is None else scaled.unscale(raw.x, raw.lam, raw.nu)
            if redo is not None:
                x, lam, nu, raw = _at_solution_scale(data.detach(), scaled, redo, be, options, guess, (x, lam, nu), raw)
            raw = dataclasses.replace(raw, x=x, lam=lam, nu=nu)
        name = be.name.value
    ok = (raw.status == Status.SOLVED).unsqueeze(-1)
    # Failed problems enter with a zero solution: finite value (NaN-filled by the policy below)
    # and zero gradient, so they leave shared-input batch sums untouched.
    x, lam, nu = (torch.where(ok, t, torch.zeros_like(t)) for t in (raw.x, raw.lam, raw.nu))
    value = QPOptimalValue.apply(*data.tensors(), x, lam, nu, "native" if name == "native" else "torch")

    shape = data.batch_shape
    # (as solve_qp: a problem the interior point could not finish may be provably infeasible)
    status = raw.status
    if name != "osqp":
        status = certificates.certify_failures(data.detach(), status, raw.iterations, max_iter)
    status = status.reshape(shape)
    (value,) = apply_failure_policy(status, (value.reshape(shape),), policy, what="QP")
    if not return_solution:
        return value
    x, lam, nu = (t.reshape(tuple(shape) + t.shape[-1:]) for t in (raw.x, raw.lam, raw.nu))
    x, lam, nu = apply_failure_policy(status, (x, lam, nu), policy, what="QP")
    solution = QPSolution(
        x=x, lam=lam, nu=nu, status=status, iterations=raw.iterations.reshape(shape), backend=name
    )
    return value, solution


def _solve_via_osqp(data, Q, q, G, h, A, b, tol, max_iter, polish):
    """The solution of dense data by the OSQP route of ``solve_qp``, flattened like a dense backend's."""
    from optlayers._src.qp.api import solve_qp
    from optlayers._src.qp.backends import RawSolution

    plain = [None if t is None else t.detach() for t in (Q, q, G, h, A, b)]
    with torch.no_grad():
        sol = solve_qp(*plain, backend="osqp", return_solution=True, on_failure="nan", check_inputs=False,
                       tol=tol, max_iter=max_iter, polish=polish)
    B = data.B
    x, lam, nu = (t.reshape(B, t.shape[-1]) for t in (sol.x, sol.lam, sol.nu))
    raw = RawSolution(x=x, lam=lam, nu=nu, status=sol.status.reshape(B), iterations=sol.iterations.reshape(B))
    return raw, sol.backend


__all__ = ["QPOptimalValue", "qp_value"]
