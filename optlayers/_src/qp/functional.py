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
  custom piece, the K-solve :class:`_KKTSolve` — itself vmappable (the same folding), and with a
  backward and a jvp that are K-solves again. So the derivatives compose: ``jacrev``,
  ``jacfwd``, ``hessian`` (= ``jacfwd(jacrev)``), ``jacrev(jacrev)``, ``jacrev(hessian)``, … —
  except forward over forward (``jacfwd(jacfwd)``, nested ``jvp``), which is refused (see
  :func:`_refuse_forward_over_forward`).

Cost of Jacobians: V cotangents (or tangents) over a batch of B problems make V·B right-hand
sides; :class:`_KKTSolve` factors and solves only the problems whose right-hand side is nonzero,
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
from optlayers._src.qp.backward import data_of, kkt_jvp, kkt_vjp, native_solve_available
from optlayers._src.qp.linalg import mv, outer
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import fill_absent
from optlayers._src.sparse.problem import broadcast_shapes
from optlayers._src.status import OnFailure
from optlayers._src.transforms import transformed

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


# ---------------------------------------------------------------------------------------------
# Folding a vmapped dimension into the batch.


def _logical_rank(t: torch.Tensor | None, dim: int | None, core: int) -> int:
    """Batch rank of ``t`` as the function under vmap sees it (without the vmapped dimension)."""
    if t is None:
        return 0
    return t.dim() - (dim is not None) - core


def _fold(tensors, dims, cores):
    """Move each vmapped dimension to the front and pad the batch with singleton dimensions to
    the problems' largest batch rank, so that the vmapped dimension becomes the leading batch
    dimension (unvmapped tensors broadcast against it as they are)."""
    rank = max(_logical_rank(t, d, c) for t, d, c in zip(tensors, dims, cores))
    out = []
    for t, d, c in zip(tensors, dims, cores):
        if t is None or d is None:
            out.append(t)
            continue
        t = t.movedim(d, 0)
        logical = t.shape[1:]
        out.append(t.reshape(t.shape[:1] + (1,) * (rank - (len(logical) - c)) + tuple(logical)))
    return out


# ---------------------------------------------------------------------------------------------
# Gathering the problems of a broadcast batch by index (plain tensors).


def _batch(t: torch.Tensor | None, core: int) -> tuple[int, ...]:
    return () if t is None else tuple(t.shape[: t.dim() - core])


def _flat_index(idx: torch.Tensor, S: tuple[int, ...], tb: tuple[int, ...]) -> torch.Tensor:
    """Indices into a tensor of batch shape ``tb`` (broadcastable to ``S``, right-aligned) of the
    problems ``idx`` of the flattened batch ``S`` (a broadcast dimension contributes 0)."""
    coords, rem = [], idx
    for size in reversed(S):
        coords.append(rem % size)
        rem = torch.div(rem, size, rounding_mode="floor")
    coords.reverse()
    flat, off = torch.zeros_like(idx), len(S) - len(tb)
    for i, size in enumerate(tb):
        flat = flat * size + (coords[off + i] if size != 1 else 0)
    return flat


def _rows(t: torch.Tensor, core: int, S: tuple[int, ...], idx: torch.Tensor) -> torch.Tensor:
    """The problems ``idx`` of ``t`` broadcast to the batch ``S``, as (k, *core) — without
    materializing the broadcast (the folded data of a vmapped Jacobian is V copies of the batch)."""
    tb = _batch(t, core)
    body = t.shape[t.dim() - core:]
    if not tb:
        return t.expand((idx.numel(),) + tuple(body))
    return t.reshape((math.prod(tb),) + tuple(body))[_flat_index(idx, S, tb)]


def _sum_rows(rows: torch.Tensor, idx: torch.Tensor, S: tuple[int, ...], target: tuple[int, ...], core: int):
    """Per-problem gradients ``rows`` (k, *core) of the problems ``idx`` summed into a tensor of
    shape ``target`` (batch dims broadcastable to ``S``): zero for the other problems."""
    tb = tuple(target[: len(target) - core])
    out = rows.new_zeros((math.prod(tb),) + tuple(target[len(tb):]))
    out.index_add_(0, _flat_index(idx, S, tb), rows)
    return out.reshape(target)


def _bdot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(-1)


def _bmv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``M v`` with broadcasting batch dimensions."""
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def _bmtv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Mᵀ v`` with broadcasting batch dimensions."""
    return (v.unsqueeze(-2) @ M).squeeze(-2)


