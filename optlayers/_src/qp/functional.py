"""``solve_qp`` and ``qp_value`` under ``torch.func`` transforms (``grad``, ``vjp``, ``jacrev``,
``jvp``, ``jacfwd``, ``vmap``, and ``hessian`` of the optimal value).

The solvers read their data (C++ ops, data-dependent stopping, per-problem statuses), which
functorch's wrapper tensors cannot give them. So when an input is wrapped by a transform,
``solve_qp`` goes through :class:`SolveQPFunction` instead of its usual autograd plumbing:

- its ``forward`` runs the ordinary ``solve_qp`` on the plain tensors (functorch unwraps them
  before calling it), with the same backends, checks, scaling and failure policy;
- its ``vmap`` rule folds the vmapped dimension into the batch — the solver is batched anyway:
  ``vmap(f)(q)`` over V problems is *one* call with a leading batch dimension V, not V calls;
- its ``backward`` and ``jvp`` are the implicit KKT derivative of ``backward.py`` (``kkt_vjp``,
  ``kkt_jvp``, a torch factor of the active-set KKT matrix), wrapped in two more Functions
  (:class:`_QPVJP`, :class:`_QPJVP`) with the same folding ``vmap`` rule, so that ``jacrev``
  (a vmapped backward) and ``jacfwd`` (a vmapped jvp) batch their cotangents or tangents into one
  call as well. V cotangents of a batch of B problems make V·B problems, but only those whose
  cotangent is nonzero are gathered (by index, from the unexpanded data) and solved — for the
  basis vectors of a ``jacrev`` that is one problem each, so a Jacobian of B problems with n
  outputs costs B·n KKT solves, not B²·n (``jacrev`` at B = 64, n = 10: 314 ms with all V·B
  solved, 36 ms with the live ones taken from materialized copies, 9.4 ms now).

Shapes are the user's (``(*, n)`` etc.; broadcasting as in ``solve_qp``); the gradient of an
input is summed over the batch dimensions it was broadcast along. Failed problems (statuses
from the plain solve) get zero derivatives. Second derivatives of ``x`` under ``torch.func`` are
not supported (:class:`_QPVJP`/:class:`_QPJVP` say so when asked); those of the optimal value
are — its gradient is x*, λ*, ν* themselves (:class:`_QPValue`). Plain autograd
(``create_graph=True``) differentiates ``x`` to any order (``backward.py``).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from optlayers._src.qp import kkt
from optlayers._src.qp.backward import data_of, kkt_jvp, kkt_vjp
from optlayers._src.qp.linalg import mv, outer
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import fill_absent
from optlayers._src.sparse.problem import broadcast_shapes
from optlayers._src.status import OnFailure
from optlayers._src.transforms import transformed

# Core (non-batch) dimensions of Q, q, G, h, A, b.
_CORE = (2, 1, 2, 1, 2, 1)
# ... and of the solution (x, λ, ν), the status, and the cotangents/tangents of (x, λ, ν).
_SOLUTION_CORE = (1, 1, 1, 0)

_NO_SECOND = (
    "optlayers: second derivatives of solve_qp's solution under torch.func transforms are not "
    "supported ({}); use torch.autograd (create_graph=True, torch.autograd.functional.hessian), "
    "which differentiates solve_qp to any order. The optimal value (qp_value) has torch.func "
    "Hessians."
)


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


def _fold(tensors, dims, cores, V: int, expand: bool, rank: int | None = None):
    """Move each vmapped dimension to the front and pad the batch with singleton dimensions to
    the problems' batch rank (``rank``, by default the largest of the tensors'), so that the
    vmapped dimension becomes the leading batch dimension. ``expand``: give unvmapped tensors the
    leading dimension too (a copy-free expand)."""
    if rank is None:
        rank = max(_logical_rank(t, d, c) for t, d, c in zip(tensors, dims, cores))
    out = []
    for t, d, c in zip(tensors, dims, cores):
        if t is None or (d is None and not expand):
            out.append(t)
            continue
        t = t.unsqueeze(0).expand(V, *t.shape) if d is None else t.movedim(d, 0)
        logical = t.shape[1:]
        pad = rank - (len(logical) - c)
        out.append(t.reshape((V,) + (1,) * pad + tuple(logical)))
    return out


def _logical_shape(t: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    shape = list(t.shape)
    if dim is not None:
        del shape[dim]
    return tuple(shape)


# ---------------------------------------------------------------------------------------------
# The implicit derivative in the user's shapes (plain tensors).


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


def _live(status: torch.Tensor, vectors, S: tuple[int, ...]) -> torch.Tensor:
    """(k,) indices (into the flattened batch S) of the problems that solved and have a nonzero
    (co)tangent among ``vectors`` ((*, ·) each, broadcastable to S). The others get zero
    derivatives without a KKT solve — which keeps ``jacrev``/``jacfwd`` of a batch linear in its
    size: each of their B·n basis (co)tangents is nonzero for one problem only."""
    live = (status == 0).expand(S)
    nonzero = torch.zeros_like(live)
    for v in vectors:
        if v.numel():
            nonzero = nonzero | (v.abs().amax(-1) > 0).expand(S)
    return torch.nonzero((live & nonzero).reshape(-1)).squeeze(-1)


def _subproblems(inputs, solution, S, idx):
    """The problems ``idx`` of the batch ``S`` as canonical per-problem data (k, …), their
    solution, active set and a K-solve with a torch factor of its KKT matrix."""
    k = idx.numel()
    sub = data_of(*(_rows(t, c, S, idx) for t, c in zip(fill_absent(*inputs), _CORE)), k)
    sol = [_rows(t, 1, S, idx) for t in solution]
    mask = kkt.classify_active(sol[1], sub.h - mv(sub.G, sol[0]))
    fac = kkt.factor(sub, mask, keep_matrix=False)
    return sub, sol, mask, lambda rhs: kkt.solve(sub, fac, rhs)


def _batch_shape(tensors, cores) -> tuple[int, ...]:
    return tuple(broadcast_shapes(*(_batch(t, c) for t, c in zip(tensors, cores))))


class _DerivativeFunction(torch.autograd.Function):
    """Base of :class:`_QPVJP` and :class:`_QPJVP`: functions of a first derivative that are not
    differentiated again (under torch.func; plain autograd uses ``backward.py``'s maps)."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_SECOND.format("reverse mode over a first derivative"))

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_NO_SECOND.format("forward mode over a first derivative"))


