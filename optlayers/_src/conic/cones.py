"""Cones of the conic layer, their projections and the derivatives of the projections.

The cone program is in SCS form (see ``canon.py``)::

    minimize ½ xᵀPx + cᵀx   subject to   Ax + s = b,   s ∈ K,         dual:  y ∈ K*,

with ``K`` a product, in this row order, of

    zero cone {0}^z                     (K* = R^z)
    nonnegative orthant R^l_+           (self-dual)
    second-order cones {(t, u): ‖u‖₂ ≤ t} of sizes q_1, q_2, …      (self-dual)
    PSD cones of k×k matrices, stored as svec: the lower triangle in column-major order with
        off-diagonal entries scaled by √2, so that ⟨svec X, svec Y⟩ = tr(XY)   (self-dual)
    exponential cones K_exp = cl{(x, y, z): y e^{x/y} ≤ z, y > 0}    (not self-dual)

The layer's derivative needs ``Π_{K*}`` (projection onto the dual cone) and its Jacobian
``D = DΠ_{K*}``, evaluated at ``w = y − s`` (see ``derivative.py``). Moreau's decomposition
``w = Π_{K*}(w) − Π_K(−w)`` gives ``y = Π_{K*}(w)`` and ``s = Π_K(−w)`` at a solution, and for
the exponential cone ``Π_{K*}(w) = w + Π_K(−w)``, ``DΠ_{K*}(w) = I − DΠ_K(−w)``.

Everything works on batches: ``w`` has shape ``(B, m)``, and the Jacobian is an object that
applies ``D`` matrix-free (``matvec``) or materializes the block-diagonal ``(B, m, m)`` matrix
(``dense``). ``D`` is symmetric with eigenvalues in [0, 1] (it is the Jacobian of a projection
onto a convex set). At points where the projection is not differentiable (measure zero: on the
boundaries between the cases below) a fixed element of the generalized Jacobian is used, chosen
by the non-strict inequalities of each case.

References: Parikh & Boyd, *Proximal Algorithms* (2014) §6.3 (SOC, PSD, exp cone projections);
Friberg, *Projection onto the exponential cone: a univariate root-finding problem* (2021/2023)
(the exp-cone root search used here); Ali, Wong & Kolter, *A semismooth Newton method for fast,
generic convex programming* (2017) and Agrawal et al., *Differentiating through a cone program*
(2019) (Jacobians of the projections).
"""

from __future__ import annotations

import dataclasses
import math
import torch

from optlayers._src.conic import options as _opt

SQRT2 = math.sqrt(2.0)


