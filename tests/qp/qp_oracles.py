"""Independent references for the QP tests: CVXPY + Clarabel, closed-form KKT solves, residuals.

Nothing here calls optlayers' solver: these are the oracles the layer is compared against.
Imported by the test modules of this directory (pytest puts it on ``sys.path``).
"""

from __future__ import annotations

import numpy as np
import torch

# Clarabel at tight tolerances: its answers are accurate to ~1e-10 on the problems we use.
CLARABEL_TIGHT = dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=200)


def sym(S: torch.Tensor) -> torch.Tensor:
    """Symmetric parametrization of Q (a non-symmetric Q is rejected by the layer)."""
    return 0.5 * (S + S.mT)


def mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def flat_batch(t: torch.Tensor, core: int, batch_shape: tuple[int, ...]) -> torch.Tensor:
    """Expand ``t`` to ``batch_shape + core shape`` and flatten the batch to one dimension."""
    core_shape = tuple(t.shape[t.dim() - core:])
    B = 1
    for k in batch_shape:
        B *= k
    return t.expand(tuple(batch_shape) + core_shape).reshape((B,) + core_shape)


def cvxpy_solve(Q, q, G=None, h=None, A=None, b=None):
    """One QP by CVXPY + Clarabel (float64 numpy in, numpy out).

    Returns ``(x, lam, nu, status)``. CVXPY's duals follow our Lagrangian
    ½xᵀQx + qᵀx + λᵀ(Gx − h) + νᵀ(Ax − b): ``lam`` = dual of ``G x <= h`` (≥ 0), ``nu`` = dual of
    ``A x == b`` (checked in the tests against planted multipliers and stationarity).
    """
    import cvxpy as cp

    n = q.shape[-1]
    x = cp.Variable(n)
    obj = q @ x
    if Q is not None:
        obj = obj + 0.5 * cp.quad_form(x, cp.psd_wrap(0.5 * (Q + Q.T)))
    cons = []
    ineq = eq = None
    if G is not None and G.shape[0]:
        ineq = G @ x <= h
        cons.append(ineq)
    if A is not None and A.shape[0]:
        eq = A @ x == b
        cons.append(eq)
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
    if prob.status not in ("optimal",):
        return None, None, None, prob.status
    lam = np.asarray(ineq.dual_value).reshape(-1) if ineq is not None else np.zeros(0)
    nu = np.asarray(eq.dual_value).reshape(-1) if eq is not None else np.zeros(0)
    return np.asarray(x.value).reshape(-1), lam, nu, prob.status


def cvxpy_solve_batch(Q, q, G, h, A, b):
    """CVXPY reference for every problem of a (broadcast) batch; returns torch tensors shaped
    like the layer's output (batch shape + core)."""
    shapes = [t.shape[: t.dim() - c] for t, c in ((Q, 2), (q, 1), (G, 2), (h, 1), (A, 2), (b, 1))]
    batch_shape = tuple(torch.broadcast_shapes(*shapes))
    flat = [
        flat_batch(t.detach(), c, batch_shape).numpy()
        for t, c in ((Q, 2), (q, 1), (G, 2), (h, 1), (A, 2), (b, 1))
    ]
    xs, lams, nus = [], [], []
    for i in range(flat[1].shape[0]):
        x, lam, nu, status = cvxpy_solve(*(f[i] for f in flat))
        assert status == "optimal", f"reference solver failed on problem {i}: {status}"
        xs.append(x)
        lams.append(lam)
        nus.append(nu)
    def out(v, k):
        return torch.as_tensor(np.stack(v)).reshape(batch_shape + (k,))
    return out(xs, q.shape[-1]), out(lams, h.shape[-1]), out(nus, b.shape[-1])


