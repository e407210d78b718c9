"""Pure-PyTorch batched primal-dual interior-point method (Mehrotra predictor-corrector).

Same code on CPU and CUDA, float32 and float64. For each problem of the batch we solve

    minimize ½xᵀQx + qᵀx   s.t.   Ax = b,   Gx + s = h,   s ≥ 0

with multipliers ν (equalities) and z ≥ 0 (inequalities). The perturbed KKT conditions

    r_d = Qx + q + Gᵀz + Aᵀν = 0,   r_p = Gx + s − h = 0,   r_e = Ax − b = 0,   s∘z = σμ1

are followed by Newton steps. Eliminating ds and dz (W = diag(z/s)) leaves the reduced system

    (Q + GᵀWG) dx + Aᵀdν = r₁ := −r_d − Gᵀ(W r_p − r_c/s),      A dx = −r_e,

solved by a Cholesky factor L of K = Q + GᵀWG (+δI) and, for the equalities, a Cholesky factor
of the Schur complement S = A K⁻¹ Aᵀ (+δI). Then dz = W(G dx + r_p) − r_c/s, ds = −r_p − G dx.
Mehrotra's predictor (r_c = s∘z) gives σ = (μ_aff/μ)³; the corrector uses
r_c = s∘z + ds_aff∘dz_aff − σμ1 with the same factors (Nocedal & Wright, Alg. 16.4 / §14.2).

Rows of G and A are scaled to unit norm for the iteration (this changes only the multipliers,
which are scaled back). Problems that converge, or are certified infeasible, leave the working
batch, so finished problems stop costing work. At the end, an active-set *polish* (see
``kkt.py``) solves the KKT system of the identified active set exactly; its LU factor is handed
to the backward pass.

Infeasibility certificates (checked on the iterates, which diverge along them):
  primal: z ≥ 0, ν with ‖Gᵀz + Aᵀν‖_∞ ≤ ε·t where t = −(hᵀz + bᵀν) > 0 — by weak duality no
          feasible point of norm ‖x‖₁ < 1/ε exists;
  dual:   x with ‖Qx‖_∞, ‖Ax‖_∞, max(Gx)₊ ≤ ε·t where t = −qᵀx > 0 — a descent ray.
"""

from __future__ import annotations

import dataclasses

import torch

from optlayers._src.qp import kkt
from optlayers._src.qp.backends import RawSolution
from optlayers._src.qp.linalg import WeightedGram, inf_norm, mtv, mv
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import QPData
from optlayers._src.status import Status
from optlayers._src.tolerances import tolerances_for

# A problem whose merit max(pres, dres, gap) has not dropped below STALL_DECREASE × its best value
# for STALL_ITERS consecutive iterations leaves the loop as MAX_ITER (then polish may still
# solve it). This matters in float32, where rounding floors the residuals near ~1e-5.
STALL_ITERS = 5
STALL_DECREASE = 0.9
# Active-set guesses tried by the polish (the first plus corrections); same in csrc/.
POLISH_ROUNDS = 3
# Second-try Cholesky shift: the larger of REG_GROWTH·δ and √ε·max diag(K). Near the end of an
# interior point cond(K) grows like 1/μ, so in float32 a shift relative to the data scale alone
# cannot absorb the rounding of K itself. Same rule as csrc/optlayers/qp_ipm.h.
REG_GROWTH = 1e4


class TorchIPMBackend:
    name = Backend.TORCH

    def availability(self) -> tuple[bool, str]:
        return True, ""

    def supports(self, data: QPData) -> bool:
        return True

    def auto_eligible(self, data: QPData) -> bool:
        return True

    def solve(self, data: QPData, options: QPOptions) -> RawSolution:
        return interior_point(data, options)


def _row_norms(M: torch.Tensor) -> torch.Tensor:
    """Row norms of a shared (r, c) or batched (B, r, c) matrix; zero rows get norm 1."""
    norms = torch.linalg.vector_norm(M, dim=-1)
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def _scaled(data: QPData) -> tuple[QPData, torch.Tensor, torch.Tensor]:
    """Data with unit-norm rows of G and A, and the row norms (to unscale the multipliers)."""
    gn, an = _row_norms(data.G), _row_norms(data.A)
    sdata = dataclasses.replace(
        data, G=data.G / gn.unsqueeze(-1), h=data.h / gn, A=data.A / an.unsqueeze(-1), b=data.b / an
    )
    return sdata, gn, an


