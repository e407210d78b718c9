"""Certificates of infeasibility and unboundedness for the problems an interior point could not finish.

The interior point certifies infeasibility from its iterates, which diverge along a Farkas ray
(``torch_ipm.py``'s module docstring). On a thin infeasibility (two rows whose gap is 1e-3 of
their scale) the iterate can break down first: z grows to ~1e8, the Newton systems lose their
accuracy, and the problem stops as ``MAX_ITER`` with the certificate ratio at 1.5e-8 against a
tolerance of 1e-8 (float64), or 1e-4 … 3e-3 against 1e-4 (float32).

For those problems (status ``MAX_ITER`` or ``NUMERICAL_ERROR``) this module looks for the
certificate directly. With the rows of G and A scaled to unit norm (G̃, h̃, Ã, b̃, as the
interior point sees them), a Farkas certificate is z ≥ 0, ν with

    G̃ᵀz + Ãᵀν = 0   and   h̃ᵀz + b̃ᵀν = −1,

i.e. the nonnegative least-squares problem  min ‖[G̃ h̃]ᵀz + [Ã b̃]ᵀν + e_{n+1}‖  (z ≥ 0, ν free)
has residual 0 — solved by the multiplier repair's Lawson–Hanson NNLS over all rows, in float64.
A solution counts, as in the interior point, if ‖G̃ᵀz + Ãᵀν‖∞ ≤ ε·t with t = −(h̃ᵀz + b̃ᵀν) > 0
(so no feasible x has ‖x‖₁ < 1/ε), and t is above the rounding of its terms,
t > ε·(Σ|h̃ᵢzᵢ| + Σ|b̃ₑνₑ|) (ε: the data type's infeasibility tolerance) — a float32 problem
whose pinning rows disagree only by rounding is not declared infeasible. NNLS is a finite
algorithm, so a feasible problem can never pass: its least-squares residual is bounded below by
1 / (1 + ‖x̄‖₁) for any feasible x̄.

Then, for the problems without one, a descent ray (unboundedness): d with

    Qd = 0,   Ãd = 0,   G̃d ≤ 0,   qᵀd = −1,

i.e. min ‖(Qd, Ãd, G̃d + s, qᵀd + 1)‖ over d free and slacks s ≥ 0 — the same NNLS with the roles
swapped (s the nonnegative unknowns, d the free ones). Accepted as in the interior point:
max(‖Qd‖∞, ‖Ãd‖∞, max(G̃d)₊) ≤ ε·t with t = −qᵀd > 0 and t > ε·Σ|qⱼdⱼ|. Unbounded QPs with
equalities and a singular Q are where the interior point's own test is slowest: its iterate runs
off along the ray only linearly, so the ratio falls like 1/iteration (rank-2 Q, n = 25, 3
equalities, 300 seeds of tests/qp/test_qp_robustness.py's far family: the native backend left 9
of the 185 unbounded ones as MAX_ITER; with this search, none).
"""

from __future__ import annotations

import torch

from optlayers._src.qp.linalg import expand_mat, expand_vec, row_norms
from optlayers._src.qp.multiplier_repair import repair_multipliers
from optlayers._src.qp.options import QPOptions
from optlayers._src.qp.problem import QPData
from optlayers._src.status import Status
from optlayers._src.tolerances import tolerances_for


def certify_failures(data: QPData, status: torch.Tensor, iterations: torch.Tensor, max_iter: int) -> torch.Tensor:
    """``status`` (B,) int8 with PRIMAL_INFEASIBLE or DUAL_INFEASIBLE where a problem that ended
    MAX_ITER or NUMERICAL_ERROR has a certificate (see the module docstring); a new tensor if any.

    A caller who lowers ``max_iter`` below the default on purpose gets MAX_ITER for the problems
    that used it all, without paying for the search (a few ms a problem of m = 55 rows that has no
    certificate: 64 degenerate vertices took 174 ms); a problem that stalled or broke down before
    its budget, or used the whole default budget, is searched.
    """
    # (MAX_ITER and NUMERICAL_ERROR are the two largest codes: one reduction decides the common case)
    if status.numel() == 0 or int(status.max()) < Status.MAX_ITER:
        return status
    left = unfinished(status, iterations, max_iter)
    if not bool(left.any()):
        return status
    idx = torch.nonzero(left).squeeze(-1)
    sub = data.take(idx)
    primal = farkas_certificates(sub) if data.m else torch.zeros_like(idx, dtype=torch.bool)
    dual = torch.zeros_like(primal)
    if not bool(primal.all()):
        rest = torch.nonzero(~primal).squeeze(-1)
        dual[rest] = descent_rays(sub.take(rest))
    if not bool((primal | dual).any()):
        return status
    status = status.clone()
    status[idx[primal]] = int(Status.PRIMAL_INFEASIBLE)
    status[idx[dual]] = int(Status.DUAL_INFEASIBLE)
    return status


