"""Active-set KKT solves: the polish of the interior point, and the warm start.

Given a guess 𝒜 of the active inequality rows of each problem, the point that satisfies the
equality-constrained KKT conditions of that guess,

    Q x + q + G_𝒜ᵀ λ_𝒜 + Aᵀ ν = 0,    G_𝒜 x = h_𝒜,    A x = b,    λ_i = 0 (i ∉ 𝒜),

is one solve with the active-set KKT matrix K of ``kkt.py``. It is accepted as the solution of
the full QP exactly when it satisfies the remaining KKT conditions — primal feasibility of every
row and λ_𝒜 ≥ 0 — to ``polish_tol`` (and its KKT residual is at that level): it is then a KKT
point of the convex QP, hence optimal, whatever produced the guess. So a wrong guess can cost
time but never accuracy.

A rejected guess is corrected like a primal-dual active-set step (rows whose multiplier came out
negative leave, rows the point violates join) and solved again, up to ``rounds`` guesses in all.
Of the violated rows only those join that the interior point's iterate (x̂, λ̂) ranks within a
factor ``JOIN_RATIO`` of the likeliest, by ρᵢ = λ̂ᵢ⁺ / max(ŝᵢ, tol·(1 + ‖h‖)), ŝ = h − Gx̂: a row
that is active at the solution but whose λ̂ᵢ < ŝᵢ (a multiplier below √μ) is violated by the
first guess's point together with rows it holds inactive, and adding them all overshoots
(a grasp QP: two violated rows, ρ = 0.62 and 3.6e-5; with both the next guess failed the sign
test and no later round recovered). Without a ranking (λ̂ = 0, the warm start) every violated
row joins.
With ``repair``, a point that is primal feasible with a small residual but has wrong-signed
multipliers (linearly dependent active rows, e.g. a grasp contact with zero force) gets
nonnegative multipliers by NNLS (``multiplier_repair.py``).

Used by the interior point's polish (guess ``λ_i > s_i`` at its last iterate,
``backends/torch_ipm.py``) and by the warm start (guess from an earlier solution,
``warm_start.py``). csrc/optlayers/qp_ipm.h implements the same rounds per problem.
"""

from __future__ import annotations

import torch

from optlayers._src.qp import kkt
from optlayers._src.qp.linalg import expand_vec, mv
from optlayers._src.qp.multiplier_repair import repair_multipliers
from optlayers._src.qp.problem import QPData
from optlayers._src.status import Status
from optlayers._src.tolerances import tolerances_for

FactorParts = list[tuple[torch.Tensor, kkt.ActiveKKTFactor]]

# Violated rows join a corrected guess only if their ρ (module docstring) is at least JOIN_RATIO
# times the largest ρ among them; csrc/optlayers/qp_ipm.h::kJoinRatio is the same.
JOIN_RATIO = 1e-2


# A converged problem whose final polish rejected every guess keeps the interior point's iterate
# (SOLVED at the solver's tolerance, not at round-off). Such a problem is solved once more at
# RETRY_TOL_FACTOR × the tolerance and polished again (float64; torch_ipm.py::_finish_unpolished,
# csrc/qp_cpu_solve_impl.h and csrc/qp_cuda_binding.cpp: finish_unpolished; qp_ipm.h::kRetryTolFactor):
# its rows whose λ and s were both 1e-6 … 1e-4 at the end separate in a few more iterations.
RETRY_TOL_FACTOR = 1e-2

# The acceptance tolerance of the float64 polish of float32 problems (torch_ipm.py::_float64_polish;
# csrc/optlayers/qp_ipm.h::kFloat32InFloat64PolishTol): ~10 float32 roundings, so rows that pin a
# vertex from both sides, equal only up to float32 rounding (inconsistent by ~1e-8 relative in
# float64), still pass; float32's own polish_tol (5e-5) accepted, on a degenerate vertex with
# dependent active rows, the regularized compromise of an inconsistent guess (KKT residual 4e-4, x
# off by 9e-3: hard_qps("degenerate_vertex", 64, seed=2) #37, native serial path, AVX-512 build).
FLOAT32_IN_FLOAT64_POLISH_TOL = 1e-6


