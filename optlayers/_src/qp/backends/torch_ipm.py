"""Pure-PyTorch batched primal-dual interior-point method (Mehrotra predictor-corrector).

Same code on CPU and CUDA, float32 and float64. For each problem of the batch we solve

    minimize ½xᵀQx + qᵀx   s.t.   Ax = b,   Gx + s = h,   s ≥ 0

with multipliers ν (equalities) and z ≥ 0 (inequalities). The perturbed KKT conditions

    r_d = Qx + q + Gᵀz + Aᵀν = 0,   r_p = Gx + s − h = 0,   r_e = Ax − b = 0,   s∘z = σμ1

are followed by Newton steps. Eliminating ds and dz (W = diag(z/s)) leaves the reduced system

    (Q + GᵀWG) dx + Aᵀdν = r₁ := −r_d − Gᵀ(W r_p − r_c/s),      A dx = −r_e,

solved by a Cholesky factor L of K = Q + GᵀWG (+δI) and, for the equalities, a Cholesky factor
of the Schur complement S = A K⁻¹ Aᵀ = VᵀV with V = L⁻¹Aᵀ (+δI). Then dz = W(G dx + r_p) − r_c/s, ds = −r_p − G dx.
Mehrotra's predictor (r_c = s∘z) gives σ = (μ_aff/μ)³; the corrector uses
r_c = s∘z + ds_aff∘dz_aff − σμ1 with the same factors (Nocedal & Wright, Alg. 16.4 / §14.2).

Rows of G and A are scaled to unit norm for the iteration (this changes only the multipliers,
which are scaled back). Problems that converge, or are certified infeasible, leave the working
batch, so finished problems stop costing work. At the end, an active-set *polish* (see
``kkt.py``) solves the KKT system of the identified active set exactly; its factor (float64: the
reduced Cholesky of ``kkt.py``, float32: LU) is handed to the backward pass.

Infeasibility certificates (checked on the iterates, which diverge along them):
  primal: z ≥ 0, ν with ‖Gᵀz + Aᵀν‖_∞ < ε·t where t = −(hᵀz + bᵀν) (so t > 0) — by weak
          duality no feasible point of norm ‖x‖₁ < 1/ε exists;
  dual:   x with ‖Qx‖_∞, ‖Ax‖_∞, max(Gx)₊ < ε·t where t = −qᵀx (so t > 0) — a descent ray.
"""

from __future__ import annotations

import dataclasses

import torch

from optlayers._src.qp import active_set, certificates, kkt
from optlayers._src.qp.backends import RawSolution
from optlayers._src.qp.linalg import OUTER_PRODUCTS_MAX, expand_vec, inf_norm, mtv, mv, row_norms
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import QPData
from optlayers._src.qp.threads import intra_op_threads
from optlayers._src.status import Status
from optlayers._src.tolerances import tolerances_for

# A problem whose merit max(pres, dres, gap), complementarity sᵀz, infeasibility-certificate
# ratio and residual max(pres, dres) have all not dropped below STALL_DECREASE × their best values
# for STALL_ITERS consecutive iterations leaves the loop as MAX_ITER (then polish may still solve
# it). This matters in float32, where rounding floors the residuals near ~1e-5. (The residual
# counts on its own because the merit's gap term can rise for a while when the solution is far
# from the start: a float64 QP with ‖x*‖ = 4.6e4 was stopped at iteration 12 while its dual
# residual fell 0.09 → 1e-4; it converges at 14.)
STALL_ITERS = 5
STALL_DECREASE = 0.9
# Active-set guesses tried by the polish (the first plus corrections); same in csrc/.
POLISH_ROUNDS = 3
# Early polish (as in csrc/optlayers/qp_ipm.h): once a problem's merit is below polish_start, its
# active set is usually final; a polish attempt of EARLY_POLISH_ROUNDS rounds, accepted only by the
# same KKT test as the final polish, then finishes it exactly and saves the last interior-point
# iterations. A rejected attempt only costs time.
# A problem whose early attempt is rejected gets no second one (each attempt is a batched KKT
# factorization); and when most of a sizeable attempt is rejected — degenerate active sets, e.g. grasp
# QPs with zero-force contacts, which need the final polish's correction rounds — the solve stops
# trying early (measured on 4,800 grasp QPs: 20% accepted, and the attempts made the solve ~40%
# slower; on random_qp batches nearly all are accepted and the torch backend needs 25–35% fewer
# iterations).
EARLY_POLISH_ROUNDS = 1
EARLY_POLISH_MIN_ACCEPT = 0.5
EARLY_POLISH_MIN_BATCH = 16
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

    # Under torch.compile the interior point runs eagerly (a graph break): its loop is data-dependent
    # throughout, and Dynamo turned `status == Status.SOLVED` (an IntEnum) into a Python bool.
    @torch.compiler.disable
    def solve(self, data: QPData, options: QPOptions) -> RawSolution:
        with intra_op_threads(data):
            sol = interior_point(data, options)
            if data.dtype == torch.float32 and options.polish:
                sol = _finish_in_float64(data, sol, options)
            elif data.dtype == torch.float64 and options.polish:
                sol = _finish_unpolished(data, sol, options)
            return sol


def _scaled(data: QPData) -> tuple[QPData, torch.Tensor, torch.Tensor]:
    """Data with unit-norm rows of G and A, and the row norms (to unscale the multipliers)."""
    gn, an = row_norms(data.G), row_norms(data.A)
    sdata = dataclasses.replace(
        data, G=data.G / gn.unsqueeze(-1), h=data.h / gn, A=data.A / an.unsqueeze(-1), b=data.b / an
    )
    return sdata, gn, an


# Floor of the starting s and z relative to max|h − Gx⁰| (see _balanced_start); same in csrc/.
START_FLOOR = 0.1