class _QPVJP(_DerivativeFunction):
    """``(data, solution, status, cotangents; needs) ↦`` the gradients of the inputs marked in
    ``needs``, each summed to its input's shape (``backward.kkt_vjp``). Vmappable by folding."""

    @staticmethod
    def forward(Q, q, G, h, A, b, x, lam, nu, status, gx, glam, gnu, needs, targets=None):
        inputs = (Q, q, G, h, A, b)
        targets = targets or tuple(None if t is None else t.shape for t in inputs)
        tensors = inputs + (x, lam, nu, status, gx, glam, gnu)
        S = _batch_shape(tensors, _CORE + _SOLUTION_CORE + (1, 1, 1))
        S = tuple(broadcast_shapes(S, *(t[: len(t) - c] for t, c in zip(targets, _CORE) if t is not None)))
        cot = [t.new_zeros(t.shape[-1]) if g is None else g for g, t in ((gx, x), (glam, lam), (gnu, nu))]
        idx = _live(status, cot, S)
        sub, sol, mask, solve = _subproblems(inputs, (x, lam, nu), S, idx)
        grads = kkt_vjp(sub, *sol, mask, *(_rows(c, 1, S, idx) for c in cot), solve, needs)
        return tuple(_sum_rows(g, idx, S, tuple(target), c)
                     for g, target, need, c in zip(grads, targets, needs, _CORE) if need)

    @staticmethod
    def vmap(info, in_dims, Q, q, G, h, A, b, x, lam, nu, status, gx, glam, gnu, needs, targets=None):
        V = info.batch_size
        tensors = (Q, q, G, h, A, b, x, lam, nu, status, gx, glam, gnu)
        cores = _CORE + _SOLUTION_CORE + (1, 1, 1)
        # Each vmapped slice gets its own gradient of every input (vmapped or not): shape (V, …) +
        # the gradient's shape at this level — the input's, or the target handed down by an inner
        # vmap (nested transforms, e.g. vmap(jacrev(f))).
        shapes = [None if t is None else tuple(targets[i]) if targets and targets[i] is not None
                  else _logical_shape(t, d) for i, (t, d) in enumerate(zip(tensors[:6], in_dims[:6]))]
        rank = max([_logical_rank(t, d, c) for t, d, c in zip(tensors, in_dims[:13], cores)]
                   + [len(s) - c for s, c in zip(shapes, _CORE) if s is not None])
        folded = _fold(tensors, in_dims[:13], cores, V, expand=False, rank=rank)
        targets = tuple(None if s is None else (V,) + (1,) * (rank - (len(s) - c)) + s for s, c in zip(shapes, _CORE))
        grads = _QPVJP.apply(*folded, needs, targets)
        kept = [s for s, need in zip(shapes, needs) if need]
        out = tuple(g.reshape((V,) + s) for g, s in zip(grads, kept))
        return out, (0,) * len(out)


