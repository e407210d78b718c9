"""The one implicit backward of every QP backend: differentiation of the active-set KKT system.

Let (x, λ, ν) solve the QP with active set 𝒜 and M = diag(1[i ∈ 𝒜]) (see ``kkt.py``). The
conditions  Qx + q + GᵀMλ + Aᵀν = 0,  M(Gx − h) = 0,  Ax = b,  (I − M)λ = 0  hold on a
neighbourhood of the data when the solution is strictly complementary, and differentiating them
gives, with the symmetric matrix K of ``kkt.py``,

    K (dx, dλ, dν) = ( −(dQ x + dq + dGᵀ Mλ + dAᵀ ν),   M(dh − dG x),   db − dA x ).   (JVP)

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
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from optlayers._src.qp import kkt
from optlayers._src.qp.linalg import mtv, mv, outer, reduce_to
from optlayers._src.qp.problem import QPData


def _data_of(Q, q, G, h, A, b, B: int) -> QPData:
    return QPData(Q=Q, q=q, G=G, h=h, A=A, b=b, batch_shape=torch.Size([B]), present=(True, True))


def _factor_of(lu, pivots, mask, delta) -> kkt.ActiveKKTFactor:
    return kkt.ActiveKKTFactor(lu=lu, pivots=pivots, mask=mask, delta=delta)


class QPSolutionMap(torch.autograd.Function):
    """``(Q, q, G, h, A, b; x*, λ*, ν*, factor) ↦ (x*, λ*, ν*)`` with the implicit derivative.

    Inputs are canonical (:class:`QPData` layout: batched ``(B, …)`` or shared). The solution
    tensors and the factor (``lu``, ``pivots``, ``mask``, ``delta``) are non-differentiable inputs.
    """

    @staticmethod
    def forward(Q, q, G, h, A, b, x, lam, nu, lu, pivots, mask, delta):
        return x.clone(), lam.clone(), nu.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, gx, glam, gnu):
        Q, q, G, h, A, b, x, lam, nu, lu, pivots, mask, delta = ctx.saved_tensors
        B = x.shape[0]
        data = _data_of(Q, q, G, h, A, b, B)
        fac = _factor_of(lu, pivots, mask, delta)
        n, m = data.n, data.m
        u = kkt.solve(data, fac, torch.cat([gx, mask * glam, gnu], -1))
        ux, ul, un = u[:, :n], mask * u[:, n:n + m], u[:, n + m:]
        need = ctx.needs_input_grad
        grads = [None] * 13
        if need[0]:
            grads[0] = reduce_to(-0.5 * (outer(ux, x) + outer(x, ux)), Q)
        if need[1]:
            grads[1] = reduce_to(-ux, q)
        if need[2]:
            grads[2] = reduce_to(-(outer(mask * lam, ux) + outer(ul, x)), G)
        if need[3]:
            grads[3] = reduce_to(ul, h)
        if need[4]:
            grads[4] = reduce_to(-(outer(nu, ux) + outer(un, x)), A)
        if need[5]:
            grads[5] = reduce_to(un, b)
        return tuple(grads)

    @staticmethod
    def jvp(ctx, dQ, dq, dG, dh, dA, db, *_):
        Q, q, G, h, A, b, x, lam, nu, lu, pivots, mask, delta = ctx.saved_tensors
        B = x.shape[0]
        data = _data_of(Q, q, G, h, A, b, B)
        lam_a = mask * lam
        top = x.new_zeros(x.shape)
        mid = lam.new_zeros(lam.shape)
        bot = nu.new_zeros(nu.shape)
        if dQ is not None:
            top = top - mv(dQ, x)
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
        rhs = torch.cat([top, mask * mid, bot], -1)
        u = kkt.solve(data, _factor_of(lu, pivots, mask, delta), rhs)
        n, m = data.n, data.m
        return u[:, :n], mask * u[:, n:n + m], u[:, n + m:]
