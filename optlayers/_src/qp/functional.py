"""``solve_qp`` and ``qp_value`` under ``torch.func`` transforms (``grad``, ``vjp``, ``jacrev``,
``jvp``, ``jacfwd``, ``vmap``, ``hessian``, and compositions of them).

The solvers read their data (C++ ops, data-dependent stopping, per-problem statuses), which
functorch's wrapper tensors cannot give them. So when an input is wrapped by a transform,
``solve_qp`` goes through :class:`SolveQPFunction` instead of its usual autograd plumbing:

- its ``forward`` runs the ordinary ``solve_qp`` on the plain tensors (functorch unwraps them
  before calling it), with the same backends, checks, scaling and failure policy;
- its ``vmap`` rule folds the vmapped dimension into the batch — the solver is batched anyway:
  ``vmap(f)(q)`` over V problems is *one* call with a leading batch dimension V, not V calls;
- its ``backward`` and ``jvp`` are the implicit KKT derivative of ``backward.py`` (``kkt_vjp``,
  ``kkt_jvp``) written in torch ops on the canonical data and on the saved solution, with one
  custom piece, the K-solve :class:`backward.KKTSolveMap` — itself vmappable (the same folding), and with a
  backward and a jvp that are K-solves again. So the derivatives compose: ``jacrev``,
  ``jacfwd``, ``hessian`` (= ``jacfwd(jacrev)``), ``jacrev(jacrev)``, ``jacrev(hessian)``, … —
  except forward over forward (``jacfwd(jacfwd)``, nested ``jvp``), which is refused (see
  :func:`transforms.refuse_forward_over_forward`).

Cost of Jacobians: V cotangents (or tangents) over a batch of B problems make V·B right-hand
sides; :class:`backward.KKTSolveMap` factors and solves only the problems whose right-hand side is nonzero,
gathered by index from the unexpanded data — for the basis vectors of a ``jacrev`` over B problems
with n entries, one problem each, so B·n solves, not B²·n (``jacrev`` at B = 64, n = 10: 314 ms
with all V·B solved, 36 ms with the live ones gathered from materialized copies, 9.2 ms now;
``benchmarks/func_transforms.py``).

Shapes are the user's (``(*, n)`` etc.; broadcasting as in ``solve_qp``); the gradient of an
input is summed over the batch dimensions it was broadcast along. Failed problems (statuses from
the plain solve) get zero derivatives. The optimal value (:class:`_QPValue`) has the envelope
gradient x*, λ*, ν* — the outputs of :class:`SolveQPFunction`, which carry its higher derivatives.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from optlayers._src.qp import kkt
from optlayers._src.qp.backward import KKTSolveMap, data_of, kkt_jvp, kkt_vjp
from optlayers._src.qp.batching import batch_dims, bdot, bmv, fold
from optlayers._src.qp.linalg import mv, outer
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import fill_absent
from optlayers._src.status import OnFailure
from optlayers._src.transforms import refuse_forward_over_forward, transformed

# Core (non-batch) dimensions of Q, q, G, h, A, b.
_CORE = (2, 1, 2, 1, 2, 1)


@dataclasses.dataclass(frozen=True)
class SolveConfig:
    """The options of one ``solve_qp``/``qp_value`` call (a non-tensor input of the Functions)."""

    backend: Backend
    options: QPOptions
    on_failure: OnFailure
    check_inputs: bool

    def solve(self, Q, q, G, h, A, b):
        from optlayers._src.qp.api import _solve_qp

        return _solve_qp(Q, q, G, h, A, b, self.backend, True, self.on_failure, self.check_inputs,
                         self.options, None)


def refuse(backend, warm_start, sparse_names) -> None:
    """Clear errors for what the torch.func path does not take."""
    if sparse_names:
        raise NotImplementedError(
            "solve_qp/qp_value under torch.func transforms take dense tensors; "
            f"{', '.join(sparse_names)} sparse"
        )
    if Backend.resolve(backend) is Backend.OSQP:
        raise NotImplementedError(
            "backend='osqp' is not supported under torch.func transforms; use a dense backend "
            "('auto', 'native', 'torch') or torch.autograd"
        )
    if warm_start is not None:
        raise NotImplementedError("warm_start is not supported under torch.func transforms")


def _canonical(t: torch.Tensor, core: int, S: tuple[int, ...]) -> torch.Tensor:
    """``t`` (batch dims broadcastable to S) in the canonical layout of ``problem.py``: (B, *core)
    when it has batch dimensions beyond ones, else shared (*core)."""
    tb, body = batch_dims(t, core), tuple(t.shape[t.dim() - core:])
    if math.prod(tb) == 1:
        return t.reshape(body)
    return t.expand(S + body).reshape((math.prod(S),) + body)


def _to_input(g: torch.Tensor, t: torch.Tensor, core: int, S: tuple[int, ...]) -> torch.Tensor:
    """A canonical gradient ((B, *core), or (*core) where already summed) in the shape of ``t``."""
    if g.dim() > core:
        g = g.reshape(S + tuple(g.shape[1:]))
    return g.sum_to_size(t.shape) if g.dim() >= t.dim() else g.reshape(t.shape)


def _prepared(saved, native: bool):
    """Canonical data, the solution with failed problems zeroed, the ok mask, the active set and
    the differentiable K-solve, from ``SolveQPFunction``'s saved tensors (user shapes)."""
    Q, q, G, h, A, b, x, lam, nu, status = saved
    S = tuple(status.shape)
    B = math.prod(S)
    data = data_of(*(_canonical(t, c, S) for t, c in zip(fill_absent(Q, q, G, h, A, b), _CORE)), B)
    ok = (status.reshape(B) == 0).unsqueeze(-1)
    sol = [torch.where(ok, t.reshape(B, t.shape[-1]), 0.0) for t in (x, lam, nu)]
    mask = kkt.classify_active(sol[1].detach(), (data.h - mv(data.G, sol[0])).detach())

    def solve(rhs: torch.Tensor) -> torch.Tensor:
        return KKTSolveMap.apply(data.Q, data.G, data.A, mask, rhs, native)

    return data, sol, ok, mask, solve, S