@dataclasses.dataclass(frozen=True)
class ConeDims:
    """Sizes of the product cone, in SCS row order (zero, nonneg, SOC, PSD, exp).

    Attributes:
        zero: number of equality rows.
        nonneg: number of inequality rows.
        soc: sizes of the second-order cones (each ≥ 1).
        psd: orders k of the PSD cones (each occupies k(k+1)/2 rows).
        exp: number of primal exponential cones (each occupies 3 rows).
    """

    zero: int = 0
    nonneg: int = 0
    soc: tuple[int, ...] = ()
    psd: tuple[int, ...] = ()
    exp: int = 0

    @property
    def size(self) -> int:
        return self.zero + self.nonneg + sum(self.soc) + sum(k * (k + 1) // 2 for k in self.psd) + 3 * self.exp

    def scs_cone(self) -> dict:
        """The cone dictionary of SCS (and of diffcp)."""
        out: dict = {}
        if self.zero:
            out["z"] = self.zero
        if self.nonneg:
            out["l"] = self.nonneg
        if self.soc:
            out["q"] = list(self.soc)
        if self.psd:
            out["s"] = list(self.psd)
        if self.exp:
            out["ep"] = self.exp
        return out

    def describe(self) -> str:
        parts = []
        if self.zero:
            parts.append(f"zero({self.zero})")
        if self.nonneg:
            parts.append(f"nonneg({self.nonneg})")
        if self.soc:
            parts.append(f"soc{list(self.soc)}")
        if self.psd:
            parts.append(f"psd{list(self.psd)}")
        if self.exp:
            parts.append(f"exp×{self.exp}")
        return " × ".join(parts) or "(no constraints)"


def svec_indices(k: int) -> tuple[list[int], list[int], list[float]]:
    """Row index, column index and scale of each svec entry of a k×k symmetric matrix.

    SCS/CVXPY order: lower triangle, column-major, off-diagonals scaled by √2.
    """
    rows, cols, scale = [], [], []
    for j in range(k):
        for i in range(j, k):
            rows.append(i)
            cols.append(j)
            scale.append(1.0 if i == j else SQRT2)
    return rows, cols, scale


class _Layout:
    """Index tensors of each cone block, on one device (built once per layer and device)."""

    def __init__(self, dims: ConeDims, device: torch.device):
        self.dims = dims
        self.device = device
        off = dims.zero
        self.nonneg = slice(off, off + dims.nonneg)
        off += dims.nonneg
        soc_groups: dict[int, list[list[int]]] = {}
        for k in dims.soc:
            soc_groups.setdefault(k, []).append(list(range(off, off + k)))
            off += k
        self.soc = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in soc_groups.items()}
        psd_groups: dict[int, list[list[int]]] = {}
        for k in dims.psd:
            size = k * (k + 1) // 2
            psd_groups.setdefault(k, []).append(list(range(off, off + size)))
            off += size
        self.psd = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in psd_groups.items()}
        self.psd_maps = {}
        for k in self.psd:
            r, c, s = svec_indices(k)
            self.psd_maps[k] = (
                torch.tensor(r, dtype=torch.long, device=device),
                torch.tensor(c, dtype=torch.long, device=device),
                torch.tensor(s, dtype=torch.float64, device=device),
            )
        self.exp = (
            torch.arange(off, off + 3 * dims.exp, device=device).reshape(dims.exp, 3) if dims.exp else None
        )
        off += 3 * dims.exp
        self.m = off


_LAYOUTS: dict[tuple[ConeDims, torch.device], _Layout] = {}


def _layout(dims: ConeDims, device: torch.device) -> _Layout:
    key = (dims, torch.device(device))
    lay = _LAYOUTS.get(key)
    if lay is None:
        lay = _LAYOUTS[key] = _Layout(dims, device)
    return lay


# ---------------------------------------------------------------------------------------------
# PSD helpers (svec <-> symmetric matrix)


def smat(v: torch.Tensor, k: int, maps) -> torch.Tensor:
    """(…, k(k+1)/2) svec → (…, k, k) symmetric matrix."""
    r, c, s = maps
    X = v.new_zeros(v.shape[:-1] + (k, k))
    vals = v / s.to(v.dtype)
    X[..., r, c] = vals
    X[..., c, r] = vals
    return X


def svec(X: torch.Tensor, maps) -> torch.Tensor:
    """(…, k, k) symmetric matrix → (…, k(k+1)/2) svec."""
    r, c, s = maps
    return X[..., r, c] * s.to(X.dtype)


def _psd_gamma(lam: torch.Tensor) -> torch.Tensor:
    """Γ_ij = (λ_i⁺ − λ_j⁺)/(λ_i − λ_j), the divided differences of max(·, 0) (Daleckii–Krein).

    1 where both eigenvalues are positive, 0 where both are ≤ 0 (the generalized-Jacobian
    choice at λ = 0), the divided difference where the signs differ (its denominator is then
    nonzero).
    """
    li = lam.unsqueeze(-1)
    lj = lam.unsqueeze(-2)
    pi, pj = li > 0, lj > 0
    both = pi & pj
    mixed = pi ^ pj
    denom = torch.where(mixed, li - lj, torch.ones_like(li - lj))
    gamma = torch.where(mixed, (li.clamp(min=0) - lj.clamp(min=0)) / denom, both.to(lam.dtype))
    return gamma