def unpolished(data: QPData, x: torch.Tensor, lam: torch.Tensor, status: torch.Tensor) -> torch.Tensor:
    """(B,) bool: SOLVED problems whose (x (B, n), λ (B, m)) is an interior-point iterate, not a
    polished point — some row has λᵢ > 0 and a slack hᵢ − gᵢᵀx above √polish_tol · (1 + ‖h‖∞).
    A polished point has λᵢ = 0 exactly off its active set, and slacks at round-off on it; an
    interior-point iterate has every λᵢ > 0 (λᵢsᵢ ≈ μ), so any clearly inactive row shows it."""
    if data.m == 0:
        return torch.zeros_like(status, dtype=torch.bool)
    h = expand_vec(data.h, data.B)
    gap = tolerances_for(data.dtype).polish_tol ** 0.5 * (1 + h.abs().amax(-1, keepdim=True))
    loose = ((lam > 0) & (h - mv(data.G, x) > gap)).any(-1)
    return loose & (status == Status.SOLVED)


def _join_rank(data: QPData, x: torch.Tensor, lam: torch.Tensor, tol: float) -> torch.Tensor:
    """ρ (B, m) = λ̂⁺ / max(h − Gx̂, tol·(1 + ‖h‖∞)) at the iterate (x̂, λ̂) that made the guess."""
    h = expand_vec(data.h, data.B)
    floor = tol * (1 + h.abs().amax(-1, keepdim=True))
    return lam.clamp_min(0) / torch.maximum(h - mv(data.G, x), floor)


