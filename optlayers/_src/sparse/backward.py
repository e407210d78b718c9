"""Implicit differentiation of the sparse QP through its reduced KKT system (``kkt.py``).

With the active set 𝒜 held fixed (strict complementarity), differentiating

    P x + q + A_𝒜ᵀ y_𝒜 = 0,     A_𝒜 x = b_𝒜,     y_ℐ = 0        (b_i = u_i if y_i > 0, l_i if y_i < 0)

gives, with the symmetric reduced matrix K = [[P, A_𝒜ᵀ], [A_𝒜, 0]],

    K (dx, dy_𝒜) = ( −(dP x + dq + dA_𝒜ᵀ y_𝒜),   db_𝒜 − dA_𝒜 x ),      dy_ℐ = 0.      (JVP)

Reverse mode: for upstream (g_x, g_y) solve K (u_x, u_𝒜) = (g_x, g_y,𝒜) (K = Kᵀ; u_ℐ = 0) and
read the gradients off the right-hand side above (OptNet, Amos & Kolter 2017, eq. 8, on the
active set; the same formulas as the dense family's ``qp/backward.py``, restricted to the stored
nonzeros):

    ∇q   = −u_x
    ∇P_ij = −(u_x,i x_j + x_i u_x,j)   for a stored upper-triangle slot i < j (P_ij = P_ji
                                         is one value), −u_x,i x_i on the diagonal
    ∇A_rc = −(y_r u_x,c + u_r x_c)     for a stored slot (r, c) of A (y_r = u_r = 0 if r ∉ 𝒜)
    ∇u_i = u_i if row i is active at its upper bound,   ∇l_i = u_i if at its lower bound

These are gradients of the *canonical* values (``problem.py``); the differentiable
canonicalization maps them to the caller's sparse ``values()`` (or dense entries) — the
gradient is never formed on the full n × n or m × n grid. One back-solve per problem with the
factorization made by the forward polish (or made here once, if the polish was off).

Degenerate points (an active row with zero multiplier, or linearly dependent active rows) get
the derivative of the QP with the active set held at the solver's classification, computed
through the regularized factorization — a finite element of the generalized Jacobian.
"""

from __future__ import annotations

import numpy as np
import torch

from optlayers._src.first_order import first_order_only
from optlayers._src.sparse import kkt as kkt_mod
from optlayers._src.sparse.solver import KKTState


def _np(t: torch.Tensor | None, B: int, width: int) -> np.ndarray:
    """(B, width) float64 numpy of a shared (width,) or batched (B, width) tensor (None → 0)."""
    if t is None:
        return np.zeros((B, width))
    a = t.detach().to("cpu", dtype=torch.float64).numpy()
    return np.broadcast_to(a, (B, width)) if a.ndim == 1 else a


def _to_input(g: np.ndarray, spec: tuple) -> torch.Tensor:
    """Sum over the batch for a shared input; cast to its dtype and device."""
    shared, dtype, device = spec
    if shared:
        g = g.sum(0)
    return torch.from_numpy(np.ascontiguousarray(g)).to(dtype=dtype, device=device)


def _factor(state: KKTState, b: int):
    """Problem b's KKT factorization, or a clear error where the factorization fails (the forward
    pass then returned OSQP's unpolished point)."""
    try:
        return state.factor(b)
    except RuntimeError as err:
        raise RuntimeError(
            f"optlayers (OSQP route): the KKT matrix at the solution of batch index {b} could not be "
            f"factored ({err}); its derivative is not available. Badly scaled data (objective or "
            "variables many orders of magnitude apart) is the usual cause: rescale it, or use a dense "
            "backend, which rescales by itself."
        ) from None


def reduced_vjp(state: KKTState, X: np.ndarray, Y: np.ndarray, GX: np.ndarray, GY: np.ndarray):
    """Solve K (u_x, u_𝒜) = (g_x, g_y,𝒜) per solved problem; returns U_x (B, n), U_y (B, m)."""
    B, n = X.shape
    UX = np.zeros_like(X)
    UY = np.zeros_like(Y)
    for b in range(B):
        if not state.ok[b]:
            continue  # failed problems get zero gradient
        f = _factor(state, b)
        act = f.active
        sol = f.solve(np.concatenate([GX[b], GY[b, act]]))
        UX[b] = sol[:n]
        UY[b, act] = sol[n:]
    return UX, UY


