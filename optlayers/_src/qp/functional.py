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
  call as well. There the data is expanded for every vmapped cotangent (views: V cotangents of a
  batch of B problems are V·B problems), and only the problems whose cotangent is nonzero are
  solved — for the basis vectors of a ``jacrev`` that is one problem each, so a Jacobian of B
  problems with n outputs costs B·n KKT solves, not B²·n (``jacrev`` at B = 64, n = 10: 314 → 29 ms).

Shapes are the user's (``(*, n)`` etc.; broadcasting as in ``solve_qp``); the gradient of an
input is summed over the batch dimensions it was broadcast along. Failed problems (statuses
from the plain solve) get zero derivatives. Second derivatives of ``x`` under ``torch.func`` are
not supported (:class:`_QPVJP`/:class:`_QPJVP` say so when asked); those of the optimal value
are — its gradient is x*, λ*, ν* themselves (:class:`_QPValue`). Plain autograd
(``create_graph=True``) differentiates ``x`` to any order (``backward.py``).
"""

from __future__ import annotations

import dataclasses

import torch

from optlayers._src.qp import kkt
from optlayers._src.qp.backward import data_of, kkt_jvp, kkt_vjp
from optlayers._src.qp.linalg import expand_mat, expand_vec, mv, outer
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import canonicalize
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


def _fold(tensors, dims, cores, V: int, expand: bool):
    """Move each vmapped dimension to the front and pad the batch with singleton dimensions to
    the problems' batch rank, so that the vmapped dimension becomes the leading batch dimension.
    ``expand``: give unvmapped tensors the leading dimension too (a copy-free expand) — needed
    where each vmapped slice must get its own result (gradients of shared inputs)."""
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


def _live(status: torch.Tensor, vectors, B: int) -> torch.Tensor:
    """(k,) indices of the problems that solved and have a nonzero (co)tangent among ``vectors``
    ((B, ·) each). The others get zero derivatives without a KKT solve — which is what keeps
    ``jacrev``/``jacfwd`` of a batch linear in its size: each of their B·n basis (co)tangents is
    nonzero for one problem only, while the folded batch holds B·n copies of all B problems."""
    live = status.reshape(B) == 0
    nonzero = torch.zeros_like(live)
    for v in vectors:
        if v.numel():
            nonzero |= v.reshape(B, -1).abs().amax(-1) > 0
    return torch.nonzero(live & nonzero).squeeze(-1)


def _subproblems(data, idx, x, lam, nu):
    """The problems ``idx`` with every field per problem ((k, …) views of shared fields), their
    solution, active set and a K-solve with a torch factor of its KKT matrix."""
    sub = data.take(idx)
    k = idx.numel()
    sub = data_of(expand_mat(sub.Q, k), expand_vec(sub.q, k), expand_mat(sub.G, k),
                  expand_vec(sub.h, k), expand_mat(sub.A, k), expand_vec(sub.b, k), k)
    sol = [t.reshape(data.B, t.shape[-1])[idx] for t in (x, lam, nu)]
    mask = kkt.classify_active(sol[1], sub.h - mv(sub.G, sol[0]))
    fac = kkt.factor(sub, mask, keep_matrix=False)
    return sub, sol, mask, lambda rhs: kkt.solve(sub, fac, rhs)


def _scatter(rows: torch.Tensor, idx: torch.Tensor, B: int) -> torch.Tensor:
    """(B, …) zeros with ``rows`` (k, …) at ``idx``."""
    out = rows.new_zeros((B,) + rows.shape[1:])
    out[idx] = rows
    return out


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
    def forward(Q, q, G, h, A, b, x, lam, nu, status, gx, glam, gnu, needs):
        inputs = (Q, q, G, h, A, b)
        data = canonicalize(Q, q, G, h, A, b, check_values=False)
        B, S = data.B, tuple(data.batch_shape)
        cot = [t.new_zeros(B, t.shape[-1]) if g is None else g.expand(*S, t.shape[-1]).reshape(B, -1)
               for g, t in ((gx, x), (glam, lam), (gnu, nu))]
        idx = _live(status, cot, B)
        sub, sol, mask, solve = _subproblems(data, idx, x, lam, nu)
        grads = kkt_vjp(sub, *sol, mask, *(c[idx] for c in cot), solve, needs)
        return tuple(_scatter(g, idx, B).reshape(S + g.shape[1:]).sum_to_size(t.shape)
                     for g, t, need in zip(grads, inputs, needs) if need)

    @staticmethod
    def vmap(info, in_dims, Q, q, G, h, A, b, x, lam, nu, status, gx, glam, gnu, needs):
        tensors = (Q, q, G, h, A, b, x, lam, nu, status, gx, glam, gnu)
        folded = _fold(tensors, in_dims[:13], _CORE + _SOLUTION_CORE + (1, 1, 1), info.batch_size, expand=True)
        grads = _QPVJP.apply(*folded, needs)
        shapes = [_logical_shape(t, d) for t, d, need in zip(tensors[:6], in_dims[:6], needs) if need]
        out = tuple(g.reshape((info.batch_size,) + s) for g, s in zip(grads, shapes))
        return out, (0,) * len(out)


class _QPJVP(_DerivativeFunction):
    """``(data, solution, status, tangents of the data) ↦ (dx, dλ, dν)`` (``backward.kkt_jvp``),
    in the solution's shapes. Vmappable by folding."""

    @staticmethod
    def forward(Q, q, G, h, A, b, x, lam, nu, status, dQ, dq, dG, dh, dA, db):
        data = canonicalize(Q, q, G, h, A, b, check_values=False)
        B, S = data.B, tuple(data.batch_shape)
        tangents = []
        for d, c in zip((dQ, dq, dG, dh, dA, db), _CORE):
            tangents.append(None if d is None else d.expand(S + d.shape[d.dim() - c:]).reshape((B,) + d.shape[d.dim() - c:]))
        idx = _live(status, [t for t in tangents if t is not None], B)
        sub, sol, mask, solve = _subproblems(data, idx, x, lam, nu)
        out = kkt_jvp(sub, *sol, mask, [None if t is None else t[idx] for t in tangents], solve)
        return tuple(_scatter(o, idx, B).reshape(t.shape) for o, t in zip(out, (x, lam, nu)))

    @staticmethod
    def vmap(info, in_dims, *tensors):
        cores = _CORE + _SOLUTION_CORE + _CORE
        folded = _fold(tensors, in_dims, cores, info.batch_size, expand=True)
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