# ---------------------------------------------------------------------------------------------
# Second-order cone


def _soc_parts(w: torch.Tensor):
    t = w[..., 0]
    u = w[..., 1:]
    r = torch.linalg.vector_norm(u, dim=-1)
    inside = r <= t
    polar = r <= -t
    mid = ~(inside | polar)
    r_safe = torch.where(mid, r, torch.ones_like(r))
    return t, u, r, r_safe, inside, polar, mid


def proj_soc(w: torch.Tensor) -> torch.Tensor:
    """Projection onto {(t, u): ‖u‖ ≤ t}, on the last dimension of ``w`` (…, k)."""
    t, u, r, r_safe, inside, polar, mid = _soc_parts(w)
    alpha = (r + t) / (2 * r_safe)
    mid_val = torch.cat([(0.5 * (r + t)).unsqueeze(-1), alpha.unsqueeze(-1) * u], dim=-1)
    out = torch.where(mid.unsqueeze(-1), mid_val, torch.zeros_like(w))
    return torch.where(inside.unsqueeze(-1), w, out)


class _SOCJac:
    """DΠ_SOC at w (…, k). With r = ‖u‖, a = u/r and α = (r + t)/(2r), in the case |t| < r:

        D = [[ ½ ,    ½ aᵀ          ],
             [ ½ a,   α I − (t/2r) a aᵀ ]]

    and D = I for r ≤ t (inside), D = 0 for r ≤ −t (polar cone).
    """

    def __init__(self, w: torch.Tensor):
        t, u, r, r_safe, inside, polar, mid = _soc_parts(w)
        self.k = w.shape[-1]
        self.a = u / r_safe.unsqueeze(-1)
        self.alpha = (r + t) / (2 * r_safe)
        self.beta = t / (2 * r_safe)
        self.inside, self.mid = inside, mid

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        v0, vu = v[..., 0], v[..., 1:]
        av = (self.a * vu).sum(-1)
        o0 = 0.5 * v0 + 0.5 * av
        ou = 0.5 * self.a * v0.unsqueeze(-1) + self.alpha.unsqueeze(-1) * vu - (self.beta * av).unsqueeze(-1) * self.a
        mid_val = torch.cat([o0.unsqueeze(-1), ou], dim=-1)
        out = torch.where(self.mid.unsqueeze(-1), mid_val, torch.zeros_like(v))
        return torch.where(self.inside.unsqueeze(-1), v, out)

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigen-decomposition D = V diag(λ) Vᵀ, analytic: in the case |t| < r the eigenpairs
        are 1 ↔ (1, a)/√2, 0 ↔ (1, −a)/√2 and α = (r + t)/2r ↔ (0, q) for q ⊥ a (a basis of a⊥
        from the Householder reflection that maps e₁ to ±a); D = I or 0 in the other cases."""
        k = self.k
        a = self.a
        shape = a.shape[:-1]
        dt, dev = a.dtype, a.device
        lam = torch.where(self.inside.unsqueeze(-1), torch.ones(shape + (k,), dtype=dt, device=dev),
                          torch.zeros(shape + (k,), dtype=dt, device=dev))
        V = torch.eye(k, dtype=dt, device=dev).expand(shape + (k, k)).clone()
        if k < 2:
            return lam, V
        lam_mid = torch.cat([torch.ones(shape + (1,), dtype=dt, device=dev),
                             torch.zeros(shape + (1,), dtype=dt, device=dev),
                             self.alpha.unsqueeze(-1).expand(shape + (k - 2,))], -1)
        Vm = torch.zeros(shape + (k, k), dtype=dt, device=dev)
        Vm[..., 0, 0] = Vm[..., 0, 1] = 1 / SQRT2
        Vm[..., 1:, 0] = a / SQRT2
        Vm[..., 1:, 1] = -a / SQRT2
        if k > 2:
            e1 = torch.zeros_like(a)
            e1[..., 0] = 1.0
            sign = torch.where(a[..., :1] > 0, 1.0, -1.0)
            v = a + sign * e1                                 # never ~0: |v|² ≥ 2
            Hh = torch.eye(k - 1, dtype=dt, device=dev) - 2 * v.unsqueeze(-1) * v.unsqueeze(-2) / (v * v).sum(-1)[..., None, None]
            Vm[..., 1:, 2:] = Hh[..., :, 1:]                 # columns ⊥ H e₁ = ∓a
        mid = self.mid[..., None]
        lam = torch.where(mid, lam_mid, lam)
        V = torch.where(mid.unsqueeze(-1), Vm, V)
        return lam, V

    def dense(self) -> torch.Tensor:
        k = self.k
        shape = self.a.shape[:-1]
        a = self.a
        eye = torch.eye(k - 1, dtype=a.dtype, device=a.device)
        D = a.new_zeros(shape + (k, k))
        D[..., 0, 0] = 0.5
        D[..., 0, 1:] = 0.5 * a
        D[..., 1:, 0] = 0.5 * a
        D[..., 1:, 1:] = self.alpha[..., None, None] * eye - self.beta[..., None, None] * a.unsqueeze(-1) * a.unsqueeze(-2)
        D = torch.where(self.mid[..., None, None], D, torch.zeros_like(D))
        full = torch.eye(k, dtype=a.dtype, device=a.device).expand_as(D)
        return torch.where(self.inside[..., None, None], full, D)


# ---------------------------------------------------------------------------------------------
# PSD cone


def proj_psd(w: torch.Tensor, k: int, maps) -> torch.Tensor:
    """Projection onto the svec PSD cone of order k, on the last dimension of ``w``."""
    lam, V = torch.linalg.eigh(smat(w, k, maps))
    X = (V * lam.clamp(min=0).unsqueeze(-2)) @ V.transpose(-1, -2)
    return svec(X, maps)


class _PSDJac:
    """DΠ_PSD at W = smat(w) = V diag(λ) Vᵀ:  D[h] = svec(V (Γ ∘ (Vᵀ smat(h) V)) Vᵀ), Γ as in
    :func:`_psd_gamma` (Daleckii–Krein formula for the matrix function max(λ, 0))."""

    def __init__(self, w: torch.Tensor, k: int, maps):
        self.k, self.maps = k, maps
        lam, self.V = torch.linalg.eigh(smat(w, k, maps))
        self.gamma = _psd_gamma(lam)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        V = self.V
        if v.dim() > V.dim() - 1:  # extra leading dims of v (dense assembly)
            V = V.unsqueeze(-3)
            gamma = self.gamma.unsqueeze(-3)
        else:
            gamma = self.gamma
        H = smat(v, self.k, self.maps)
        Ht = V.transpose(-1, -2) @ H @ V
        return svec(V @ (gamma * Ht) @ V.transpose(-1, -2), self.maps)

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigen-decomposition of D, analytic: with W = V diag(λ) Vᵀ, the svec matrices
        E_ij = svec(v_i v_jᵀ + v_j v_iᵀ)/√2 (i < j) and svec(v_i v_iᵀ) are orthonormal
        eigenvectors with eigenvalues Γ_ij. Returns (…, K) and (…, K, K), K = k(k+1)/2."""
        r, c, _ = self.maps
        V = self.V
        outer = V[..., :, r].unsqueeze(-2) * V[..., :, c].unsqueeze(-3)   # (…, k, k, K): V[p,i]V[q,j]
        sym = outer + outer.transpose(-2, -3)
        diag = (r == c).to(V.dtype)
        sym = sym / torch.where(diag > 0, 2.0, SQRT2).to(V.dtype)
        E = svec(sym.movedim(-1, -3), self.maps)                          # (…, K(pair), K(entry))
        lam = self.gamma[..., r, c]
        return lam, E.transpose(-1, -2)

    def dense(self) -> torch.Tensor:
        K = self.k * (self.k + 1) // 2
        eye = torch.eye(K, dtype=self.V.dtype, device=self.V.device)
        cols = self.matvec(eye.expand(self.V.shape[:-2] + (K, K)))  # (…, K(basis), K)
        return cols.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------