def canonical_grads(state: KKTState, X, Y, UX, UY, needs):
    """(∇P, ∇q, ∇A, ∇l, ∇u) of the canonical values, (B, ·) numpy, None where not needed."""
    Pp, Ap = state.P_pattern, state.A_pattern
    sign = state.sign
    grads = [None] * 5
    if needs[0] and Pp.nnz:
        i, j = Pp.rows, Pp.cols
        g = -(UX[:, i] * X[:, j] + X[:, i] * UX[:, j])
        g[:, i == j] *= 0.5
        grads[0] = g
    elif needs[0]:
        grads[0] = np.zeros((X.shape[0], 0))
    if needs[1]:
        grads[1] = -UX
    if needs[2]:
        r, c = Ap.rows, Ap.cols
        YA = np.where(sign != 0, Y, 0.0)
        grads[2] = -(YA[:, r] * UX[:, c] + UY[:, r] * X[:, c])
    if needs[3]:
        grads[3] = np.where(sign < 0, UY, 0.0)
    if needs[4]:
        grads[4] = np.where(sign > 0, UY, 0.0)
    return grads


def reduced_jvp(state: KKTState, X, Y, tangents):
    """(dx (B, n), dy (B, m)) for tangents of the canonical values (None = zero)."""
    dP, dq, dA, dl, du = tangents
    B, n = X.shape
    m = Y.shape[1]
    Pp, Ap = state.P_pattern, state.A_pattern
    dPn = _np(dP, B, Pp.nnz) if dP is not None else None
    dAn = _np(dA, B, Ap.nnz) if dA is not None else None
    dqn, dln, dun = _np(dq, B, n), _np(dl, B, m), _np(du, B, m)
    DX = np.zeros((B, n))
    DY = np.zeros((B, m))
    for b in range(B):
        if not state.ok[b]:
            continue
        f = _factor(state, b)
        act = f.active
        s = state.sign[b, act]
        top = -dqn[b].copy()
        bot = np.where(s > 0, dun[b, act], dln[b, act])
        if dPn is not None:
            top -= kkt_mod._symmetric(kkt_mod.csc(Pp, dPn[b])) @ X[b]
        if dAn is not None:
            dAb = kkt_mod.csc(Ap, dAn[b]).tocsr()[act]
            top -= dAb.T @ Y[b, act]
            bot = bot - dAb @ X[b]
        sol = f.solve(np.concatenate([top, bot]))
        DX[b] = sol[:n]
        DY[b, act] = sol[n:]
    return DX, DY


class SparseQPSolutionMap(torch.autograd.Function):
    """``(P, q, A, l, u; x*, y*, KKT state) ↦ (x*, y*)`` with the implicit derivative above.

    Inputs are the canonical values (shared ``(k,)`` or batched ``(B, k)``) — differentiable —
    and the solution computed outside autograd. ``state`` (:class:`KKTState`: the active sets,
    numpy copies of P and A, and the per-problem sparse factorizations, which autograd cannot
    save as tensors) is a non-differentiable input, recorded in ``setup_context``.
    """

    @staticmethod
    def forward(P, q, A, l, u, x, y, state):
        return x.clone(), y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        P, q, A, l, u, x, y, state = inputs
        ctx.state = state
        ctx.specs = tuple((t.dim() == 1, t.dtype, t.device) for t in (P, q, A, l, u))
        # (P … u are saved only so that a second derivative finds them and fails loudly.)
        ctx.save_for_backward(x, y, P, q, A, l, u)
        ctx.save_for_forward(x, y)

    @staticmethod
    @first_order_only('the OSQP route (solve_sparse_qp, backend="osqp")')
    def backward(ctx, gx, gy):
        x, y = ctx.saved_tensors[:2]
        B, n, m = x.shape[0], x.shape[1], y.shape[1]
        X, Y = _np(x, B, n), _np(y, B, m)
        UX, UY = reduced_vjp(ctx.state, X, Y, _np(gx, B, n), _np(gy, B, m))
        grads = canonical_grads(ctx.state, X, Y, UX, UY, ctx.needs_input_grad[:5])
        out = tuple(None if g is None else _to_input(g, spec) for g, spec in zip(grads, ctx.specs))
        return out + (None, None, None)

    @staticmethod
    def jvp(ctx, dP, dq, dA, dl, du, *_):
        x, y = ctx.saved_tensors
        B, n, m = x.shape[0], x.shape[1], y.shape[1]
        DX, DY = reduced_jvp(ctx.state, _np(x, B, n), _np(y, B, m), (dP, dq, dA, dl, du))
        return (torch.from_numpy(DX).to(dtype=x.dtype, device=x.device),
                torch.from_numpy(DY).to(dtype=y.dtype, device=y.device))