def unfinished(status: torch.Tensor, iterations: torch.Tensor, max_iter: int) -> torch.Tensor:
    """(B,) bool: the problems that ended MAX_ITER or NUMERICAL_ERROR and deserve more work (this
    search, a float32 problem's float64 re-solve): all of them, except — when the caller lowered
    ``max_iter`` below its default on purpose — those that used the whole budget."""
    left = (status == Status.MAX_ITER) | (status == Status.NUMERICAL_ERROR)
    if max_iter < QPOptions.max_iter:
        left &= iterations < max_iter
    return left


def farkas_certificates(data: QPData) -> torch.Tensor:
    """(B,) bool: whether each problem of ``data`` has a Farkas certificate of infeasibility."""
    eps = tolerances_for(data.dtype).infeasibility_tol
    _, _, Gt, ht, At, bt = _unit_rows64(data)
    # Unknowns z ≥ 0 (rows of [G̃ h̃]) and ν free (rows of [Ã b̃]); residual (G̃ᵀz + Ãᵀν, h̃ᵀz + b̃ᵀν + 1).
    y = _nnls(torch.cat([Gt, ht.unsqueeze(-1)], -1), torch.cat([At, bt.unsqueeze(-1)], -1), eps)
    z, nu = y[:, :data.m], y[:, data.m:]
    ray = (Gt.mT @ z.unsqueeze(-1) + At.mT @ nu.unsqueeze(-1)).squeeze(-1).abs().amax(-1)
    t = -((ht * z).sum(-1) + (bt * nu).sum(-1))
    size = (ht * z).abs().sum(-1) + (bt * nu).abs().sum(-1)
    return (t > 0) & (ray <= eps * t) & (t > eps * size) & torch.isfinite(y).all(-1)


def descent_rays(data: QPData) -> torch.Tensor:
    """(B,) bool: whether each problem of ``data`` has a descent ray (it is unbounded)."""
    eps = tolerances_for(data.dtype).infeasibility_tol
    B, n, m, p = data.B, data.n, data.m, data.p
    Q, q, Gt, _, At, _ = _unit_rows64(data)
    N = n + p + m + 1  # the residual (Qd, Ãd, G̃d + s, qᵀd + 1)
    C = torch.cat([Q, At, Gt, q.unsqueeze(-2)], -2)  # (B, N, n): d's coefficients
    slack = Q.new_zeros(B, m, N)  # s_i's: unit rows in the G̃d block
    slack[:, torch.arange(m), n + p + torch.arange(m)] = 1.0
    # Unknowns s ≥ 0 (rows of `slack`) and d free (rows of Cᵀ).
    y = _nnls(slack, C.mT, eps)
    d = y[:, m:]
    Cd = (C @ d.unsqueeze(-1)).squeeze(-1)
    ray = torch.cat([Cd[:, :n + p].abs(), Cd[:, n + p:n + p + m].clamp_min(0)], -1).amax(-1)
    t = -Cd[:, -1]
    size = (q * d).abs().sum(-1)
    return (t > 0) & (ray <= eps * t) & (t > eps * size) & torch.isfinite(y).all(-1)


def _unit_rows64(data: QPData):
    """(Q, q, G̃, h̃, Ã, b̃) batched in float64, the rows of G and A scaled to unit norm (as the
    interior point sees them)."""
    B = data.B
    f64 = torch.float64
    Q, G, A = (expand_mat(M, B).to(f64) for M in (data.Q, data.G, data.A))
    q, h, b = (expand_vec(v, B).to(f64) for v in (data.q, data.h, data.b))
    gn, an = row_norms(G), row_norms(A)
    return Q, q, G / gn.unsqueeze(-1), h / gn, A / an.unsqueeze(-1), b / an


def _nnls(nonneg: torch.Tensor, free: torch.Tensor, eps: float) -> torch.Tensor:
    """min ‖nonnegᵀu + freeᵀv + e_last‖ over u ≥ 0, v free (the multiplier repair's Lawson–Hanson
    NNLS, every nonnegative unknown allowed): y = (u, v), (B, k + l) for (B, k, N), (B, l, N)."""
    B, k, N = nonneg.shape
    g = nonneg.new_zeros(B, N)
    g[:, -1] = 1.0
    every = torch.ones(B, k, dtype=torch.bool, device=nonneg.device)
    y, _ = repair_multipliers(nonneg, free, g, every, nonneg.new_full((B,), eps))
    return y
