"""Multiplier repair of a polish round (PyTorch backend; the method of
``csrc/optlayers/qp_ipm.h::repair_multipliers``, batched).

At a degenerate solution the active rows can be linearly dependent (a grasp contact with zero force:
all its friction facets and its normal bound active on 3 variables). The active-set KKT system then
fixes ``x`` but not the multipliers, and its regularized solution may give some of them a negative
sign although a nonnegative choice exists. Given the polished ``x``, find

    y = (λ ≥ 0 on the active rows 𝒜, 0 elsewhere;  ν free)  minimizing  ‖Gᵀλ + Aᵀν + Qx + q‖

by Lawson–Hanson NNLS (ν always passive), for a batch of problems at once: each problem has its
own passive set P, and the passive-set least squares ``(M_P M_Pᵀ) s_P = −M_P g`` is solved in the
full layout of all m + p rows, with the rows outside P replaced by identity rows (s = 0 there), so
one batched Cholesky serves every problem. A singular passive Gram matrix fails that problem.
"""

from __future__ import annotations

import torch


def _passive_ls(MMt: torch.Tensor, Mg: torch.Tensor, passive: torch.Tensor):
    """Batched argmin ‖M_Pᵀ s + g‖ over each problem's passive rows (0 elsewhere): (s, ok)."""
    pf = passive.to(MMt.dtype)
    gram = MMt * (pf.unsqueeze(-1) * pf.unsqueeze(-2)) + torch.diag_embed(1 - pf)
    L, info = torch.linalg.cholesky_ex(gram)
    s = torch.cholesky_solve((-pf * Mg).unsqueeze(-1), L).squeeze(-1) * pf
    return s, info == 0


def repair_multipliers(G: torch.Tensor, A: torch.Tensor, g: torch.Tensor, active: torch.Tensor,
                       tol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonnegative multipliers on the active rows with ‖Gᵀλ + Aᵀν + g‖∞ ≤ tol, per problem.

    Args:
        G: (S, m, n) or (m, n); A: (S, p, n) or (p, n); g: (S, n) = Qx + q at the polished x;
        active: (S, m) bool, the rows λ may use; tol: (S,) residual tolerance.
    Returns:
        y: (S, m + p) = (λ, ν) and ok: (S,) bool — whether the repair reached the tolerance.

    float32 problems are repaired in float64: the passive-set least squares go through the normal
    equations, whose condition number is the square of the active rows' — at a degenerate vertex
    (25 active rows and 5 equalities on 22 variables) float32's Cholesky could not bring the
    residual to the polish tolerance that float64 reaches (the tolerance itself stays float32's).
    The problem's data are exact in float64; g keeps its float32 rounding.
    """
    if g.dtype == torch.float32:
        y, ok = _repair(G.double(), A.double(), g.double(), active, tol.double())
        return y.float(), ok
    return _repair(G, A, g, active, tol)


def _repair(G, A, g, active, tol):
    S, m_all = active.shape
    p = A.shape[-2]
    # Work on the active rows only, padded to the batch's largest count (padding rows are never
    # passive: identity rows of the Gram matrix), which keeps the Cholesky factors small.
    counts = active.sum(-1)
    m = int(counts.max()) if S else 0
    order = torch.sort((~active).to(torch.int8), dim=-1, stable=True).indices[:, :m]  # active rows first
    Gb = G.expand(S, -1, -1)
    G_act = torch.gather(Gb, 1, order.unsqueeze(-1).expand(-1, -1, Gb.shape[-1]))
    active = torch.arange(m, device=g.device) < counts.unsqueeze(-1)
    c = m + p
    M = torch.cat([G_act, A.expand(S, -1, -1)], -2)  # (S, c, n)
    MMt = M @ M.transpose(-1, -2)
    Mg = (M @ g.unsqueeze(-1)).squeeze(-1)
    dtype, device = g.dtype, g.device
    passive = torch.zeros(S, c, dtype=torch.bool, device=device)
    passive[:, m:] = True
    ok = torch.ones(S, dtype=torch.bool, device=device)
    y = torch.zeros(S, c, dtype=dtype, device=device)
    if p:
        y, ok = _passive_ls(MMt, Mg, passive)
    wtol = tol * (1 + g.abs().amax(-1)) * 1e-3
    neg_inf = torch.tensor(-float("inf"), dtype=dtype, device=device)
    going = ok.clone()
    for _ in range(3 * c):
        # Only the problems still adding rows take part (most finish after a few).
        sel = torch.nonzero(going).squeeze(-1)
        if sel.numel() == 0:
            break
        Ms, MMts, Mgs, gs = M[sel], MMt[sel], Mg[sel], g[sel]
        ys, ps, oks = y[sel], passive[sel], ok[sel]
        r = gs + (Ms.transpose(-1, -2) @ ys.unsqueeze(-1)).squeeze(-1)
        w = -(Ms[:, :m] @ r.unsqueeze(-1)).squeeze(-1)  # −∂/∂λ of ½‖r‖²
        w = torch.where(active[sel] & ~ps[:, :m], w, neg_inf)
        if m == 0:
            going[sel] = False
            break
        wmax, t = w.max(-1)
        adding = wmax > wtol[sel]
        going[sel] = adding
        if not bool(adding.any()):
            break
        ps[adding, t[adding]] = True
        inner = adding.clone()
        for _ in range(c + 1):
            sv, fine = _passive_ls(MMts, Mgs, ps)
            oks &= fine | ~inner
            inner &= fine
            bad = ps[:, :m] & ~(sv[:, :m] > 0)
            feasible = ~bad.any(-1)
            ys = torch.where((inner & feasible).unsqueeze(-1), sv, ys)
            inner &= ~feasible
            if not bool(inner.any()):
                break
            # Step from y towards s until the first passive λ reaches zero; drop those rows.
            den = ys[:, :m] - sv[:, :m]
            ratio = torch.where(bad & (den > 0), ys[:, :m] / den, torch.full_like(den, float("inf")))
            alpha = ratio.amin(-1).clamp(max=1.0).nan_to_num(1.0)
            ys = torch.where(inner.unsqueeze(-1), ys + alpha.unsqueeze(-1) * (sv - ys), ys)
            drop = inner.unsqueeze(-1) & ps[:, :m] & ~(ys[:, :m] > 0)
            ps[:, :m] &= ~drop
            ys[:, :m] = torch.where(drop, torch.zeros_like(ys[:, :m]), ys[:, :m])
        y[sel], passive[sel], ok[sel] = ys, ps, oks
        going[sel] &= oks
    r = g + (M.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)
    ok &= r.abs().amax(-1) <= tol
    lam = torch.zeros(S, m_all, dtype=dtype, device=device)
    lam.scatter_(1, order, torch.where(active, y[:, :m].clamp_min(0), torch.zeros_like(y[:, :m])))
    return torch.cat([lam, y[:, m:]], -1), ok