def _balanced_start(s0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting slacks and multipliers (B, m) from s⁰ = h̃ − G̃x⁰, z⁰ = −s⁰ (x⁰: the W = I point).

    Mehrotra's balanced shift (Nocedal & Wright §14.2), the same expressions as
    csrc/optlayers/qp_ipm.h's ``start_balance``:

        s̃ = s⁰ + max(−min s⁰, 0),   z̃ = z⁰ + max(−min z⁰, 0)                (both ≥ 0)
        s = max(s̃ + ½ s̃ᵀz̃ / Σz̃, f),   z = max(z̃ + ½ s̃ᵀz̃ / Σs̃, f),   f = START_FLOOR · max|s⁰|

    (f = 1 where s⁰ = 0; without a positive s̃ᵀz̃ — one row, or all of s⁰ equal — only the floor
    lifts the pairs that s̃, z̃ leave at 0). Unlike shifting both to ≥ 1 (the rule before), this
    follows the data's scale: grasp QPs, whose active multipliers are 1e-4 … 1e-2, start at μ ≈ 0.1
    rather than 2 and need 2.4 fewer iterations (11.4 → 9.0 on 4,800 of them); random_qp's planted
    problems (multipliers O(1)) need the same number (±0.2).
    """
    smin, smax = s0.amin(-1, keepdim=True), s0.amax(-1, keepdim=True)
    st = s0 + (-smin).clamp_min(0.0)
    zt = -s0 + smax.clamp_min(0.0)
    sz = (st * zt).sum(-1, keepdim=True)
    pos = sz > 0
    # (where sz = 0 the quotients are not used; the denominators are then replaced to avoid 0/0)
    ds = torch.where(pos, 0.5 * sz / torch.where(pos, zt.sum(-1, keepdim=True), 1.0), 0.0)
    dz = torch.where(pos, 0.5 * sz / torch.where(pos, st.sum(-1, keepdim=True), 1.0), 0.0)
    r = torch.maximum(-smin, smax)
    floor = torch.where(r > 0, START_FLOOR * r, 1.0)
    return torch.maximum(st + ds, floor), torch.maximum(zt + dz, floor)


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
        return _regrow(K, delta, L, failed)
    return L, torch.ones_like(failed)


def _regrow(K: torch.Tensor, delta: torch.Tensor, L: torch.Tensor, failed: torch.Tensor):
    """Second try for the problems whose Cholesky of ``K`` (already shifted by δ) failed."""
    diag = K.diagonal(dim1=-2, dim2=-1)
    rel = torch.finfo(K.dtype).eps ** 0.5
    shift = torch.maximum(REG_GROWTH * delta, rel * diag.amax(-1)) - delta
    diag += shift.unsqueeze(-1)
    L2, info2 = torch.linalg.cholesky_ex(K)
    L = torch.where(failed[:, None, None], L2, L)
    return L, ~(failed & (info2 > 0))


def _mv_col(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``M v`` for a column ``v`` (B, c, 1) → (B, r) (M shared (r, c) or batched)."""
    if M.dim() == 2:
        return torch.mm(v.squeeze(-1), M.t())
    return torch.bmm(M, v).squeeze(-1)


def _neg_rhs(c: torch.Tensor, Mt: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``−c − Mᵀv`` as a column (B, cols, 1), for c: (B, cols), v: (B, rows); ``Mt`` = Mᵀ
    (shared (cols, rows) or batched)."""
    if Mt.dim() == 2:
        return torch.addmm(c, v, Mt.t(), beta=-1, alpha=-1).unsqueeze(-1)
    return torch.baddbmm(c.unsqueeze(-1), Mt, v.unsqueeze(-1), beta=-1, alpha=-1)


class _Factor:
    """Factors of the reduced Newton matrix, shared by every right-hand side of an iteration.

    ``K`` = Q + GᵀWG + δI (a fresh (B, n, n) tensor, consumed) and ``A`` (shared or batched).
    L Lᵀ = K; with equalities, V = L⁻¹Aᵀ and Ls Lsᵀ = S + δI with the Schur complement
    S = A K⁻¹ Aᵀ = VᵀV (symmetric positive semidefinite by construction). ``ok``: None when
    every factorization succeeded, else (B,) bool (False where even the grown shift failed).
    """

    def __init__(self, K: torch.Tensor, w: "_Work"):
        self.p = p = w.At.shape[-1]
        self.ok = None
        # Both Cholesky factorizations first, then one host sync for both (the common case).
        L, info = torch.linalg.cholesky_ex(K)
        if p:
            V = torch.linalg.solve_triangular(L, w.At, upper=False)
            Ls, info_s = torch.linalg.cholesky_ex(torch.baddbmm(w.Dp, V.mT, V))
            info = info + info_s
        if bool(info.any()):  # rare: redo with the grown shift where needed
            delta = w.delta
            K.diagonal(dim1=-2, dim2=-1).sub_(delta.unsqueeze(-1))
            L, ok = _cholesky(K, delta)
            if p:
                V = torch.linalg.solve_triangular(L, w.At, upper=False)
                Ls, ok_s = _cholesky(torch.bmm(V.mT, V), delta)
                ok = ok & ok_s
            self.ok = ok
        self.L, self.Lt = L, L.mT
        if p:
            self.V, self.Vt, self.Ls, self.Lst = V, V.mT, Ls, Ls.mT

    def solve(self, g: torch.Tensor, re: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dx, dy) solving  K dx + Aᵀdy = g,  A dx = re  (g: column (B, n, 1), re: (B, p)).

        With K = LLᵀ, a = L⁻¹g: dy = S⁻¹(Vᵀa − re) and dx = L⁻ᵀ(a − V dy). Returns dx as a
        column (B, n, 1) and dy: (B, p).
        """
        a = torch.linalg.solve_triangular(self.L, g, upper=False)
        if self.p:
            c = torch.baddbmm(re.unsqueeze(-1), self.Vt, a, beta=-1)
            dy = torch.linalg.solve_triangular(
                self.Lst, torch.linalg.solve_triangular(self.Ls, c, upper=False), upper=True
            )
            a = torch.baddbmm(a, self.V, dy, alpha=-1)
            dy = dy.squeeze(-1)
        else:
            dy = re
        return torch.linalg.solve_triangular(self.Lt, a, upper=True), dy


def _gram_plus(Qd: torch.Tensor, G: torch.Tensor, outer: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
    """``Qd + Gᵀ diag(w) G`` per problem, a fresh (B, n, n) tensor (cf. linalg.WeightedGram).

    A shared G with precomputed outer products O (rows g_k g_kᵀ flattened) needs one GEMM,
    ``w @ O``; otherwise one batched product ``Gᵀ (w ∘ G)``.
    """
    B, n = w.shape[0], G.shape[-1]
    if outer is not None:
        return torch.addmm(Qd.reshape(-1, n * n).squeeze(0), w, outer).view(B, n, n)
    Gt = G.mT if G.dim() == 3 else G.mT.expand(B, -1, -1)
    return torch.baddbmm(Qd, Gt, w.unsqueeze(-1) * G)


# The stopping test reads every quantity it needs off one vector per problem,
#
#     out = (rd, Qx, Gᵀz+Aᵀy, q,  rpe, Cx, hb, hb,  qᵀx, hᵀz+bᵀy)     rpe = (Gx+s−h, Ax−b)
#
# with C = [G; A] and hb = (h, b), so that the ∞-norms come from two reductions over views of
# |out|: (B, 4, n) → (‖rd‖, ‖Qx‖, ‖Gᵀz+Aᵀy‖, ‖q‖) and (B, 4, m+p), split into its m and p
# columns → (‖rp‖, ‖Gx‖, ‖h‖, ‖h‖) and (‖re‖, ‖Ax‖, ‖b‖, ‖b‖). For small problems ``out`` is
# one product ``c₀ + R u`` of the iterate u = (x, s, z, y) with a fixed matrix R (rows of zeros
# where ``out`` repeats data); above FUSED_RESIDUAL_MAX numbers of R it is assembled from the
# separate products instead (R would be several times the size of the data).
FUSED_RESIDUAL_MAX = 1 << 19


class _Work:
    """The working batch: every per-problem tensor that compaction must index, and views of them.

    ``C = [G; A]`` (shared (m+p, n) or batched), so ``Cx = (Gx, Ax)`` and ``Cᵀ(z, y) = Gᵀz + Aᵀy``
    are one product each. ``Qd = Q + δI``; ``Dp = δI`` of size p (S + δI = baddbmm(Dp, Vᵀ, V)).
    ``hb = (h, b)``. ``R``, ``c0``: the fused residual operator (or None), see above.
    ``Gs``: G for the products (shared (m, n) when G is, else a view of C).
    """

    def __init__(self, Q, Qd, C, G_shared, q, hb, delta, Dp, R, c0, n, m):
        self.Q, self.Qd, self.C, self.G_shared, self.q, self.hb = Q, Qd, C, G_shared, q, hb
        self.delta, self.Dp, self.R, self.c0, self.n, self.m = delta, Dp, R, c0, n, m
        self.Gs = G_shared if G_shared is not None else C[:, :m]
        self.Gst = self.Gs.mT
        A = C[..., m:, :]
        self.At = A.mT if A.dim() == 3 else A.mT.expand(q.shape[0], -1, -1)

    def take(self, kept: torch.Tensor) -> "_Work":
        def t(v, core: int):
            return v[kept] if v is not None and v.dim() > core else v

        return _Work(t(self.Q, 2), t(self.Qd, 2), t(self.C, 2), self.G_shared, self.q[kept], self.hb[kept],
                     self.delta[kept], t(self.Dp, 2), t(self.R, 2), t(self.c0, 1), self.n, self.m)

    def residuals(self, u: torch.Tensor) -> torch.Tensor:
        """The vector ``out`` (B, 4n + 4(m+p) + 2) at the iterate u = (x, s, z, y) (see above)."""
        if self.R is not None:
            if self.R.dim() == 2:
                return torch.addmm(self.c0, u, self.R.t())
            return torch.baddbmm(self.c0.unsqueeze(-1), self.R, u.unsqueeze(-1)).squeeze(-1)
        n, m = self.n, self.m
        x, s, zy = u[:, :n], u[:, n:n + m], u[:, n + m:]
        Qx, Cx, GAz = mv(self.Q, x), mv(self.C, x), mtv(self.C, zy)
        rpe = Cx - self.hb
        rpe[:, :m] += s
        dots = torch.stack([(x * self.q).sum(-1), (self.hb * zy).sum(-1)], -1)
        return torch.cat([Qx + GAz + self.q, Qx, GAz, self.q, rpe, Cx, self.hb, self.hb, dots], -1)


def _work_of(d: QPData, delta: torch.Tensor) -> _Work:
    B, n, m, p = d.B, d.n, d.m, d.p
    mats_batched = d.is_batched("Q") or d.is_batched("G") or d.is_batched("A")
    if mats_batched:
        Qd = d.Q + torch.diag_embed(delta.unsqueeze(-1).expand(B, n))
    else:  # every matrix shared: so is the data scale, hence δ
        Qd = d.Q + delta[0] * torch.eye(n, dtype=d.dtype, device=d.device)
    G, A = d.G, d.A
    if G.dim() != A.dim():
        G, A = G.expand(B, -1, -1), A.expand(B, -1, -1)
    C = torch.cat([G, A], -2)
    eye_p = torch.eye(p, dtype=d.dtype, device=d.device)
    Dp = delta[:, None, None] * eye_p if mats_batched else delta[0] * eye_p
    q, h, b = expand_vec(d.q, B), expand_vec(d.h, B), expand_vec(d.b, B)
    hb = torch.cat([h, b], -1)
    R = c0 = None
    mp, nu = m + p, n + 2 * m + p
    nr = 4 * n + 4 * mp + 2
    vecs_batched = d.is_batched("q") or d.is_batched("h") or d.is_batched("b")
    if (B if mats_batched or vecs_batched else 1) * nr * nu <= FUSED_RESIDUAL_MAX:
        R = d.q.new_zeros((B, nr, nu) if mats_batched or vecs_batched else (nr, nu))
        xs, ss, zs, ys = slice(0, n), slice(n, n + m), slice(n + m, n + 2 * m), slice(n + 2 * m, nu)
        o = 4 * n
        for rows in (slice(0, n), slice(n, 2 * n)):  # rd, Qx
            R[..., rows, xs] = d.Q
        for rows in (slice(0, n), slice(2 * n, 3 * n)):  # rd, Gᵀz + Aᵀy
            R[..., rows, zs] = d.G.mT
            R[..., rows, ys] = d.A.mT
        for rows in (slice(o, o + mp), slice(o + mp, o + 2 * mp)):  # rpe, Cx
            R[..., rows, xs] = C
        R[..., o:o + m, ss].diagonal(dim1=-2, dim2=-1).fill_(1.0)
        R[..., nr - 2, xs] = d.q
        R[..., nr - 1, zs] = d.h
        R[..., nr - 1, ys] = d.b
        zn, zmp = q.new_zeros(B, 2 * n), q.new_zeros(B, mp)
        c0 = torch.cat([q, zn, q, -hb, zmp, hb, hb, q.new_zeros(B, 2)], -1)
    return _Work(d.Q, Qd, C, None if d.G.dim() == 3 else d.G, q, hb, delta, Dp, R, c0, n, m)


def interior_point(data: QPData, options: QPOptions) -> RawSolution:
    """Solve every problem of ``data`` (detached, canonical). See the module docstring.

    Implementation notes — on CPU, small batches cost per-op overhead, so the loop is written in
    few ops: the iterate is one tensor u = (x, s, z, y); the stopping test reads off one vector
    (see ``_Work``); the step to the boundary is α = 1 / max(1, max_i(−dv_i / v_i)) over v = (s, z)
    (the same number as min over dv_i < 0 of −v_i / dv_i); both Cholesky factorizations of an
    iteration share one host sync, and the loop has one more (did any problem finish?).
    """
    B, n, m, p = data.B, data.n, data.m, data.p
    dtype, device = data.dtype, data.device
    tol = options.tol_for(dtype)
    tols = tolerances_for(dtype)
    eps_inf = tols.infeasibility_tol
    step_frac = tols.step_to_boundary

    if B == 0:
        z = data.q.new_zeros
        return RawSolution(x=z(0, n), lam=z(0, m), nu=z(0, p), status=torch.zeros(0, dtype=torch.int8, device=device),
                           iterations=torch.zeros(0, dtype=torch.int32, device=device))
    if m == 0:
        return _equality_only(data)

    sdata, gnorm, anorm = _scaled(data)
    delta = (tols.kkt_reg * kkt._data_scale(sdata)).contiguous()
    w = _work_of(sdata, delta)
    outer = None
    if w.Gs.dim() == 2 and m * n * n <= OUTER_PRODUCTS_MAX:
        outer = (w.Gs.unsqueeze(-1) * w.Gs.unsqueeze(-2)).reshape(m, n * n)
    mp = m + p
    o_cx, o_ax = 4 * n + mp, 4 * n + mp + m  # offsets of Cx and Ax in `out`
    sz_cols = slice(n, n + 2 * m)

    # Initial point: x, y from the Newton system with W = I and right-hand side (−q + Gᵀh, b);
    # s = h − Gx, z = −s, shifted and balanced (_balanced_start).
    fac = _Factor(_gram_plus(w.Qd, w.Gs, outer, w.hb.new_ones(B, m)), w)
    h_w, b_w = w.hb[:, :m], w.hb[:, m:]
    x, y = fac.solve(_neg_rhs(w.q, w.Gst, -h_w), b_w)
    x = x.squeeze(-1)
    s, z = _balanced_start(h_w - mv(w.Gs, x))
    u = torch.cat([x, s, z, y], -1)  # (B, n + 2m + p)

    u_out = data.q.new_zeros(B, n + 2 * m + p)
    status = torch.full((B,), int(Status.MAX_ITER), dtype=torch.int8, device=device)
    iters = torch.zeros(B, dtype=torch.int32, device=device)
    idx = torch.arange(B, device=device)
    best = torch.full((B,), float("inf"), dtype=dtype, device=device)
    best_sz = torch.full((B,), float("inf"), dtype=dtype, device=device)
    best_cert = torch.full((B,), float("inf"), dtype=dtype, device=device)
    best_res = torch.full((B,), float("inf"), dtype=dtype, device=device)
    early = early_on = options.polish and tols.polish_start > tol
    if early:
        loose = torch.full((B,), tols.polish_start, dtype=dtype, device=device)  # per working problem
        early_x, early_lam, early_nu = data.q.new_zeros(B, n), data.q.new_zeros(B, m), data.q.new_zeros(B, p)
        early_done = torch.zeros(B, dtype=torch.bool, device=device)
        early_parts: list[tuple[torch.Tensor, kkt.ActiveKKTFactor]] = []
    nstall = torch.zeros(B, dtype=dtype, device=device)
    broke = None  # (B,) bool once some iterate broke or some reduced matrix could not be factored
    # The iterate of lowest merit so far: what an iteration-limited problem hands to the polish.
    # In float32 the last iterates can drift away from it — the residuals climb back from the
    # rounding floor while sᵀz keeps falling (a degenerate grasp QP: dual residual 1e-7 → 6e-3 over
    # 30 iterations) — and the polish's active-set guess from such an iterate is wrong.
    u_best, merit_best = u, torch.full((B,), float("inf"), dtype=dtype, device=device)
    # Right-hand sides of the exit test (see the loop): columns 1-2 are written per iteration.
    tol_up = torch.nextafter(torch.tensor(tol, dtype=dtype), torch.tensor(float("inf"), dtype=dtype))
    rhs = torch.tensor([float(tol_up), 0.0, 0.0, 0.5 - STALL_ITERS], dtype=dtype, device=device).repeat(B, 1)
    rhs_cert = rhs[:, 1:3]

    for it in range(options.max_iter + 1):
        out = w.residuals(u)
        aout = out.abs()
        nd = aout[:, :4 * n].view(-1, 4, n).amax(-1)  # ‖rd‖, ‖Qx‖, ‖Gᵀz+Aᵀy‖, ‖q‖
        T = aout[:, 4 * n:4 * n + 4 * mp].view(-1, 4, mp)
        # (B, 2 or 3, 4): rows (rd, Qx, Gᵀz+Aᵀy, q), (rp, Gx, h, h), (re, Ax, b, b)
        N = torch.stack([nd, T[..., :m].amax(-1)] + ([T[..., m:].amax(-1)] if p else []), 1)
        # dres = ‖rd‖ / (1 + max(‖Qx‖, ‖Gᵀz+Aᵀy‖, ‖q‖)), pres = max over the rp and re rows.
        rel = N[..., 0] / (1 + N[..., 1:].amax(-1))
        x, s, z = u[:, :n], u[:, n:n + m], u[:, n + m:n + 2 * m]
        sz = torch.linalg.vecdot(s, z)
        # gap = sᵀz / (1 + |½xᵀQx + qᵀx|)
        gap = sz / (1 + (0.5 * torch.linalg.vecdot(x, out[:, n:2 * n]) + out[:, -2]).abs())
        # Broken iterates (NaN/Inf anywhere in u) get a NaN merit: 0·(non-finite) = NaN.
        merit = torch.maximum(rel.amax(-1), gap) + 0 * u.sum(-1)
        # Certificates (see module docstring) with t_p = −(hᵀz + bᵀy) and t_d = −qᵀx:
        # primal  ‖Gᵀz + Aᵀy‖ < ε t_p,  dual  max(‖Qx‖, ‖Ax‖, max(Gx)₊) < ε t_d.
        ray = torch.maximum(N[:, 0::2, 1].amax(-1), out[:, o_cx:o_ax].amax(-1).clamp_min(0))
        t_d, t_p = (-out[:, -2:]).unbind(-1)
        inf = torch.full_like(merit, float("inf"))
        cert = torch.minimum(torch.where(t_p > 0, nd[:, 2] / t_p, inf), torch.where(t_d > 0, ray / t_d, inf))
        # Progress: the merit, sᵀz or the certificate ratio fell by STALL_DECREASE. The merit alone
        # is not enough: its gap term is relative to 1 + |f(x)| and can rise while f(x) moves
        # towards a small optimum although sᵀz falls geometrically; and on an infeasible problem
        # the merit grows while the certificate ratio falls (without these, vertex solutions and
        # infeasible problems were stopped as MAX_ITER).
        res = rel.amax(-1)
        improved = ((merit < STALL_DECREASE * best) | (sz < STALL_DECREASE * best_sz)
                    | (cert < STALL_DECREASE * best_cert) | (res < STALL_DECREASE * best_res))
        best = torch.where(improved, torch.minimum(merit, best), best)
        best_sz = torch.where(improved, torch.minimum(sz, best_sz), best_sz)
        best_cert = torch.where(improved, torch.minimum(cert, best_cert), best_cert)
        best_res = torch.where(improved, torch.minimum(res, best_res), best_res)
        nstall = (nstall - 1).masked_fill_(improved, 0)  # −(iterations without progress)
        lower = merit < merit_best
        merit_best = torch.where(lower, merit, merit_best)
        u_best = torch.where(lower.unsqueeze(-1), u, u_best)
        # One comparison decides whether a problem goes on; every column must hold:
        #   merit > tol (not converged; False for a NaN merit),  ray ≥ ε t_d,
        #   ‖Gᵀz + Aᵀy‖ ≥ ε t_p,  stall < STALL_ITERS.
        torch.mul(out[:, -2:], -eps_inf, out=rhs_cert)  # rhs columns 1-2; 0 and 3 are constants
        go_on = torch.stack([merit, ray, nd[:, 2], nstall], -1) >= rhs
        going = go_on.all(-1)
        if early_on:
            cand = going & (merit <= loose)
            if bool(cand.any()):
                ci = torch.nonzero(cand).squeeze(-1)
                gi = idx[ci]
                uc = u[ci]
                gn_i = gnorm[gi] if gnorm.dim() == 2 else gnorm
                an_i = anorm[gi] if anorm.dim() == 2 else anorm
                trial = RawSolution(x=uc[:, :n], lam=uc[:, n + m:n + 2 * m] / gn_i, nu=uc[:, n + 2 * m:] / an_i,
                                    status=torch.full_like(gi, int(Status.MAX_ITER), dtype=torch.int8),
                                    iterations=iters[gi])
                xp, lp, yp, st, parts = _polish(data.take(gi), trial, EARLY_POLISH_ROUNDS, repair=False)
                ok = st == int(Status.SOLVED)
                loose[ci] = torch.where(ok, loose[ci], torch.zeros_like(loose[ci]))  # one attempt each
                accepted = int(ok.sum())
                if ci.numel() >= EARLY_POLISH_MIN_BATCH and accepted < EARLY_POLISH_MIN_ACCEPT * ci.numel():
                    early_on = False
                acc = gi[ok]
                early_x[acc], early_lam[acc], early_nu[acc] = xp[ok], lp[ok], yp[ok]
                early_done[acc] = True
                early_parts += [(gi[j], f) for j, f in parts]
                going = going & ~torch.zeros_like(going).index_fill_(0, ci[ok], True)  # accepted: leave
        finishing = it == options.max_iter or not bool(going.all())
        if finishing:
            going = _without_cancelled_certificates(go_on, going, out, u, w, eps_inf)
            finishing = it == options.max_iter or not bool(going.all())
        if finishing:
            done = ~going if it < options.max_iter else torch.ones_like(going)
            converged, dual_inf, primal_inf = (~go_on[:, :3]).unbind(-1)
            # Precedence: breakdown > solved > primal infeasible > dual infeasible > max iter.
            code = torch.full_like(done, int(Status.MAX_ITER), dtype=torch.int8)
            code[dual_inf] = int(Status.DUAL_INFEASIBLE)
            code[primal_inf] = int(Status.PRIMAL_INFEASIBLE)
            code[converged] = int(Status.SOLVED)
            # A broken iterate (NaN/Inf: float32 diverging near a degenerate solution) leaves like
            # an iteration-limited one with its lowest-merit iterate; the polish decides (see
            # _broken_status). Broken from the start: NUMERICAL_ERROR.
            broken = merit.isnan() & done
            code[broken] = int(Status.MAX_ITER)
            code[broken & merit_best.isinf()] = int(Status.NUMERICAL_ERROR)
            if bool(broken.any()):
                broke = _mark(broke, idx[broken], B)
            kept = torch.nonzero(~done).squeeze(-1)
            u_fin = torch.where((code == int(Status.MAX_ITER)).unsqueeze(-1), u_best, u)
            if kept.numel() == 0 and idx.numel() == B:  # everything finished together
                u_out, status = u_fin, code
                iters.fill_(it)
                break
            gi = idx[done]
            u_out[gi] = u_fin[done]
            status[gi] = code[done]
            iters[gi] = it
            if kept.numel() == 0:
                break
            # Compact the working batch: finished problems cost nothing from here on.
            idx, u, out, sz = idx[kept], u[kept], out[kept], sz[kept]
            best, best_sz, best_cert, best_res = best[kept], best_sz[kept], best_cert[kept], best_res[kept]
            u_best, merit_best = u_best[kept], merit_best[kept]
            nstall, rhs = nstall[kept], rhs[kept]
            if early:
                loose = loose[kept]
            rhs_cert = rhs[:, 1:3]
            w = w.take(kept)
            s, z = u[:, n:n + m], u[:, n + m:n + 2 * m]

        rd, rp, re = out[:, :n], out[:, 4 * n:4 * n + m], out[:, 4 * n + m:4 * n + mp]
        wt = z / s
        fac = _Factor(_gram_plus(w.Qd, w.Gs, outer, wt), w)
        vsz = u[:, sz_cols]
        nrp = -rp
        # Predictor (affine scaling) step, r_c = s∘z: t = W r_p − r_c/s = W r_p − z, and the
        # reduced system  K dx + Aᵀdy = −r_d − Gᵀt,  A dx = −r_e.
        t_a = wt * rp - z
        dx, dy = fac.solve(_neg_rhs(rd, w.Gst, t_a), -re if p else re)
        Gdx = _mv_col(w.Gs, dx)
        # (ds, dz) = (−r_p − G dx, W G dx + t)  (dz = W(G dx + r_p) − r_c/s)
        dsz = torch.cat([nrp - Gdx, torch.addcmul(t_a, wt, Gdx)], -1)
        alpha_a = (-(dsz / vsz).amin(-1)).clamp_min(1.0).reciprocal()
        v_a = torch.addcmul(vsz, alpha_a.unsqueeze(-1), dsz).view(-1, 2, m)
        sigma = (v_a.prod(1).sum(-1) / sz).clamp(0.0, 1.0) ** 3  # (μ_aff / μ)³
        # Corrector step: r_c = s∘z + ds_aff∘dz_aff − σμ1, so t = t_a − (ds_aff∘dz_aff − σμ)/s.
        t = torch.addcdiv(t_a, dsz.view(-1, 2, m).prod(1) - (sigma * sz / m).unsqueeze(-1), s, value=-1)
        dx, dy = fac.solve(_neg_rhs(rd, w.Gst, t), -re if p else re)
        Gdx = _mv_col(w.Gs, dx)
        du = torch.cat([dx.squeeze(-1), nrp - Gdx, torch.addcmul(t, wt, Gdx), dy], -1)
        alpha = step_frac / (-(du[:, sz_cols] / vsz).amin(-1)).clamp_min(step_frac)  # min(1, 0.99 α_max)
        if fac.ok is not None:
            # A reduced matrix that cannot be factored even with the grown shift (float32 near a
            # degenerate solution: K's condition number grows like 1/μ) stops its problem at the
            # current iterate, whose active set is often right: it leaves at the next test as an
            # iteration-limited problem (stall count −∞), the polish gets it like one, and only
            # the polish's acceptance makes it SOLVED — else NUMERICAL_ERROR (see _broken_status).
            # Same rule as csrc/optlayers/qp_ipm.h.
            failed = ~fac.ok
            alpha = alpha.masked_fill(failed, 0.0)  # no step (du and α are garbage, maybe NaN)
            du = du.masked_fill(failed.unsqueeze(-1), 0.0)
            nstall = nstall.masked_fill(failed, float("-inf"))
            broke = _mark(broke, idx[failed], B)
        u = torch.addcmul(u, alpha.unsqueeze(-1), du)

    lam = u_out[:, n + m:n + 2 * m] / gnorm
    nu = u_out[:, n + 2 * m:] / anorm
    sol = RawSolution(x=u_out[:, :n], lam=lam, nu=nu, status=status, iterations=iters)
    if not options.polish:
        return _broken_status(sol, broke)
    if not early or not bool(early_done.any()):
        return _broken_status(polish(data, sol), broke)
    # Some problems were finished by an early polish: polish the others, then merge (solutions
    # and, when every problem has one, the KKT factors for the backward).
    rest = torch.nonzero(~early_done).squeeze(-1)
    x, lam, nu = early_x, early_lam, early_nu
    status = torch.where(early_done, torch.full_like(status, int(Status.SOLVED)), status)
    parts = early_parts
    if rest.numel():
        sub = RawSolution(x=sol.x[rest], lam=sol.lam[rest], nu=sol.nu[rest],
                          status=status[rest], iterations=iters[rest])
        xr, lr, yr, sr, rparts = _polish(data.take(rest), sub, POLISH_ROUNDS)
        x[rest], lam[rest], nu[rest], status[rest] = xr, lr, yr, sr
        parts = parts + [(rest[j], f) for j, f in rparts]
    return _broken_status(RawSolution(x=x, lam=lam, nu=nu, status=status, iterations=iters,
                                      factor=active_set.merge_factors(data, parts)), broke)


def _without_cancelled_certificates(go_on: torch.Tensor, going: torch.Tensor, out: torch.Tensor,
                                    u: torch.Tensor, w: "_Work", eps: float) -> torch.Tensor:
    """Withdraw infeasibility certificates whose value t is cancellation noise; returns ``going``.

    A certificate's value, t_p = −(hᵀz + bᵀy) or t_d = −qᵀx, is a sum of terms that cancel when
    the iterate diverges on a *feasible* problem: in float32, near a degenerate solution whose
    equality is written as two opposite inequalities, z grew to 3e8 on both rows, hᵀz came out
    as 64 (one rounding of 5.7e8) and Gᵀz as exactly 0 — a "certificate" of infeasibility for a
    problem that has a solution. A real one has t well above the rounding of its terms, so a claim
    counts only if t > ε·(|h|ᵀz + |b|ᵀ|y|), resp. t > ε·|q|ᵀ|x| (ε: the infeasibility tolerance).
    A withdrawn claim goes on iterating (``go_on``'s certificate columns are set in place).
    Same rule as csrc/optlayers/qp_ipm.h.
    """
    n, m = w.n, w.m
    claims = ~go_on[:, 1:3]  # (dual, primal)
    size = torch.stack([(w.q * u[:, :n]).abs().sum(-1), (w.hb * u[:, n + m:]).abs().sum(-1)], -1)
    noise = claims & (-out[:, -2:] <= eps * size)
    go_on[:, 1:3] |= noise
    # A withdrawn claim was not an early-polish candidate (``going`` was False), so reviving it
    # cannot undo an accepted early polish.
    return going | (noise.any(-1) & go_on.all(-1))


def _mark(flags: torch.Tensor | None, rows: torch.Tensor, B: int) -> torch.Tensor:
    """``flags`` (a (B,) bool tensor, created on first use) with ``rows`` set."""
    if flags is None:
        flags = torch.zeros(B, dtype=torch.bool, device=rows.device)
    return flags.index_fill_(0, rows, True)


def _broken_status(sol: RawSolution, broke: torch.Tensor | None) -> RawSolution:
    """NUMERICAL_ERROR for the problems whose iterate broke or whose reduced matrix could not be
    factored and that the polish did not finish (``broke``: (B,) bool, or None when none did)."""
    if broke is None:
        return sol
    bad = broke & (sol.status != int(Status.SOLVED))
    if bool(bad.any()):
        sol = dataclasses.replace(sol, status=sol.status.masked_fill(bad, int(Status.NUMERICAL_ERROR)))
    return sol


def polish(data: QPData, sol: RawSolution) -> RawSolution:
    """Active-set polish: solve the KKT system of the identified active set exactly.

    Accepted per problem only if the polished point is primal feasible and its active
    multipliers are non-negative (within ``polish_tol``): it then satisfies every KKT condition,
    so it is optimal and the status becomes SOLVED (this can rescue MAX_ITER problems).

    The first guess is ``λ_i > s_i`` at the interior-point iterate. Near-degenerate problems can
    fool it (a row whose λ_i and s_i have not separated yet); a rejected guess is corrected up to
    ``POLISH_ROUNDS − 1`` times like a primal-dual active-set step — rows whose multiplier came out
    negative leave the set, rows the polished point violates (beyond the acceptance tolerance)
    join it — and re-solved.

    The KKT factor of the accepted active set is returned for the backward pass when every
    candidate problem was accepted (otherwise the backward refactors at the final point).
    """
    x, lam, nu, status, parts = _polish(data, sol, POLISH_ROUNDS)
    covered = sum(j.numel() for j, _ in parts)
    candidates = int(((sol.status == Status.SOLVED) | (sol.status == Status.MAX_ITER)).sum())
    factor = active_set.merge_factors(data, parts) if covered == candidates else None
    return RawSolution(x=x, lam=lam, nu=nu, status=status, iterations=sol.iterations, factor=factor)


def _polish(data: QPData, sol: RawSolution, rounds: int, repair: bool = True):
    """The rounds of :func:`polish` from the interior point's guess ``λ_i > s_i`` for the problems
    that ended SOLVED or MAX_ITER: ``(x, lam, nu, status, parts)`` as in
    :func:`optlayers._src.qp.active_set.solve_active_sets`."""
    mask = kkt.classify_active(sol.lam, expand_vec(data.h, data.B) - mv(data.G, sol.x))
    candidate = (sol.status == Status.SOLVED) | (sol.status == Status.MAX_ITER)
    x, lam, nu, status, parts = active_set.solve_active_sets(data, mask, torch.nonzero(candidate).squeeze(-1),
                                                             sol.x, sol.lam, sol.nu, sol.status, rounds,
                                                             repair=repair)
    if rounds == POLISH_ROUNDS and data.dtype == torch.float32:
        x, lam, nu, status = _float64_polish(data, mask, candidate & (status == Status.MAX_ITER), sol,
                                             x, lam, nu, status)
    return x, lam, nu, status, parts


def _float64_polish(data: QPData, mask, left, sol: RawSolution, x, lam, nu, status):
    """The final polish once more in float64 for the float32 problems it left unsolved (``left``:
    (B,) bool), from the same guess; accepted ones get the float64 KKT point, rounded.

    At a degenerate vertex (more active rows than variables, a float32 grasp QP with a zero-force
    contact) the active-set KKT system is singular up to its regularization, and float32's LU
    missed the polish tolerance on the right active set (residual 5e-3 against 6e-4); the float32
    data are exact in float64, where the same guess passes the test. The test's tolerance is
    ``active_set.FLOAT32_IN_FLOAT64_POLISH_TOL`` (1e-6): rows that pin a vertex from both sides,
    equal only up to float32 rounding, are inconsistent by ~1e-8 in float64, and float32's own 5e-5
    accepted a wrong guess's regularized compromise (x off by 9e-3; see there). Such
    problems have no kept factor (the backward refactors). Same rule in csrc/qp_cpu_solve_impl.h
    (``finish_left_in_double``, step 1); what it leaves goes to :func:`_finish_in_float64`.
    """
    idx = torch.nonzero(left).squeeze(-1)
    if idx.numel() == 0:
        return x, lam, nu, status
    d64 = _in_float64(data, idx)
    k = idx.numel()
    xd, ld, yd, sd, _ = active_set.solve_active_sets(
        d64, mask[idx], torch.arange(k, device=idx.device), sol.x[idx].double(), sol.lam[idx].double(),
        sol.nu[idx].double(), status[idx], POLISH_ROUNDS, polish_tol=active_set.FLOAT32_IN_FLOAT64_POLISH_TOL)
    ok = sd == int(Status.SOLVED)
    if bool(ok.any()):
        done = idx[ok]
        x, lam, nu, status = x.clone(), lam.clone(), nu.clone(), status.clone()
        x[done], lam[done], nu[done] = xd[ok].float(), ld[ok].float(), yd[ok].float()
        status[done] = int(Status.SOLVED)
    return x, lam, nu, status


def _in_float64(data: QPData, idx: torch.Tensor) -> QPData:
    """Problems ``idx`` of ``data`` with every tensor in float64 (exact for float32 data)."""
    sub = data.take(idx)
    return dataclasses.replace(sub, **{f: getattr(sub, f).double() for f in ("Q", "q", "G", "h", "A", "b")})


def _finish_in_float64(data: QPData, sol: RawSolution, options: QPOptions) -> RawSolution:
    """float32 problems the interior point and its float64 polish (:func:`_float64_polish`) left
    unsolved (MAX_ITER, NUMERICAL_ERROR), solved again from scratch in float64 — where the float32
    data are exact — and rounded. On degenerate float32 vertices the float32 iterate's active-set
    guess itself was wrong (3 of 256 ``hard_qps("degenerate_vertex")`` problems; float64 solves
    each). Only a SOLVED outcome is taken: a float64 certificate of infeasibility would judge the
    rounded data at float64's tolerances (vertices pinned by rows equal up to float32 rounding are
    infeasible by ~1e-8 there, feasible at float32's), so other outcomes keep the float32 status.
    Iterations add up; the kept polish factor is dropped when a problem is replaced (the backward
    refactors). A caller who lowered ``max_iter`` below its default gets MAX_ITER for the problems
    that used it all, as in ``certificates.py``. Same rule in csrc/qp_cpu_solve_impl.h
    (``finish_left_in_double``)."""
    idx = torch.nonzero(certificates.unfinished(sol.status, sol.iterations, options.max_iter)).squeeze(-1)
    if idx.numel() == 0:
        return sol
    s64 = interior_point(_in_float64(data, idx), options)
    return _take_solved(sol, idx, s64.status == int(Status.SOLVED), s64)


def _take_solved(sol: RawSolution, idx: torch.Tensor, ok: torch.Tensor, sub: RawSolution) -> RawSolution:
    """``sol`` with problems ``idx[ok]`` replaced by the second solve ``sub`` (over ``idx``; rows
    ``ok``), cast to ``sol``'s dtype: status SOLVED, iterations added up, no kept factor (the
    backward refactors)."""
    if not bool(ok.any()):
        return sol
    done = idx[ok]
    x, lam, nu = sol.x.clone(), sol.lam.clone(), sol.nu.clone()
    x[done], lam[done], nu[done] = (t[ok].to(sol.x.dtype) for t in (sub.x, sub.lam, sub.nu))
    status = sol.status.clone()
    status[done] = int(Status.SOLVED)
    iterations = sol.iterations.clone()
    iterations[done] += sub.iterations[ok].to(iterations.dtype)
    return dataclasses.replace(sol, x=x, lam=lam, nu=nu, status=status, iterations=iterations, factor=None)


def _finish_unpolished(data: QPData, sol: RawSolution, options: QPOptions) -> RawSolution:
    """Converged float64 problems the final polish left at the interior point's iterate
    (:func:`optlayers._src.qp.active_set.unpolished`), solved again from scratch at
    ``RETRY_TOL_FACTOR`` × the tolerance and polished. Taken only where that ends SOLVED and
    polished; otherwise the first solution stays. Iterations add up; the kept polish factor is
    dropped when a problem is replaced (the backward refactors). About 1 in 30,000 grasp QPs
    (``python benchmarks/polish_rate.py``); same rule in csrc/qp_cpu_solve_impl.h and
    csrc/qp_cuda_binding.cpp (``finish_unpolished``)."""
    idx = torch.nonzero(active_set.unpolished(data, sol.x, sol.lam, sol.status)).squeeze(-1)
    if idx.numel() == 0:
        return sol
    sub_data = data.take(idx)
    tighter = dataclasses.replace(options, tol=options.tol_for(data.dtype) * active_set.RETRY_TOL_FACTOR)
    sub = interior_point(sub_data, tighter)
    ok = (sub.status == int(Status.SOLVED)) & ~active_set.unpolished(sub_data, sub.x, sub.lam, sub.status)
    return _take_solved(sol, idx, ok, sub)


def _equality_only(data: QPData) -> RawSolution:
    """No inequalities: one KKT solve ``[Q Aᵀ; A 0](x, ν) = (−q, b)``; no iterations."""
    tols = tolerances_for(data.dtype)
    B, n = data.B, data.n
    mask = data.q.new_zeros(B, 0)
    fac = kkt.factor(data, mask)
    rhs = torch.cat([-expand_vec(data.q, B), expand_vec(data.b, B)], -1)
    u = kkt.solve(data, fac, rhs)
    x, nu = u[:, :n], u[:, n:]
    stat_res = inf_norm(mv(data.Q, x) + expand_vec(data.q, B) + mtv(data.A, nu))
    prim_res = inf_norm(mv(data.A, x) - expand_vec(data.b, B))
    ok_d = stat_res <= tols.polish_tol * (1 + inf_norm(expand_vec(data.q, B)))
    # Relative to the size of the terms of Ax (|A||x|): a huge regularized x (an unbounded
    # problem) must not pass for an inconsistent Ax = b through rounding alone.
    terms = torch.maximum(inf_norm(expand_vec(data.b, B)), inf_norm(mv(data.A.abs(), x.abs())))
    ok_p = prim_res <= tols.polish_tol * (1 + terms)
    finite = torch.isfinite(u).all(-1)
    status = torch.full((B,), int(Status.SOLVED), dtype=torch.int8, device=data.device)
    status = torch.where(ok_d, status, int(Status.DUAL_INFEASIBLE)).to(torch.int8)
    status = torch.where(ok_p, status, int(Status.PRIMAL_INFEASIBLE)).to(torch.int8)
    status = torch.where(finite, status, int(Status.NUMERICAL_ERROR)).to(torch.int8)
    iters = torch.zeros(B, dtype=torch.int32, device=data.device)
    return RawSolution(x=x, lam=x.new_zeros(B, 0), nu=nu, status=status, iterations=iters, factor=fac)
