"""The one implicit backward of every QP backend: differentiation of the active-set KKT system.

Let (x, λ, ν) solve the QP with active set 𝒜 and M = diag(1[i ∈ 𝒜]) (see ``kkt.py``). The
conditions  Qx + q + GᵀMλ + Aᵀν = 0,  M(Gx − h) = 0,  Ax = b,  (I − M)λ = 0  hold on a
neighbourhood of the data when the solution is strictly complementary, and differentiating them
gives, with the symmetric matrix K of ``kkt.py``,

    K (dx, dλ, dν) = ( −(dQₛ x + dq + dGᵀ Mλ + dAᵀ ν),   M(dh − dG x),   db − dA x ),   (JVP)

with dQₛ = ½(dQ + dQᵀ): Q enters only through its symmetric part.

Reverse mode: for upstream gradients (g_x, g_λ, g_ν) solve  K u = (g_x, M g_λ, g_ν)  (K = Kᵀ)
and read the gradients off the right-hand side above (cf. OptNet, Amos & Kolter 2017, eq. 8,
written here on the active set instead of with the complementarity rows):

    ∇q = −u_x          ∇Q = −½(u_x xᵀ + x u_xᵀ)     (Q enters only through its symmetric part)
    ∇h =  u_λ          ∇G = −(Mλ u_xᵀ + u_λ xᵀ)
    ∇b =  u_ν          ∇A = −(ν u_xᵀ + u_ν xᵀ)

Degenerate points (an active constraint with zero multiplier): the active set is the solver's
classification ``λ_i > s_i``, and the result is the derivative of the QP whose active set is
held fixed at that classification — a well-defined, finite element of the generalized
Jacobian. K is solved through the regularized factor of ``kkt.py``, so it stays finite even
when the active constraints are linearly dependent (then the multiplier part of the answer is
the regularized, minimum-norm-like choice).

The solution itself is computed outside autograd by any backend; :class:`QPSolutionMap`
attaches it to the graph with the backend's KKT factor (or one computed here) as a plain input.
:func:`kkt_vjp` / :func:`kkt_jvp` hold the formulas once; they take the K-solve as a function,
so the torch factor (``kkt.py``: reduced Cholesky or LU) and the native C++ solve (csrc/) feed the
same code.

Higher derivatives (``create_graph=True``: Hessians, Hessian-vector products, ``gradgradcheck``).
The reverse-mode formulas above are a smooth function of (θ, x*, λ*, ν*) and of u = K(θ)⁻¹ g, with
the active set held fixed — which is exactly how the solution map behaves near a strictly
complementary solution. So when autograd asks for a differentiable backward (grad mode on inside
``backward``), :func:`differentiable_vjp` evaluates the same ``kkt_vjp`` on the *outputs* of the
map (whose derivative is this map again) and with the K-solve as :class:`KKTSolveMap`, whose own
derivative is, for K u = r,

    ∇r = w,   ∇Q = −½(w_x u_xᵀ + u_x w_xᵀ),   ∇G = −(M u_λ w_xᵀ + M w_λ u_xᵀ),   ∇A = −(u_ν w_xᵀ + w_ν u_xᵀ),

with w = K⁻¹ ū (K = Kᵀ, one more solve) — again built from the map itself, so every order is
available (and the same map serves ``functional.py``'s ``torch.func`` path: it also has a JVP and a
``vmap`` rule). The first-order backward (grad mode off, the default) is untouched.
At a degenerate point the result is the derivative of the QP whose active set is held fixed, as
for the first order.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from optlayers._src.qp import kkt
from optlayers._src.qp.batching import batch_dims, bmtv, bmv, fold, rows, sum_rows
from optlayers._src.qp.linalg import mtv, mv, outer, reduce_to
from optlayers._src.qp.problem import QPData
from optlayers._src.qp.threads import intra_op_threads
from optlayers._src.sparse.problem import broadcast_shapes
from optlayers._src.transforms import refuse_forward_over_forward


KKTSolve = Callable[[torch.Tensor], torch.Tensor]


def kkt_vjp(data: QPData, x, lam, nu, mask, gx, glam, gnu, solve: KKTSolve, needs=(True,) * 6):
    """Gradients (∇Q, ∇q, ∇G, ∇h, ∇A, ∇b) from upstream (g_x, g_λ, g_ν); see module docstring.

    ``solve(rhs)`` solves K u = rhs for rhs, u of shape (B, n+m+p). Shared inputs get the
    batch sum. Entries of ``needs`` that are False give None.
    """
    n, m = data.n, data.m
    u = solve(torch.cat([gx, mask * glam, gnu], -1))
    ux, ul, un = u[:, :n], mask * u[:, n:n + m], u[:, n + m:]
    grads = [None] * 6
    if needs[0]:
        grads[0] = reduce_to(-0.5 * (outer(ux, x) + outer(x, ux)), data.Q)
    if needs[1]:
        grads[1] = reduce_to(-ux, data.q)
    if needs[2]:
        grads[2] = reduce_to(-(outer(mask * lam, ux) + outer(ul, x)), data.G)
    if needs[3]:
        grads[3] = reduce_to(ul, data.h)
    if needs[4]:
        grads[4] = reduce_to(-(outer(nu, ux) + outer(un, x)), data.A)
    if needs[5]:
        grads[5] = reduce_to(un, data.b)
    return tuple(grads)


def kkt_jvp(data: QPData, x, lam, nu, mask, tangents, solve: KKTSolve):
    """(dx, dλ, dν) for tangents (dQ, dq, dG, dh, dA, db) (None = zero); see module docstring."""
    dQ, dq, dG, dh, dA, db = tangents
    lam_a = mask * lam
    top = torch.zeros_like(x)
    mid = torch.zeros_like(lam)
    bot = torch.zeros_like(nu)
    if dQ is not None:  # Q enters only through its symmetric part (a Jacobian's tangents E_ij are not)
        top = top - 0.5 * (mv(dQ, x) + mtv(dQ, x))
    if dq is not None:
        top = top - dq
    if dG is not None:
        top = top - mtv(dG, lam_a)
        mid = mid - mv(dG, x)
    if dh is not None:
        mid = mid + dh
    if dA is not None:
        top = top - mtv(dA, nu)
        bot = bot - mv(dA, x)
    if db is not None:
        bot = bot + db
    u = solve(torch.cat([top, mask * mid, bot], -1))
    n, m = data.n, data.m
    return u[:, :n], mask * u[:, n:n + m], u[:, n + m:]


def data_of(Q, q, G, h, A, b, B: int) -> QPData:
    """Wrap canonical tensors (batched or shared) as :class:`QPData` with batch size B."""
    return QPData(Q=Q, q=q, G=G, h=h, A=A, b=b, batch_shape=torch.Size([B]), present=(True, True))


def kkt_solver(kind: str, data: QPData, mask, lu, pivots, delta) -> KKTSolve:
    """The K-solve for a backend's factor: ``"torch"`` (``kkt.py``'s factor tensors; the
    pivots' width tells Cholesky from LU) or ``"native"`` (csrc op)."""
    if kind == "native":
        from optlayers._src.native import ops

        return lambda rhs: ops.kkt_solve(data, mask, rhs)
    fac = kkt.ActiveKKTFactor(lu=lu, pivots=pivots, mask=mask, delta=delta)
    return lambda rhs: kkt.solve(data, fac, rhs)