class _QPJVP(_DerivativeFunction):
    """``(data, solution, status, tangents of the data) ↦ (dx, dλ, dν)`` (``backward.kkt_jvp``),
    in the solution's shapes. Vmappable by folding."""

    @staticmethod
    def forward(Q, q, G, h, A, b, x, lam, nu, status, dQ, dq, dG, dh, dA, db):
        inputs = (Q, q, G, h, A, b)
        tangents = (dQ, dq, dG, dh, dA, db)
        tensors = inputs + (x, lam, nu, status) + tangents
        S = _batch_shape(tensors, _CORE + _SOLUTION_CORE + _CORE)
        idx = _live(status, [d.flatten(d.dim() - c) for d, c in zip(tangents, _CORE) if d is not None], S)
        sub, sol, mask, solve = _subproblems(inputs, (x, lam, nu), S, idx)
        out = kkt_jvp(sub, *sol, mask, [None if d is None else _rows(d, c, S, idx) for d, c in zip(tangents, _CORE)], solve)
        return tuple(_sum_rows(o, idx, S, S + (o.shape[-1],), 1) for o in out)

    @staticmethod
    def vmap(info, in_dims, *tensors):
        cores = _CORE + _SOLUTION_CORE + _CORE
        folded = _fold(tensors, in_dims, cores, info.batch_size, expand=False)
        return _QPJVP.apply(*folded), (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# The solution map and the optimal value.


class SolveQPFunction(torch.autograd.Function):
    """``(Q, q, G, h, A, b; config) ↦ (x, λ, ν, status, iterations)`` for ``torch.func``."""

    @staticmethod
    def forward(Q, q, G, h, A, b, config: SolveConfig):
        with torch.no_grad():
            sol = config.solve(Q, q, G, h, A, b)
        return sol.x, sol.lam, sol.nu, sol.status, sol.iterations

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, lam, nu, status, iterations = output
        ctx.mark_non_differentiable(status, iterations)
        # Unused outputs give None, not zeros: _QPValue's backward does not differentiate x, and
        # a call of _QPVJP on zeros would still be differentiated by an outer jacfwd (hessian).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs[:6], x, lam, nu, status)
        ctx.save_for_forward(*inputs[:6], x, lam, nu, status)

    @staticmethod
    def backward(ctx, gx, glam, gnu, _gstatus, _giterations):
        saved = ctx.saved_tensors
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:6])
        if not any(needs) or (gx is None and glam is None and gnu is None):
            return (None,) * 7
        grads = iter(_QPVJP.apply(*saved, gx, glam, gnu, needs))
        return tuple(next(grads) if need else None for need in needs) + (None,)

    @staticmethod
    def jvp(ctx, dQ, dq, dG, dh, dA, db, _config):
        dx, dlam, dnu = _QPJVP.apply(*ctx.saved_tensors, dQ, dq, dG, dh, dA, db)
        return dx, dlam, dnu, None, None

    @staticmethod
    def vmap(info, in_dims, Q, q, G, h, A, b, config):
        folded = _fold((Q, q, G, h, A, b), in_dims[:6], _CORE, info.batch_size, expand=False)
        return SolveQPFunction.apply(*folded, config), (0, 0, 0, 0, 0)


def _bdot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(-1)


def _bmv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (M @ v.unsqueeze(-1)).squeeze(-1)


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