def kkt_reference(Q, q, G, h, A, b, active: torch.Tensor):
    """Closed-form, differentiable solution of the QP for a known active set.

    Solves the equality-constrained QP with constraints ``A x = b`` and ``G_𝒜 x = h_𝒜``
    via ``torch.linalg.solve`` on the full KKT matrix

        [ Q    G_𝒜ᵀ  Aᵀ ] [x  ]   [ -q  ]
        [ G_𝒜  0     0  ] [λ_𝒜] = [ h_𝒜 ]
        [ A    0     0  ] [ν  ]   [ b   ]

    so that plain autograd gives the exact derivative of the solution map (at a strictly
    complementary point, where the active set is locally constant). ``active`` is a 1-D bool
    mask of the m rows, shared by the whole batch. Returns (x, lam (m, zeros off 𝒜), nu).
    """
    idx = torch.nonzero(active).squeeze(-1)
    Ga, ha = G.index_select(-2, idx), h.index_select(-1, idx)
    C = torch.cat([Ga, A], dim=-2) if A.shape[-2] else Ga
    d = torch.cat([ha, b], dim=-1) if A.shape[-2] else ha
    batch = torch.broadcast_shapes(Q.shape[:-2], q.shape[:-1], C.shape[:-2], d.shape[:-1])
    n, r = q.shape[-1], C.shape[-2]
    Qb, Cb = Q.expand(batch + Q.shape[-2:]), C.expand(batch + C.shape[-2:])
    top = torch.cat([Qb, Cb.mT], dim=-1)
    bot = torch.cat([Cb, Cb.new_zeros(batch + (r, r))], dim=-1)
    K = torch.cat([top, bot], dim=-2)
    rhs = torch.cat([-q.expand(batch + (n,)), d.expand(batch + (r,))], dim=-1)
    sol = torch.linalg.solve(K, rhs)
    x, mult = sol[..., :n], sol[..., n:]
    k = idx.numel()
    lam = x.new_zeros(batch + (h.shape[-1],)).index_copy(-1, idx, mult[..., :k]) if k else x.new_zeros(
        batch + (h.shape[-1],)
    )
    nu = mult[..., k:]
    return x, lam, nu


def kkt_residuals(Q, q, G, h, A, b, x, lam, nu) -> dict[str, float]:
    """Max-norm KKT residuals of (x, λ, ν) for our Lagrangian ½xᵀQx+qᵀx+λᵀ(Gx−h)+νᵀ(Ax−b)."""
    Qx = mv(Q, x) if Q is not None else torch.zeros_like(x)
    stat = Qx + q + mv(G.mT, lam) + mv(A.mT, nu)
    slack = h - mv(G, x)
    return {
        "stationarity": float(stat.abs().max()),
        "primal_ineq": float((-slack).clamp_min(0).max()) if slack.numel() else 0.0,
        "primal_eq": float((mv(A, x) - b).abs().max()) if b.numel() else 0.0,
        "dual_sign": float((-lam).clamp_min(0).max()) if lam.numel() else 0.0,
        "complementarity": float((lam * slack).abs().max()) if lam.numel() else 0.0,
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normwise relative error ‖a − b‖_∞ / max(‖b‖_∞, 1e-300)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def cvxpy_polished(Q, q, G, h, A, b):
    """Single-problem reference accurate to rounding: CVXPY + Clarabel identifies the active set,
    then the KKT system of that set is solved exactly (:func:`kkt_reference`) and checked to be
    primal and dual feasible (so it is optimal). Returns (x, lam, nu) as float64 tensors."""
    x, lam, _ = cvxpy_solve_batch(Q, q, G, h, A, b)
    slack = h - mv(G, x)
    active = lam > slack
    xe, lame, nue = kkt_reference(Q, q, G, h, A, b, active)
    scale = 1.0 + float(xe.abs().max())
    assert float((h - mv(G, xe)).min()) >= -1e-12 * scale, "polished reference is infeasible"
    assert float(lame.min()) >= -1e-12 * (1.0 + float(lame.abs().max())), "polished reference has λ < 0"
    return xe, lame, nue