# Exponential cone K_exp = cl{(x, y, z): y e^{x/y} ≤ z, y > 0}; rows ordered (x, y, z).


def _exp_h(r0, s0, t0, rho):
    """Friberg's univariate function h(ρ) and h'(ρ); the projection onto ∂K_exp is
    ((ρ−1)r0 + s0)/(ρ² − ρ + 1) · (ρ, 1, e^ρ) at the root ρ of h (see Friberg 2021, §3)."""
    ep, em = torch.exp(rho), torch.exp(-rho)
    f = ((rho - 1) * r0 + s0) * ep - (r0 - rho * s0) * em - (rho * (rho - 1) + 1) * t0
    df = (rho * r0 + s0) * ep + (r0 - (rho - 1) * s0) * em - (2 * rho - 1) * t0
    return f, df


def proj_exp(v: torch.Tensor) -> torch.Tensor:
    """Projection onto K_exp of each row of ``v`` (…, 3), following Friberg (2021).

    Cases: (i) v ∈ K_exp → v; (ii) v in the polar cone → 0; (iii) r0 ≤ 0 and s0 ≤ 0 →
    (r0, 0, max(t0, 0)); otherwise the projection lies on the smooth boundary
    {y e^{x/y} = z, y > 0}, parametrized by ρ = x/y, and ρ solves h(ρ) = 0 (monotone on the
    bracket [1 − s0/r0, r0/s0], sides dropped when r0 ≤ 0 or s0 ≤ 0). Cheap "heuristic"
    candidates (the projections onto the two faces) are computed first and kept when they are
    at least as close as the root-search candidate, exactly as in Friberg's algorithm. The root
    search is a vectorized safeguarded Newton/bisection with a fixed number of steps.
    """
    shape = v.shape
    v = v.reshape(-1, 3)
    r0, s0, t0 = v[:, 0], v[:, 1], v[:, 2]
    scale = torch.linalg.vector_norm(v, dim=-1).clamp(min=1.0)
    tol = _opt.EXP_INSIDE_TOL * scale
    zero = torch.zeros_like(r0)

    # Heuristic primal candidate: the face {x ≤ 0, y = 0, z ≥ 0}, or move z up (perspective).
    vp = torch.stack([r0.clamp(max=0), zero, t0.clamp(min=0)], -1)
    pdist = torch.linalg.vector_norm(v - vp, dim=-1)
    s_pos = s0 > 0
    s_safe = torch.where(s_pos, s0, torch.ones_like(s0))
    tp = torch.maximum(t0, s_safe * torch.exp(torch.clamp(r0 / s_safe, max=_opt.EXP_MAX_RHO)))
    better = s_pos & ((tp - t0) < pdist)
    vp = torch.where(better.unsqueeze(-1), torch.stack([r0, s0, tp], -1), vp)
    pdist = torch.where(better, tp - t0, pdist)
    # Heuristic polar candidate.
    vd = torch.stack([zero, s0.clamp(max=0), t0.clamp(max=0)], -1)
    ddist = torch.linalg.vector_norm(v - vd, dim=-1)
    r_pos = r0 > 0
    r_safe = torch.where(r_pos, r0, torch.ones_like(r0))
    td = torch.minimum(t0, -r_safe * torch.exp(torch.clamp(s0 / r_safe - 1, max=_opt.EXP_MAX_RHO)))
    dbetter = r_pos & ((t0 - td) < ddist)
    vd = torch.where(dbetter.unsqueeze(-1), torch.stack([r0, s0, td], -1), vd)
    ddist = torch.where(dbetter, t0 - td, ddist)

    err = (vp + vd - v).abs().amax(-1)
    done = (s0 <= 0) & (r0 <= 0)
    done |= torch.minimum(pdist, ddist) <= tol
    done |= (err <= tol) & ((vp * vd).sum(-1) <= tol * scale)
    todo = ~done
    if not bool(todo.any()):
        return vp.reshape(shape)

    idx = torch.nonzero(todo).squeeze(-1)
    r, s, t = r0[idx], s0[idx], t0[idx]
    big = torch.full_like(r, _opt.EXP_MAX_RHO)
    lo = torch.where(r > 0, 1 - s / torch.where(r > 0, r, torch.ones_like(r)), -big)
    hi = torch.where(s > 0, r / torch.where(s > 0, s, torch.ones_like(s)), big)
    lo, hi = lo.clamp(-big, big), hi.clamp(-big, big)
    # Unbounded sides: step outwards (doubling) until h changes sign.
    width = torch.ones_like(r)
    for _ in range(_opt.EXP_BRACKET_STEPS):
        f_lo, _ = _exp_h(r, s, t, lo)
        f_hi, _ = _exp_h(r, s, t, hi)
        grow_lo = (r <= 0) & (f_lo > 0) & (lo > -big)
        grow_hi = (s <= 0) & (f_hi < 0) & (hi < big)
        if not bool((grow_lo | grow_hi).any()):
            break
        lo = torch.where(grow_lo, (lo - width).clamp(min=-big), lo)
        hi = torch.where(grow_hi, (hi + width).clamp(max=big), hi)
        width = width * 2
    rho = 0.5 * (lo + hi)
    for _ in range(_opt.EXP_ROOT_ITERS):
        f, df = _exp_h(r, s, t, rho)
        lo = torch.where(f < 0, rho, lo)
        hi = torch.where(f < 0, hi, rho)
        newton = rho - f / torch.where(df > 0, df, torch.ones_like(df))
        # Newton only inside a short bracket (far from the root h grows like e^ρ and Newton
        # crawls by ~1 per step); bisection otherwise.
        ok = (df > 0) & (newton > lo) & (newton < hi) & torch.isfinite(newton) & (hi - lo < 1.0)
        rho = torch.where(ok, newton, 0.5 * (lo + hi))
    lin = (rho - 1) * r + s
    quad = rho * (rho - 1) + 1
    er = torch.exp(rho)
    cand = (lin / quad).unsqueeze(-1) * torch.stack([rho, torch.ones_like(rho), er], -1)
    valid = (lin > 0) & torch.isfinite(cand).all(-1)
    cdist = torch.where(valid, torch.linalg.vector_norm(cand - v[idx], dim=-1), torch.full_like(r, math.inf))
    take = cdist <= pdist[idx]
    out = vp.clone()
    out[idx] = torch.where(take.unsqueeze(-1), cand, vp[idx])
    return out.reshape(shape)