def _cholesky(K: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky of K + δI (δ: (B,)), growing δ once for the problems where it fails.

    ``K`` (a fresh (B, n, n) tensor) is shifted in place. Returns (L, ok) with ok: (B,) bool,
    False where even the larger shift failed.
    """
    diag = K.diagonal(dim1=-2, dim2=-1)
    diag += delta.unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(K)
    failed = info > 0
    if bool(failed.any()):
        rel = torch.finfo(K.dtype).eps ** 0.5
        shift = torch.maximum(REG_GROWTH * delta, rel * diag.amax(-1)) - delta
        diag += shift.unsqueeze(-1)
        L2, info2 = torch.linalg.cholesky_ex(K)
        L = torch.where(failed[:, None, None], L2, L)
        return L, ~(failed & (info2 > 0))
    return L, torch.ones_like(failed)


def _chol_solve_mat(L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """(L Lᵀ)⁻¹ R for R of shape (B, n, k). Two triangular solves: on CPU they are ~2× faster
    than ``torch.cholesky_solve`` for batches of small matrices."""
    Y = torch.linalg.solve_triangular(L, R, upper=False)
    return torch.linalg.solve_triangular(L.mT, Y, upper=True)


def _chol_solve(L: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return _chol_solve_mat(L, r.unsqueeze(-1)).squeeze(-1)


def _max_step(v: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """Largest α ∈ (0, ∞] with v + α dv ≥ 0, per problem (v > 0)."""
    ratio = torch.where(dv < 0, -v / dv, torch.full_like(v, float("inf")))
    return ratio.amin(-1)


class _Newton:
    """Factorization of the reduced Newton system at the current iterate, reused by both steps."""

    def __init__(self, d: QPData, gram: WeightedGram, s: torch.Tensor, z: torch.Tensor, delta: torch.Tensor):
        self.d = d
        self.s = s
        self.w = z / s
        K = d.Q + gram(self.w)  # (B, n, n): W is per problem
        self.L, ok = _cholesky(K, delta)
        self.ok = ok
        if d.p:
            At = d.A.mT.expand(s.shape[0], -1, -1) if d.A.dim() == 2 else d.A.mT
            self.Y = _chol_solve_mat(self.L, At)  # K⁻¹ Aᵀ, (B, n, p)
            S = d.A @ self.Y
            self.Ls, ok_s = _cholesky(S, delta)
            self.ok = self.ok & ok_s

    def step(self, rd, rp, re, rc):
        d, w, s = self.d, self.w, self.s
        r1 = -rd - mtv(d.G, w * rp - rc / s)
        dx = _chol_solve(self.L, r1)
        if d.p:
            dy = _chol_solve(self.Ls, mv(d.A, dx) + re)
            dx = dx - (self.Y @ dy.unsqueeze(-1)).squeeze(-1)
        else:
            dy = rd.new_zeros(rd.shape[0], 0)
        Gdx = mv(d.G, dx)
        dz = w * (Gdx + rp) - rc / s
        ds = -rp - Gdx
        return dx, ds, dz, dy


def _initial_point(d: QPData, gram: WeightedGram, delta: torch.Tensor):
    """x, ν from the Newton system with W = I; s = h − Gx, z = −s, both shifted to be ≥ 1."""
    B = delta.shape[0]
    ones = d.h.new_ones(B, d.m)
    K = d.Q + gram(ones)
    L, _ = _cholesky(K, delta)
    r1 = -d.q + mtv(d.G, d.h.expand(B, -1) if d.h.dim() == 1 else d.h)
    if r1.dim() == 1:
        r1 = r1.expand(B, -1)
    x = _chol_solve(L, r1)
    if d.p:
        At = d.A.mT.expand(B, -1, -1) if d.A.dim() == 2 else d.A.mT
        Y = _chol_solve_mat(L, At)
        Ls, _ = _cholesky(d.A @ Y, delta)
        y = _chol_solve(Ls, mv(d.A, x) - d.b)
        x = x - (Y @ y.unsqueeze(-1)).squeeze(-1)
    else:
        y = x.new_zeros(B, 0)
    s = d.h - mv(d.G, x)
    z = -s
    s = s + (1.0 - s.amin(-1, keepdim=True)).clamp_min(0.0)
    z = z + (1.0 - z.amin(-1, keepdim=True)).clamp_min(0.0)
    return x, s, z, y


def _expand_vec(v: torch.Tensor, B: int) -> torch.Tensor:
    return v.expand(B, -1) if v.dim() == 1 else v


def interior_point(data: QPData, options: QPOptions) -> RawSolution:
    """Solve every problem of ``data`` (detached, canonical). See the module docstring."""
    B, n, m, p = data.B, data.n, data.m, data.p
    dtype, device = data.dtype, data.device
    tol = options.tol_for(dtype)
    tols = tolerances_for(dtype)

    if m == 0:
        return _equality_only(data)

    sdata, gnorm, anorm = _scaled(data)
    delta_full = tols.kkt_reg * kkt._data_scale(sdata)

    x_out = data.q.new_zeros(B, n)
    z_out = data.q.new_zeros(B, m)
    y_out = data.q.new_zeros(B, p)
    status = torch.full((B,), int(Status.MAX_ITER), dtype=torch.int8, device=device)
    iters = torch.zeros(B, dtype=torch.int32, device=device)

    idx = torch.arange(B, device=device)
    d = sdata
    delta = delta_full
    gram = WeightedGram(d.G)
    x, s, z, y = _initial_point(d, gram, delta)
    q_w, h_w, b_w = _expand_vec(d.q, B), _expand_vec(d.h, B), _expand_vec(d.b, B)
    qn, hn, bn = inf_norm(q_w), inf_norm(h_w), inf_norm(b_w)
    best = torch.full((B,), float("inf"), dtype=dtype, device=device)
    stall = torch.zeros(B, dtype=torch.int32, device=device)

    for it in range(options.max_iter + 1):
        Qx, Gx, Ax = mv(d.Q, x), mv(d.G, x), mv(d.A, x)
        Gtz, Aty = mtv(d.G, z), mtv(d.A, y)
        rd = Qx + d.q + Gtz + Aty
        rp = Gx + s - d.h
        re = Ax - d.b
        sz = (s * z).sum(-1)
        mu = sz / m
        qx = (x * q_w).sum(-1)
        gap = sz / (1 + (0.5 * (x * Qx).sum(-1) + qx).abs())
        Gtz_Aty = Gtz + Aty
        nGx, nAx, nQx, nGA = inf_norm(Gx), inf_norm(Ax), inf_norm(Qx), inf_norm(Gtz_Aty)
        pres = torch.maximum(inf_norm(rp) / (1 + torch.maximum(hn, nGx)), inf_norm(re) / (1 + torch.maximum(bn, nAx)))
        dres = inf_norm(rd) / (1 + torch.maximum(torch.maximum(qn, nQx), nGA))
        converged = (pres <= tol) & (dres <= tol) & (gap <= tol)
        # Certificates (see module docstring).
        t_p = -((h_w * z).sum(-1) + (b_w * y).sum(-1))
        primal_inf = (t_p > 0) & (nGA <= tols.infeasibility_tol * t_p)
        ray = torch.maximum(torch.maximum(nQx, nAx), Gx.amax(-1).clamp_min(0))
        dual_inf = (qx < 0) & (ray <= tols.infeasibility_tol * -qx)
        # NaN/Inf anywhere in the iterate makes this sum non-finite.
        broken = ~torch.isfinite(sz + x.sum(-1) + y.sum(-1) + s.sum(-1))
        merit = torch.maximum(torch.maximum(pres, dres), gap)
        improved = merit < STALL_DECREASE * best
        best = torch.where(improved, merit, best)
        stall = torch.where(improved, torch.zeros_like(stall), stall + 1)
        done = converged | primal_inf | dual_inf | broken | (stall >= STALL_ITERS)
        if it == options.max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            # Precedence: breakdown > solved > primal infeasible > dual infeasible > max iter.
            code = torch.full_like(done, int(Status.MAX_ITER), dtype=torch.int8)
            code[dual_inf] = int(Status.DUAL_INFEASIBLE)
            code[primal_inf] = int(Status.PRIMAL_INFEASIBLE)
            code[converged] = int(Status.SOLVED)
            code[broken] = int(Status.NUMERICAL_ERROR)
            gi = idx[done]
            x_out[gi], z_out[gi], y_out[gi] = x[done], z[done], y[done]
            status[gi] = code[done]
            iters[gi] = it
            keep = ~done
            if not bool(keep.any()):
                break
            # Compact the working batch: finished problems cost nothing from here on.
            kept = torch.nonzero(keep).squeeze(-1)
            idx = idx[kept]
            x, s, z, y = x[kept], s[kept], z[kept], y[kept]
            d = d.take(kept)
            gram = gram.take(kept)
            delta = delta[kept]
            q_w, h_w, b_w = q_w[kept], h_w[kept], b_w[kept]
            qn, hn, bn = qn[kept], hn[kept], bn[kept]
            best, stall = best[kept], stall[kept]
            rd, rp, re, mu = rd[kept], rp[kept], re[kept], mu[kept]

        newton = _Newton(d, gram, s, z, delta)
        # Predictor (affine scaling) step.
        dx_a, ds_a, dz_a, dy_a = newton.step(rd, rp, re, s * z)
        alpha_a = torch.minimum(_max_step(s, ds_a), _max_step(z, dz_a)).clamp_max(1.0)
        mu_aff = ((s + alpha_a[:, None] * ds_a) * (z + alpha_a[:, None] * dz_a)).sum(-1) / m
        sigma = (mu_aff / mu).clamp(0.0, 1.0) ** 3
        # Corrector step.
        rc = s * z + ds_a * dz_a - (sigma * mu)[:, None]
        dx, ds, dz, dy = newton.step(rd, rp, re, rc)
        alpha = (tols.step_to_boundary * torch.minimum(_max_step(s, ds), _max_step(z, dz))).clamp_max(1.0)
        # A failed factorization poisons the iterate so the problem is reported, not hidden.
        alpha = torch.where(newton.ok, alpha, torch.full_like(alpha, float("nan")))
        a = alpha[:, None]
        x, s, z, y = x + a * dx, s + a * ds, z + a * dz, y + a * dy

    lam = z_out / gnorm
    nu = y_out / anorm
    sol = RawSolution(x=x_out, lam=lam, nu=nu, status=status, iterations=iters)
    if options.polish:
        sol = polish(data, sol)
    return sol


def polish(data: QPData, sol: RawSolution) -> RawSolution:
    """Active-set polish: solve the KKT system of the identified active set exactly.

    Accepted per problem only if the polished point is primal feasible and its active
    multipliers are non-negative (within ``polish_tol``): it then satisfies every KKT condition,
    so it is optimal and the status becomes SOLVED (this can rescue MAX_ITER problems).

    The first guess is ``λ_i > s_i`` at the interior-point iterate. Near-degenerate problems can
    fool it (a row whose λ_i and s_i have not separated yet); a rejected guess is corrected up to
    ``POLISH_ROUNDS − 1`` times like a primal-dual active-set step — rows whose multiplier came out
    negative leave the set, rows the polished point violates join it — and re-solved.

    The LU factor of the accepted active set is returned for the backward pass when every
    candidate problem was accepted (otherwise the backward refactors at the final point).
    """
    tols = tolerances_for(data.dtype)
    B, n, m = data.B, data.n, data.m
    h_all = _expand_vec(data.h, B)
    x, lam, nu, status = sol.x.clone(), sol.lam.clone(), sol.nu.clone(), sol.status.clone()
    mask_all = kkt.classify_active(sol.lam, h_all - mv(data.G, sol.x))
    candidate = (sol.status == Status.SOLVED) | (sol.status == Status.MAX_ITER)
    pending = torch.nonzero(candidate).squeeze(-1)
    factors: list[tuple[torch.Tensor, kkt.ActiveKKTFactor]] = []
    for _ in range(POLISH_ROUNDS):
        if pending.numel() == 0:
            break
        d = data.take(pending)
        mask = mask_all[pending]
        k = pending.numel()
        h, q, b = _expand_vec(d.h, k), _expand_vec(d.q, k), _expand_vec(d.b, k)
        fac = kkt.factor(d, mask)
        rhs = torch.cat([-q, mask * h, b], -1)
        u = kkt.solve(d, fac, rhs)
        xp, lp, yp = u[:, :n], mask * u[:, n:n + m], u[:, n + m:]
        excess = mv(d.G, xp) - h
        feasible = inf_norm(excess.clamp_min(0)) <= tols.polish_tol * (1 + inf_norm(h))
        dual_ok = (lp.amin(-1) if m else lp.new_zeros(k)) >= -tols.polish_tol * (1 + inf_norm(lp))
        resid = inf_norm(kkt.matvec(d, mask, u) - rhs) <= tols.polish_tol * (1 + inf_norm(rhs))
        ok = feasible & dual_ok & resid & torch.isfinite(u).all(-1)
        done = pending[ok]
        x[done], lam[done], nu[done] = xp[ok], lp[ok].clamp_min(0), yp[ok]
        status[done] = int(Status.SOLVED)
        factors.append((done, fac.take(torch.nonzero(ok).squeeze(-1))))
        # Correct the guess of the rejected ones and try again.
        bad = ~ok
        corrected = ((mask > 0) & (lp >= 0)) | ((mask == 0) & (excess > 0))
        mask_all[pending[bad]] = corrected[bad].to(mask.dtype)
        pending = pending[bad]
    factor = _merge_factors(data, factors) if pending.numel() == 0 else None
    return RawSolution(x=x, lam=lam, nu=nu, status=status, iterations=sol.iterations, factor=factor)


def _merge_factors(data: QPData, parts) -> kkt.ActiveKKTFactor | None:
    """One batch-wide factor from per-round pieces; None if some problem has none (not polished)."""
    B = data.B
    covered = sum(idx.numel() for idx, _ in parts)
    if covered != B:
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


def _equality_only(data: QPData) -> RawSolution:
    """No inequalities: one KKT solve ``[Q Aᵀ; A 0](x, ν) = (−q, b)``; no iterations."""
    tols = tolerances_for(data.dtype)
    B, n = data.B, data.n
    mask = data.q.new_zeros(B, 0)
    fac = kkt.factor(data, mask)
    rhs = torch.cat([-_expand_vec(data.q, B), _expand_vec(data.b, B)], -1)
    u = kkt.solve(data, fac, rhs)
    x, nu = u[:, :n], u[:, n:]
    stat_res = inf_norm(mv(data.Q, x) + _expand_vec(data.q, B) + mtv(data.A, nu))
    prim_res = inf_norm(mv(data.A, x) - _expand_vec(data.b, B))
    ok_d = stat_res <= tols.polish_tol * (1 + inf_norm(_expand_vec(data.q, B)))
    # Relative to the size of the terms of Ax (|A||x|): a huge regularized x (an unbounded
    # problem) must not pass for an inconsistent Ax = b through rounding alone.
    terms = torch.maximum(inf_norm(_expand_vec(data.b, B)), inf_norm(mv(data.A.abs(), x.abs())))
    ok_p = prim_res <= tols.polish_tol * (1 + terms)
    finite = torch.isfinite(u).all(-1)
    status = torch.full((B,), int(Status.SOLVED), dtype=torch.int8, device=data.device)
    status = torch.where(ok_d, status, int(Status.DUAL_INFEASIBLE)).to(torch.int8)
    status = torch.where(ok_p, status, int(Status.PRIMAL_INFEASIBLE)).to(torch.int8)
    status = torch.where(finite, status, int(Status.NUMERICAL_ERROR)).to(torch.int8)
    iters = torch.zeros(B, dtype=torch.int32, device=data.device)
    return RawSolution(x=x, lam=x.new_zeros(B, 0), nu=nu, status=status, iterations=iters, factor=fac)