# ---------------------------------------------------------------------------------------------
# The solution map and the optimal value.


class SolveQPFunction(torch.autograd.Function):
    """``(Q, q, G, h, A, b; config) ↦ (x, λ, ν, status, iterations)`` for ``torch.func``. The
    backward and the JVP are ``backward.kkt_vjp``/``kkt_jvp`` in torch ops on the canonical data,
    with :class:`backward.KKTSolveMap` for the solves and the saved outputs for the solution — so they are
    differentiable (and vmappable) again, to any order."""

    @staticmethod
    def forward(Q, q, G, h, A, b, config: SolveConfig):
        with torch.no_grad():
            sol = config.solve(Q, q, G, h, A, b)
        return sol.x, sol.lam, sol.nu, sol.status, sol.iterations

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, lam, nu, status, iterations = output
        ctx.mark_non_differentiable(status, iterations)
        ctx.native = inputs[6].backend is not Backend.TORCH  # the torch backend keeps torch solves
        # Unused outputs give None, not zeros: _QPValue's backward does not differentiate x.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs[:6], x, lam, nu, status)
        ctx.save_for_forward(*inputs[:6], x, lam, nu, status)

    @staticmethod
    def backward(ctx, gx, glam, gnu, _gstatus, _giterations):
        saved = ctx.saved_tensors
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:6])
        if not any(needs) or (gx is None and glam is None and gnu is None):
            return (None,) * 7
        data, sol, ok, mask, solve, S = _prepared(saved, ctx.native)
        B = data.B
        cot = [torch.zeros_like(t) if g is None else torch.where(ok, g.expand(S + t.shape[-1:]).reshape(B, -1), 0.0)
               for g, t in zip((gx, glam, gnu), sol)]
        grads = kkt_vjp(data, *sol, mask, *cot, solve, needs)
        return tuple(None if g is None else _to_input(g, t, c, S)
                     for g, t, c in zip(grads, saved[:6], _CORE)) + (None,)

    @staticmethod
    def jvp(ctx, dQ, dq, dG, dh, dA, db, _config):
        refuse_forward_over_forward()
        saved = ctx.saved_tensors
        data, sol, ok, mask, solve, S = _prepared(saved, ctx.native)
        tangents = [None if d is None else _canonical(d, c, S) for d, c in zip((dQ, dq, dG, dh, dA, db), _CORE)]
        out = kkt_jvp(data, *sol, mask, tangents, solve)
        return tuple(torch.where(ok, o, 0.0).reshape(t.shape) for o, t in zip(out, saved[6:9])) + (None, None)

    @staticmethod
    def vmap(info, in_dims, Q, q, G, h, A, b, config):
        folded = fold((Q, q, G, h, A, b), in_dims[:6], _CORE)
        return SolveQPFunction.apply(*folded, config), (0, 0, 0, 0, 0)