def _dproj_exp(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Jacobian DΠ_{K_exp}(v) (…, 3, 3) given p = Π_{K_exp}(v).

    On the smooth boundary (p_y > 0, p ≠ v) the projection solves p + μ∇g(p) = v, g(p) = 0 with
    g(x, y, z) = y e^{x/y} − z, μ ≥ 0; differentiating (Ali et al. 2017) gives, with
    M = I + μ∇²g(p) and n = ∇g(p) = (e^ρ, e^ρ(1 − ρ), −1), ρ = p_x/p_y,

        DΠ = M⁻¹ − M⁻¹ n nᵀ M⁻¹ / (nᵀ M⁻¹ n),     ∇²g = (e^ρ/p_y) [[1, −ρ, 0], [−ρ, ρ², 0], [0, 0, 0]].

    Elsewhere: I inside the cone, 0 in the polar cone, diag(1[r0 < 0], 0, 1[t0 > 0]) on the face
    y = 0.
    """
    shape = v.shape[:-1]
    v = v.reshape(-1, 3)
    p = p.reshape(-1, 3)
    # The cases of proj_exp return exact copies (v itself, 0, or a point with p_y = 0), so
    # exact tests classify them; anything else is on the smooth boundary (p_y > 0).
    dist = torch.linalg.vector_norm(v - p, dim=-1)
    pn = torch.linalg.vector_norm(p, dim=-1)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(v.shape[0], 3, 3)
    inside = dist <= 0
    polar = (pn <= 0) & ~inside
    face = (p[:, 1] <= 0) & ~inside & ~polar
    smooth = ~(inside | polar | face)

    py = torch.where(smooth, p[:, 1], torch.ones_like(p[:, 1]))
    rho = torch.where(smooth, p[:, 0] / py, torch.zeros_like(py))
    er = torch.exp(rho.clamp(max=_opt.EXP_MAX_RHO))
    n = torch.stack([er, er * (1 - rho), -torch.ones_like(er)], -1)
    mu = ((v - p) * n).sum(-1) / (n * n).sum(-1)
    mu = mu.clamp(min=0)
    c = mu * er / py
    H = torch.zeros_like(eye).clone()
    H[:, 0, 0] = 1.0
    H[:, 0, 1] = H[:, 1, 0] = -rho
    H[:, 1, 1] = rho * rho
    M = eye + c[:, None, None] * H
    Minv = torch.linalg.inv(M)
    Mn = (Minv @ n.unsqueeze(-1)).squeeze(-1)
    D_smooth = Minv - Mn.unsqueeze(-1) * Mn.unsqueeze(-2) / (n * Mn).sum(-1)[:, None, None]
    D_face = torch.diag_embed(torch.stack([(v[:, 0] < 0), torch.zeros_like(inside), (v[:, 2] > 0)], -1).to(v.dtype))
    D = torch.where(smooth[:, None, None], D_smooth, torch.zeros_like(eye))
    D = torch.where(face[:, None, None], D_face, D)
    D = torch.where(inside[:, None, None], eye, D)
    return D.reshape(shape + (3, 3))


def proj_exp_dual(w: torch.Tensor) -> torch.Tensor:
    """Projection onto K*_exp: Π_{K*}(w) = w + Π_K(−w) (Moreau)."""
    return w + proj_exp(-w)


# ---------------------------------------------------------------------------------------------
# Product cone: projections onto K* and the Jacobian of Π_{K*}


def proj_dual(w: torch.Tensor, dims: ConeDims) -> torch.Tensor:
    """y = Π_{K*}(w) for a batch ``w`` of shape (B, m)."""
    lay = _layout(dims, w.device)
    y = w.clone()  # zero cone: K* = R^z, identity
    y[:, lay.nonneg] = w[:, lay.nonneg].clamp(min=0)
    for k, idx in lay.soc.items():
        y[:, idx] = proj_soc(w[:, idx])
    for k, idx in lay.psd.items():
        y[:, idx] = proj_psd(w[:, idx], k, lay.psd_maps[k])
    if lay.exp is not None:
        y[:, lay.exp] = proj_exp_dual(w[:, lay.exp])
    return y


def proj_primal(v: torch.Tensor, dims: ConeDims) -> torch.Tensor:
    """Π_K(v) for a batch (B, m): zero cone → 0, the others as above (used by tests)."""
    lay = _layout(dims, v.device)
    out = v.clone()
    out[:, : dims.zero] = 0
    out[:, lay.nonneg] = v[:, lay.nonneg].clamp(min=0)
    for k, idx in lay.soc.items():
        out[:, idx] = proj_soc(v[:, idx])
    for k, idx in lay.psd.items():
        out[:, idx] = proj_psd(v[:, idx], k, lay.psd_maps[k])
    if lay.exp is not None:
        out[:, lay.exp] = proj_exp(v[:, lay.exp])
    return out


class DualConeJacobian:
    """D = DΠ_{K*}(w) for a batch w (B, m): block diagonal, symmetric, eigenvalues in [0, 1].

    ``matvec(v)`` applies D to (B, m) (or (B, r, m): r vectors per problem); ``dense()``
    materializes (B, m, m).
    """

    def __init__(self, w: torch.Tensor, dims: ConeDims):
        self.dims = dims
        self.lay = lay = _layout(dims, w.device)
        self.B, self.m = w.shape
        self.dtype, self.device = w.dtype, w.device
        self.pos = (w[:, lay.nonneg] > 0).to(w.dtype)
        self.soc = {k: _SOCJac(w[:, idx]) for k, idx in lay.soc.items()}
        self.psd = {k: _PSDJac(w[:, idx], k, lay.psd_maps[k]) for k, idx in lay.psd.items()}
        if lay.exp is not None:
            v = -w[:, lay.exp]
            eye = torch.eye(3, dtype=w.dtype, device=w.device)
            self.exp = eye - _dproj_exp(v, proj_exp(v))  # (B, ne, 3, 3)
        else:
            self.exp = None

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """D v for v of shape (B, m) or (B, r, m)."""
        lay = self.lay
        extra = v.dim() == 3
        out = v.clone()
        pos = self.pos.unsqueeze(1) if extra else self.pos
        out[..., lay.nonneg] = v[..., lay.nonneg] * pos
        for k, idx in lay.soc.items():
            jac = self.soc[k]
            if extra:
                jac = _expand_soc(jac, v.shape[1])
            out[..., idx] = jac.matvec(v[..., idx])
        for k, idx in lay.psd.items():
            jac = self.psd[k]
            vv = v[..., idx]
            out[..., idx] = _psd_matvec_extra(jac, vv) if extra else jac.matvec(vv)
        if self.exp is not None:
            ve = v[..., lay.exp]  # (B, [r,] ne, 3)
            Dm = self.exp.unsqueeze(1) if extra else self.exp
            out[..., lay.exp] = (Dm @ ve.unsqueeze(-1)).squeeze(-1)
        return out

    def dense(self) -> torch.Tensor:
        """The (B, m, m) matrix."""
        lay = self.lay
        D = torch.zeros(self.B, self.m, self.m, dtype=self.dtype, device=self.device)
        z = self.dims.zero
        ar = torch.arange(self.m, device=self.device)
        D[:, ar[:z], ar[:z]] = 1.0
        nn = ar[lay.nonneg]
        D[:, nn, nn] = self.pos
        for k, idx in lay.soc.items():
            D[:, idx.unsqueeze(-1), idx.unsqueeze(-2)] = self.soc[k].dense()
        for k, idx in lay.psd.items():
            D[:, idx.unsqueeze(-1), idx.unsqueeze(-2)] = self.psd[k].dense()
        if self.exp is not None:
            idx = lay.exp
            D[:, idx.unsqueeze(-1), idx.unsqueeze(-2)] = self.exp
        return D


def _expand_soc(jac: _SOCJac, r: int) -> _SOCJac:
    """The same SOC Jacobian broadcast over r right-hand sides (B, nb, …) → (B, r, nb, …)."""
    out = _SOCJac.__new__(_SOCJac)
    out.k = jac.k
    out.a = jac.a.unsqueeze(1)
    out.alpha = jac.alpha.unsqueeze(1)
    out.beta = jac.beta.unsqueeze(1)
    out.inside = jac.inside.unsqueeze(1)
    out.mid = jac.mid.unsqueeze(1)
    return out


def _psd_matvec_extra(jac: _PSDJac, v: torch.Tensor) -> torch.Tensor:
    """PSD Jacobian applied to (B, r, nb, K)."""
    V = jac.V.unsqueeze(1)            # (B, 1, nb, k, k)
    gamma = jac.gamma.unsqueeze(1)
    H = smat(v, jac.k, jac.maps)      # (B, r, nb, k, k)
    Ht = V.transpose(-1, -2) @ H @ V
    return svec(V @ (gamma * Ht) @ V.transpose(-1, -2), jac.maps)