def _refuse_forward_over_forward() -> None:
    """Raise where a jvp rule runs inside another forward-mode transform (``jacfwd(jacfwd(·))``,
    nested ``torch.func.jvp``): there PyTorch returns wrong higher derivatives through any
    ``autograd.Function`` (pytorch/pytorch#197867, open: "Nested jacfwd returns incorrect higher
    derivatives through autograd.Function"; measured here: vᵀHv 1483 instead of 4208 on a test
    map), so we refuse it.
    ``jacfwd(jacrev(·))`` (= ``torch.func.hessian``), ``jacrev(jacrev(·))`` and
    ``jacrev(jacfwd(·))`` are exact."""
    stack = torch._C._functorch.get_interpreter_stack() or []
    jvp = torch._C._functorch.TransformType.Jvp
    if sum(1 for level in stack if level.key() == jvp) > 1:
        raise RuntimeError(
            "optlayers: forward-over-forward differentiation (jacfwd(jacfwd(·)), nested torch.func.jvp) "
            "of solve_qp is not supported; use torch.func.hessian (= jacfwd(jacrev(·))), "
            "jacrev(jacrev(·)) or torch.autograd with create_graph=True"
        )


class _KKTSolve(torch.autograd.Function):
    """``(Q, G, A, mask, r; native) ↦ u = K⁻¹ r``, K the active-set KKT matrix of ``kkt.py`` (mask
    held fixed; ``native``: the C++ solve where available, else a torch factor), with broadcasting
    batch dimensions: Q (…, n, n), G (…, m, n), A (…, p, n), mask (…, m),
    r (…, n+m+p). Differentiable to any order under autograd and ``torch.func``: its derivatives
    are solves with K again through this map (``backward.py``'s module docstring); its ``vmap``
    rule moves the vmapped dimension into the batch.

    Only the problems whose right-hand side is nonzero are factored and solved (u = 0 for the
    others), gathered by index without materializing the broadcast: the basis (co)tangents of a
    ``jacrev``/``jacfwd`` over B problems with n entries make B·n right-hand sides for B problems,
    each nonzero for one problem only — B·n solves, not B²·n."""

    @staticmethod
    def forward(Q, G, A, mask, rhs, native=True):
        S = tuple(broadcast_shapes(_batch(Q, 2), _batch(G, 2), _batch(A, 2), _batch(mask, 1), _batch(rhs, 1)))
        live = (rhs != 0).any(-1).expand(S).reshape(-1)
        idx = torch.nonzero(live).squeeze(-1)
        k, n, m, p = idx.numel(), Q.shape[-1], G.shape[-2], A.shape[-2]
        zeros = rhs.new_zeros(k, n + m + p)
        # (A matrix without batch dimensions stays shared: one copy, as everywhere in the package.)
        Qk, Gk, Ak = (M if M.dim() == 2 else _rows(M, 2, S, idx) for M in (Q, G, A))
        sub = data_of(Qk, zeros[:, :n], Gk, zeros[:, n:n + m], Ak, zeros[:, n + m:], k)
        sub_mask, sub_rhs = _rows(mask, 1, S, idx), _rows(rhs, 1, S, idx)
        if native and native_solve_available(sub):
            from optlayers._src.native import ops

            u = ops.kkt_solve(sub, sub_mask, sub_rhs.contiguous())
        else:
            u = kkt.solve(sub, kkt.factor(sub, sub_mask, keep_matrix=False), sub_rhs)
        return _sum_rows(u, idx, S, S + (rhs.shape[-1],), 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.native = inputs[5] if len(inputs) > 5 else True
        ctx.save_for_backward(*inputs[:4], output)
        ctx.save_for_forward(*inputs[:4], output)

    @staticmethod
    def backward(ctx, gu):
        Q, G, A, mask, u = ctx.saved_tensors
        w = _KKTSolve.apply(Q, G, A, mask, gu, ctx.native)
        n, m = Q.shape[-1], G.shape[-2]
        ux, ul, un = u[..., :n], mask * u[..., n:n + m], u[..., n + m:]
        wx, wl, wn = w[..., :n], mask * w[..., n:n + m], w[..., n + m:]
        need = ctx.needs_input_grad
        gQ = (-0.5 * (outer(wx, ux) + outer(ux, wx))).sum_to_size(Q.shape) if need[0] else None
        gG = (-(outer(ul, wx) + outer(wl, ux))).sum_to_size(G.shape) if need[1] else None
        gA = (-(outer(un, wx) + outer(wn, ux))).sum_to_size(A.shape) if need[2] else None
        return gQ, gG, gA, None, w, None

    @staticmethod
    def jvp(ctx, dQ, dG, dA, _dmask, drhs, *_):
        _refuse_forward_over_forward()
        Q, G, A, mask, u = ctx.saved_tensors
        n, m = Q.shape[-1], G.shape[-2]
        ux, ul, un = u[..., :n], mask * u[..., n:n + m], u[..., n + m:]
        top, mid, bot = torch.zeros_like(ux), torch.zeros_like(ul), torch.zeros_like(un)
        if dQ is not None:
            top = top + _bmv(dQ, ux)
        if dG is not None:
            top = top + _bmtv(dG, ul)
            mid = mid + mask * _bmv(dG, ux)
        if dA is not None:
            top = top + _bmtv(dA, un)
            bot = bot + _bmv(dA, ux)
        r = -torch.cat([top, mid, bot], -1)  # d(K u) = dK u + K du = dr
        if drhs is not None:
            r = r + drhs
        return _KKTSolve.apply(Q, G, A, mask, r, ctx.native)

    @staticmethod
    def vmap(info, in_dims, Q, G, A, mask, rhs, native=True):
        folded = _fold((Q, G, A, mask, rhs), in_dims[:5], (2, 2, 2, 1, 1))
        return _KKTSolve.apply(*folded, native), 0


def _canonical(t: torch.Tensor, core: int, S: tuple[int, ...]) -> torch.Tensor:
    """``t`` (batch dims broadcastable to S) in the canonical layout of ``problem.py``: (B, *core)
    when it has batch dimensions beyond ones, else shared (*core)."""
    tb, body = _batch(t, core), tuple(t.shape[t.dim() - core:])
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
        return _KKTSolve.apply(data.Q, data.G, data.A, mask, rhs, native)

    return data, sol, ok, mask, solve, S


# ---------------------------------------------------------------------------------------------
# The solution map and the optimal value.


class SolveQPFunction(torch.autograd.Function):
    """``(Q, q, G, h, A, b; config) ↦ (x, λ, ν, status, iterations)`` for ``torch.func``. The
    backward and the JVP are ``backward.kkt_vjp``/``kkt_jvp`` in torch ops on the canonical data,
    with :class:`_KKTSolve` for the solves and the saved outputs for the solution — so they are
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
        _refuse_forward_over_forward()
        saved = ctx.saved_tensors
        data, sol, ok, mask, solve, S = _prepared(saved, ctx.native)
        tangents = [None if d is None else _canonical(d, c, S) for d, c in zip((dQ, dq, dG, dh, dA, db), _CORE)]
        out = kkt_jvp(data, *sol, mask, tangents, solve)
        return tuple(torch.where(ok, o, 0.0).reshape(t.shape) for o, t in zip(out, saved[6:9])) + (None, None)

    @staticmethod
    def vmap(info, in_dims, Q, q, G, h, A, b, config):
        folded = _fold((Q, q, G, h, A, b), in_dims[:6], _CORE)
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
        v = _bdot(q, xs) if Q is None else 0.5 * _bdot(xs, _bmv(Q, xs)) + _bdot(q, xs)
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
            dv = dv + 0.5 * _bdot(xs, _bmv(dQ, xs))
        if dq is not None:
            dv = dv + _bdot(dq, xs)
        if dG is not None:
            dv = dv + _bdot(ls, _bmv(dG, xs))
        if dh is not None:
            dv = dv - _bdot(ls, dh)
        if dA is not None:
            dv = dv + _bdot(ns, _bmv(dA, xs))
        if db is not None:
            dv = dv - _bdot(ns, db)
        return torch.where(ok, dv, 0.0)


def solve(Q, q, G, h, A, b, config: SolveConfig):
    """(x, λ, ν, status, iterations) of ``solve_qp`` under a transform."""
    return SolveQPFunction.apply(Q, q, G, h, A, b, config)


def value(Q, q, G, h, A, b, config: SolveConfig):
    """(V, x, λ, ν, status, iterations) of ``qp_value`` under a transform."""
    x, lam, nu, status, iterations = SolveQPFunction.apply(Q, q, G, h, A, b, config)
    return _QPValue.apply(Q, q, G, h, A, b, x, lam, nu, status), x, lam, nu, status, iterations


__all__ = ["SolveConfig", "SolveQPFunction", "refuse", "solve", "transformed", "value"]