class KKTSolveMap(torch.autograd.Function):
    """``(Q, G, A, mask, r; native) ↦ u = K⁻¹ r``, K the active-set KKT matrix of ``kkt.py`` (mask
    held fixed; ``native``: the C++ solve where available, else a torch factor), with broadcasting
    batch dimensions: Q (…, n, n), G (…, m, n), A (…, p, n), mask (…, m),
    r (…, n+m+p). Differentiable to any order under autograd and ``torch.func``: its derivatives
    are solves with K again through this map (module docstring); its ``vmap``
    rule moves the vmapped dimension into the batch.

    Only the problems whose right-hand side is nonzero are factored and solved (u = 0 for the
    others), gathered by index without materializing the broadcast: the basis (co)tangents of a
    ``jacrev``/``jacfwd`` over B problems with n entries make B·n right-hand sides for B problems,
    each nonzero for one problem only — B·n solves, not B²·n."""

    @staticmethod
    def forward(Q, G, A, mask, rhs, native=True):
        S = tuple(broadcast_shapes(batch_dims(Q, 2), batch_dims(G, 2), batch_dims(A, 2), batch_dims(mask, 1), batch_dims(rhs, 1)))
        live = (rhs != 0).any(-1).expand(S).reshape(-1)
        # (All live — every backward of a batch: no gather, no scatter.)
        idx = None if bool(live.all()) else torch.nonzero(live).squeeze(-1)
        k, n, m, p = live.numel() if idx is None else idx.numel(), Q.shape[-1], G.shape[-2], A.shape[-2]
        zeros = rhs.new_zeros(k, n + m + p)
        # (A matrix without batch dimensions stays shared: one copy, as everywhere in the package.)
        Qk, Gk, Ak = (M if M.dim() == 2 else rows(M, 2, S, idx) for M in (Q, G, A))
        sub = data_of(Qk, zeros[:, :n], Gk, zeros[:, n:n + m], Ak, zeros[:, n + m:], k)
        sub_mask, sub_rhs = rows(mask, 1, S, idx), rows(rhs, 1, S, idx)
        if native and native_solve_available(sub):
            from optlayers._src.native import ops

            u = ops.kkt_solve(sub, sub_mask, sub_rhs.contiguous())
        else:
            u = kkt.solve(sub, kkt.factor(sub, sub_mask, keep_matrix=False), sub_rhs)
        return sum_rows(u, idx, S, S + (rhs.shape[-1],), 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.native = inputs[5] if len(inputs) > 5 else True
        ctx.save_for_backward(*inputs[:4], output)
        ctx.save_for_forward(*inputs[:4], output)

    @staticmethod
    def backward(ctx, gu):
        Q, G, A, mask, u = ctx.saved_tensors
        w = KKTSolveMap.apply(Q, G, A, mask, gu, ctx.native)
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
        refuse_forward_over_forward()
        Q, G, A, mask, u = ctx.saved_tensors
        n, m = Q.shape[-1], G.shape[-2]
        ux, ul, un = u[..., :n], mask * u[..., n:n + m], u[..., n + m:]
        top, mid, bot = torch.zeros_like(ux), torch.zeros_like(ul), torch.zeros_like(un)
        if dQ is not None:  # symmetric part, as in kkt_jvp
            top = top + 0.5 * (bmv(dQ, ux) + bmtv(dQ, ux))
        if dG is not None:
            top = top + bmtv(dG, ul)
            mid = mid + mask * bmv(dG, ux)
        if dA is not None:
            top = top + bmtv(dA, un)
            bot = bot + bmv(dA, ux)
        r = -torch.cat([top, mid, bot], -1)  # d(K u) = dK u + K du = dr
        if drhs is not None:
            r = r + drhs
        return KKTSolveMap.apply(Q, G, A, mask, r, ctx.native)

    @staticmethod
    def vmap(info, in_dims, Q, G, A, mask, rhs, native=True):
        folded = fold((Q, G, A, mask, rhs), in_dims[:5], (2, 2, 2, 1, 1))
        return KKTSolveMap.apply(*folded, native), 0


def native_solve_available(data: QPData) -> bool:
    """Whether the C++ K-solve (``qp_kkt_solve``) takes ``data``: native ops loaded, on CPU or on a
    CUDA device with the CUDA kernels. Never builds (only a process that already loaded the ops
    uses them here)."""
    from optlayers._src.native import ops

    if not ops.loaded() or data.B == 0:
        return False
    return data.device.type == "cpu" or (data.device.type == "cuda" and ops.cuda_available())


def differentiable_vjp(data: QPData, x, lam, nu, mask, gx, glam, gnu, needs, native: bool):
    """:func:`kkt_vjp` as a differentiable function of the data and of ``(x, λ, ν)`` (pass the
    solution as it sits on the graph, e.g. a :class:`QPSolutionMap`'s outputs): the backward used
    when autograd records the backward itself (``create_graph=True``). The K-solves go through
    :class:`KKTSolveMap`: the C++ one where ``native`` and available (4–5× faster than a torch
    factor + solve at B=32…128, n=20…50, float64), else a torch factor."""

    def solve(rhs: torch.Tensor) -> torch.Tensor:
        return KKTSolveMap.apply(data.Q, data.G, data.A, mask, rhs, native)

    return kkt_vjp(data, x, lam, nu, mask, gx, glam, gnu, solve, needs)


class QPSolutionMap(torch.autograd.Function):
    """``(Q, q, G, h, A, b; x*, λ*, ν*, K-factor) ↦ (x*, λ*, ν*)`` with the implicit derivative.

    Inputs are canonical (:class:`QPData` layout: batched ``(B, …)`` or shared). The solution,
    the active mask and the factor tensors (``lu``, ``pivots``, ``delta``; for the native solver
    ``lu`` holds its kept polish LUs or is empty, ``pivots`` the statuses (int32) and ``delta`` is
    empty) are non-differentiable inputs; ``kind`` names the K-solver.
    """

    @staticmethod
    def forward(Q, q, G, h, A, b, x, lam, nu, mask, lu, pivots, delta, kind):
        return x.clone(), lam.clone(), nu.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.kind = inputs[-1]
        # The outputs, not the input copies of (x, λ, ν): a differentiable backward must see x*(θ).
        ctx.save_for_backward(*inputs[:6], *output, *inputs[9:-1])
        ctx.save_for_forward(*inputs[:-1])

    @staticmethod
    def backward(ctx, gx, glam, gnu):
        Q, q, G, h, A, b, x, lam, nu, mask, lu, pivots, delta = ctx.saved_tensors
        data = data_of(Q, q, G, h, A, b, x.shape[0])
        needs = ctx.needs_input_grad[:6]
        if torch.is_grad_enabled() and x.shape[0]:
            # create_graph=True: the backward on the graph, for higher derivatives (module docstring).
            native = ctx.kind == "native"
            return differentiable_vjp(data, x, lam, nu, mask, gx, glam, gnu, needs, native) + (None,) * 8
        if ctx.kind == "native" and x.device.type == "cpu":
            # The native op's own fused backward (active set, KKT solve and outer products per
            # problem in C++; the same formulas as kkt_vjp), e.g. for warm-started solutions.
            from optlayers._src.native import ops

            grads = ops.fused_backward(data, x, lam, nu, pivots.to(torch.int8), lu, gx, glam, gnu, needs)
            return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 8
        solve = kkt_solver(ctx.kind, data, mask, lu, pivots, delta)
        with _threads(ctx.kind, data):
            grads = kkt_vjp(data, x, lam, nu, mask, gx, glam, gnu, solve, needs)
        return grads + (None,) * 8

    @staticmethod
    def jvp(ctx, dQ, dq, dG, dh, dA, db, *_):
        Q, q, G, h, A, b, x, lam, nu, mask, lu, pivots, delta = ctx.saved_tensors
        data = data_of(Q, q, G, h, A, b, x.shape[0])
        solve = kkt_solver(ctx.kind, data, mask, lu, pivots, delta)
        with _threads(ctx.kind, data):
            return kkt_jvp(data, x, lam, nu, mask, (dQ, dq, dG, dh, dA, db), solve)


def _threads(kind: str, data: QPData):
    """The PyTorch backend's thread policy (``threads.py``) for its K-solve; the native op
    schedules its own threads."""
    return intra_op_threads(data) if kind == "torch" else contextlib.nullcontext()