class _QPValue(torch.autograd.Function):
    """``(Q, q, G, h, A, b, x*, λ*, ν*, status) ↦ V = ½x*ᵀQx* + qᵀx*`` (NaN for failed problems)
    with the envelope derivative of ``value.py``, in the user's shapes. The solution inputs come
    from :class:`SolveQPFunction` and get no gradient of their own; the backward's use of them
    is what carries second derivatives (∇²_q V = ∂x*/∂q). Torch ops only: vmap is generated."""

    generate_vmap_rule = True

    @staticmethod
    def forward(Q, q, G, h, A, b, x, lam, nu, status):
        ok = status == 0
        xs = torch.where(ok.unsqueeze(-1), x, 0.0)
        v = bdot(q, xs) if Q is None else 0.5 * bdot(xs, bmv(Q, xs)) + bdot(q, xs)
        return torch.where(ok, v, float("nan"))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
        ctx.absent = tuple(t is None for t in inputs[:6])

    @staticmethod
    def backward(ctx, gv):
        Q, q, G, h, A, b, x, lam, nu, status = ctx.saved_tensors
        ok = status == 0
        g = torch.where(ok, gv, 0.0).unsqueeze(-1)
        xs, ls, ns = (torch.where(ok.unsqueeze(-1), t, 0.0) for t in (x, lam, nu))
        need = ctx.needs_input_grad
        grads = [None] * 10
        if need[0]:
            grads[0] = (0.5 * outer(g * xs, xs)).sum_to_size(Q.shape)
        if need[1]:
            grads[1] = (g * xs).sum_to_size(q.shape)
        if need[2]:
            grads[2] = outer(g * ls, xs).sum_to_size(G.shape)
        if need[3]:
            grads[3] = (-g * ls).sum_to_size(h.shape)
        if need[4]:
            grads[4] = outer(g * ns, xs).sum_to_size(A.shape)
        if need[5]:
            grads[5] = (-g * ns).sum_to_size(b.shape)
        return tuple(grads)

    @staticmethod
    def jvp(ctx, dQ, dq, dG, dh, dA, db, *_):
        Q, q, G, h, A, b, x, lam, nu, status = ctx.saved_tensors
        ok = status == 0
        xs, ls, ns = (torch.where(ok.unsqueeze(-1), t, 0.0) for t in (x, lam, nu))
        dv = torch.zeros_like(ok, dtype=x.dtype)
        if dQ is not None:
            dv = dv + 0.5 * bdot(xs, bmv(dQ, xs))
        if dq is not None:
            dv = dv + bdot(dq, xs)
        if dG is not None:
            dv = dv + bdot(ls, bmv(dG, xs))
        if dh is not None:
            dv = dv - bdot(ls, dh)
        if dA is not None:
            dv = dv + bdot(ns, bmv(dA, xs))
        if db is not None:
            dv = dv - bdot(ns, db)
        return torch.where(ok, dv, 0.0)


def solve(Q, q, G, h, A, b, config: SolveConfig):
    """(x, λ, ν, status, iterations) of ``solve_qp`` under a transform."""
    return SolveQPFunction.apply(Q, q, G, h, A, b, config)


def value(Q, q, G, h, A, b, config: SolveConfig):
    """(V, x, λ, ν, status, iterations) of ``qp_value`` under a transform."""
    x, lam, nu, status, iterations = SolveQPFunction.apply(Q, q, G, h, A, b, config)
    return _QPValue.apply(Q, q, G, h, A, b, x, lam, nu, status), x, lam, nu, status, iterations


__all__ = ["SolveConfig", "SolveQPFunction", "refuse", "solve", "transformed", "value"]