def _joining(violated: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The violated rows (k, m) that join: ρ ≥ JOIN_RATIO · max ρ over the problem's violated rows,
    or all of them where that maximum is 0, infinite or NaN (no ranking)."""
    r = rank.masked_fill(~violated, 0.0)
    best = r.amax(-1, keepdim=True)
    ranked = (best > 0) & torch.isfinite(best)
    return violated & (~ranked | (r >= JOIN_RATIO * best))


def solve_active_sets(data: QPData, mask: torch.Tensor, pending: torch.Tensor, x, lam, nu, status,
                      rounds: int, repair: bool = True, solver: str = "torch", polish_tol: float | None = None):
    """Try the active-set guesses ``mask`` (B, m) for the problems ``pending`` (k,) int64.

    ``x`` (B, n), ``lam`` (B, m), ``nu`` (B, p), ``status`` (B,) are what the problems not
    accepted keep. Returns ``(x, lam, nu, status, parts)``: accepted problems get their KKT point
    and status SOLVED; ``parts`` lists ``(indices, factor)`` — each round's accepted problems
    (those not repaired) and their KKT factors, for the backward pass. ``mask`` is not modified.
    ``solver``: ``"torch"`` (``kkt.py``'s factor, kept in ``parts``) or ``"native"`` (the C++
    K-solve of csrc/, which refactors per call: ``parts`` stays empty). ``polish_tol``: the
    acceptance tolerance (default: the data's dtype's; float32 problems polished in float64 keep
    float32's).
    """
    tol = tolerances_for(data.dtype).polish_tol if polish_tol is None else polish_tol
    B, n, m = data.B, data.n, data.m
    mask_all = mask.to(data.dtype)
    if mask_all is mask:
        mask_all = mask_all.clone()  # corrected in place below
    factors: FactorParts = []
    rank = None  # ρ of every problem, computed at the first correction (the pending rows of x,
    # lam keep the caller's iterate: only accepted problems are overwritten)
    for round_ in range(rounds):
        k = pending.numel()
        if k == 0:
            break
        whole = k == B
        d = data if whole else data.take(pending)
        guess = mask_all if whole else mask_all[pending]
        h, q, b = expand_vec(d.h, k), expand_vec(d.q, k), expand_vec(d.b, k)
        rhs = torch.cat([-q, guess * h, b], -1)
        if solver == "native":
            from optlayers._src.native import ops

            fac = None
            u = ops.kkt_solve(d, guess, rhs)
            r = rhs - kkt.matvec(d, guess, u)
        else:
            fac = kkt.factor(d, guess)
            u, r = kkt.solve_with_residual(d, fac, rhs)
        xp, lp, yp = u[:, :n], guess * u[:, n:n + m], u[:, n + m:]
        excess = mv(d.G, xp) - h
        # Accept where  ‖excess₊‖ ≤ tol(1 + ‖h‖),  −min λ ≤ tol(1 + ‖λ‖),  ‖r‖ ≤ tol(1 + ‖rhs‖)
        # and u is finite (0·u.sum() is NaN otherwise, which fails the test).
        na = torch.stack([excess.clamp_min(0), h, lp], 1).abs().amax(-1)
        nb = torch.stack([r, rhs], 1).abs().amax(-1)
        lhs = torch.stack([na[:, 0], -lp.amin(-1), nb[:, 0] + 0 * u.sum(-1)], -1)
        passes = lhs <= tol * (1 + torch.stack([na[:, 1], na[:, 2], nb[:, 1]], -1))
        ok = passes.all(-1)
        repaired = torch.zeros_like(ok)
        sign_only = ~ok & passes[:, 0] & passes[:, 2] if repair else repaired
        if bool(sign_only.any()):
            js = torch.nonzero(sign_only).squeeze(-1)
            dj = d.take(js)
            gj = mv(dj.Q, xp[js]) + q[js]
            y, fixed = repair_multipliers(dj.G, dj.A, gj, guess[js] > 0, tol * (1 + nb[js, 1]))
            jf = js[fixed]
            lp, yp = lp.clone(), yp.clone()
            lp[jf], yp[jf] = y[fixed, :m], y[fixed, m:]
            ok[jf] = True
            repaired[jf] = True
        if whole and round_ == 0 and bool(ok.all()) and not bool(repaired.any()):  # the common case
            status = torch.full_like(status, int(Status.SOLVED))
            return xp, lp.clamp_min(0), yp, status, [] if fac is None else [(pending, fac)]
        if round_ == 0:
            x, lam, nu, status = x.clone(), lam.clone(), nu.clone(), status.clone()
        done = pending[ok]
        x[done], lam[done], nu[done] = xp[ok], lp[ok].clamp_min(0), yp[ok]
        status[done] = int(Status.SOLVED)
        with_factor = ok & ~repaired
        if fac is not None:
            factors.append((pending[with_factor], fac.take(torch.nonzero(with_factor).squeeze(-1))))
        # Correct the guess of the rejected ones and try again.
        bad = ~ok
        # A row joins only if the acceptance test counts it as violated: with `excess > 0` rows at
        # rounding level (excess 1e-22 on a degenerate grasp QP) joined, the next guess was wrong
        # and the problem kept its interior-point x, 3e-5 off. Same rule in csrc/.
        violated = excess > tol * (1 + na[:, 1:2])
        if rank is None:
            rank = _join_rank(data, x, lam, tol)
        joining = _joining((guess == 0) & violated, rank if whole else rank[pending])
        corrected = ((guess > 0) & (lp >= 0)) | joining  # (ok rows: not used)
        mask_all[pending[bad]] = corrected[bad].to(mask_all.dtype)
        pending = pending[bad]
    return x, lam, nu, status, factors


def merge_factors(data: QPData, parts: FactorParts) -> kkt.ActiveKKTFactor | None:
    """One batch-wide factor from per-round pieces; None if some problem has none (not polished)."""
    B = data.B
    covered = sum(idx.numel() for idx, _ in parts)
    # Factors of both kinds only if OPTLAYERS_TORCH_KKT changed during the solve.
    if covered != B or len({f.is_cholesky for _, f in parts}) > 1:
        return None
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    lu = first.lu.new_empty((B,) + first.lu.shape[1:])
    piv = first.pivots.new_empty((B,) + first.pivots.shape[1:])
    mask = first.mask.new_empty((B,) + first.mask.shape[1:])
    delta = first.delta.new_empty(B)
    for idx, f in parts:
        lu[idx], piv[idx], mask[idx], delta[idx] = f.lu, f.pivots, f.mask, f.delta
    return kkt.ActiveKKTFactor(lu=lu, pivots=piv, mask=mask, delta=delta)
