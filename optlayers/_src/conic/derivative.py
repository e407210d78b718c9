"""Derivative of the solution map of a cone program, by implicit differentiation of its
optimality conditions written as a residual map.

Program (SCS form, ``cones.py``) and optimality conditions::

    minimize ½ xᵀPx + cᵀx  s.t.  Ax + s = b, s ∈ K          Px + Aᵀy + c = 0,  Ax + s = b,
                                                           s ∈ K,  y ∈ K*,  sᵀy = 0.

Complementarity is encoded by one vector ``w = y − s``: by Moreau's decomposition
``w = Π_{K*}(w) − Π_K(−w)``, any ``w`` defines a complementary pair ``y = Π_{K*}(w) ∈ K*``,
``s = Π_{K*}(w) − w = Π_K(−w) ∈ K``, ``sᵀy = 0`` — and every solution arises that way. So
``z = (x, w)`` solves the program iff it is a zero of the (normal-map) residual

    R(z; P, A, b, c) = [ P x + Aᵀ Π_{K*}(w) + c        ]
                       [ A x + Π_{K*}(w) − w − b        ],

the Minty parametrization used for the homogeneous self-dual embedding by Busseti, Moursi &
Boyd (2019) and Agrawal et al., *Differentiating through a cone program* (2019); we differentiate
it at τ = 1 (a solved, feasible problem), which keeps the quadratic term exact. With
``D = DΠ_{K*}(w)`` (symmetric, eigenvalues in [0, 1], ``cones.py``):

    J = ∂R/∂z = [ P    AᵀD   ]         ∂R = [ dP x + dAᵀ y + dc ]
                [ A    D − I ]              [ dA x − db         ]   (y = Π_{K*}(w) fixed).

Implicit function theorem: ``dz = −J⁻¹ ∂R``; the outputs are ``x`` and ``y = Π_{K*}(w)``, so

    forward (JVP):  J (dx, dw) = −∂R,            dy = D dw;
    reverse (VJP):  Jᵀ (u₁, u₂) = (g_x, D g_y),  then
                    ∇c = −u₁,   ∇b = u₂,   ∇A = −(y u₁ᵀ + u₂ xᵀ),   ∇P = −u₁ xᵀ
    (the gradient of each *stored* entry of A and P: (i, j) ↦ −(y_i u₁_j + u₂_i x_j), −u₁_i x_j;
    P is stored in full, both triangles, so this is the gradient of the symmetric map).

J is nonsingular at a solution that is unique and strictly complementary with the usual
regularity (the cone analogue of LICQ + second-order sufficiency); for the zero/nonnegative
cones it reduces to the active-set KKT matrix of the QP layer. At degenerate points J is
singular; we then return the minimum-norm least-squares solution of the system, a finite,
documented choice (never NaN). ``D`` at points where Π is not differentiable is the element of
the generalized Jacobian chosen in ``cones.py``.

Two ways to solve the system:
- dense: the reduced symmetric system of :class:`_ReducedDense` (size n + #kept directions,
  batched LU), each solve checked against the full J with a per-problem least-squares fallback
  on the dense J (B, N, N), N = n + m, when the check fails;
- iterative: matrix-free products with J or Jᵀ (sparse A and P, structured D), solved by
  ``ol.linear_solve.gmres`` on the whole batch, then scipy LSMR per problem for any problem
  GMRES did not bring to tolerance (singular systems).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch

from optlayers._src.conic import options as _opt
from optlayers._src.conic.canon import ConeProgram
from optlayers._src.conic.cones import ConeDims, DualConeJacobian
from optlayers._src.conic.options import BackwardMode


@dataclasses.dataclass(frozen=True)
class ProgramIndex:
    """Index tensors of a :class:`ConeProgram` on one device (built once per layer and device)."""

    n: int
    m: int
    dims: ConeDims
    A_rows: torch.Tensor
    A_cols: torch.Tensor
    P_rows: torch.Tensor | None
    P_cols: torch.Tensor | None

    @classmethod
    def of(cls, prog: ConeProgram, device: torch.device) -> "ProgramIndex":
        def t(a):
            return None if a is None else torch.as_tensor(a, dtype=torch.long, device=device)

        return cls(n=prog.n, m=prog.m, dims=prog.dims, A_rows=t(prog.A_rows), A_cols=t(prog.A_cols),
                   P_rows=t(prog.P_rows), P_cols=t(prog.P_cols))


def _spmv(vals: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, v: torch.Tensor, out_dim: int) -> torch.Tensor:
    """Batched sparse mat-vec: out[b, rows[k]] += vals[b, k] * v[b, cols[k]]; vals may be (1, nnz)."""
    out = v.new_zeros(v.shape[0], out_dim)
    return out.index_add_(1, rows, vals * v[:, cols])


class DerivativeSystem:
    """The Jacobian J of the residual map at a batch of solutions, and solves with J or Jᵀ.

    Inputs (float64): ``A`` (B or 1, nnz_A) and ``P`` (B or 1, nnz_P) or ``None``; ``x`` (B, n),
    ``y`` (B, m), ``s`` (B, m); ``ok`` (B,) bool — problems that did not solve get J = I and a
    zero right-hand side, hence zero derivatives.
    """

    def __init__(self, idx: ProgramIndex, A, P, x, y, s, ok, mode: BackwardMode):
        self.idx, self.A, self.P = idx, A, P
        self.x, self.y, self.ok = x, y, ok
        self.B, self.n, self.m = x.shape[0], idx.n, idx.m
        self.N = self.n + self.m
        self.D = DualConeJacobian(y - s, idx.dims)
        if mode is BackwardMode.AUTO:
            mode = BackwardMode.DENSE if self.N <= _opt.DENSE_MAX_DIM else BackwardMode.ITERATIVE
        self.mode = mode
        self._lu = None  # list of (slice, LU, pivots, J) chunks, built lazily

    # -- matrix-free products ---------------------------------------------------------------
    def _A(self, v):
        return _spmv(self.A, self.idx.A_rows, self.idx.A_cols, v, self.m)

    def _At(self, v):
        return _spmv(self.A, self.idx.A_cols, self.idx.A_rows, v, self.n)

    def _P(self, v):
        if self.P is None:
            return v.new_zeros(v.shape[0], self.n)
        return _spmv(self.P, self.idx.P_rows, self.idx.P_cols, v, self.n)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """J v for v (B, N)."""
        v1, v2 = v[:, : self.n], v[:, self.n:]
        Dv2 = self.D.matvec(v2)
        out = torch.cat([self._P(v1) + self._At(Dv2), self._A(v1) + Dv2 - v2], 1)
        return torch.where(self.ok.unsqueeze(1), out, v)

    def rmatvec(self, v: torch.Tensor) -> torch.Tensor:
        """Jᵀ v for v (B, N) (P and D are symmetric)."""
        v1, v2 = v[:, : self.n], v[:, self.n:]
        out = torch.cat([self._P(v1) + self._At(v2), self.D.matvec(self._A(v1) + v2) - v2], 1)
        return torch.where(self.ok.unsqueeze(1), out, v)

    # -- dense ------------------------------------------------------------------------------
    def dense(self, sl: slice) -> torch.Tensor:
        """J for the problems ``sl`` as a dense (b, N, N) tensor."""
        n, m = self.n, self.m
        x = self.x[sl]
        b = x.shape[0]
        dt, dev = x.dtype, x.device
        A = torch.zeros(b, m, n, dtype=dt, device=dev)
        Av = self.A if self.A.shape[0] == 1 else self.A[sl]
        A[:, self.idx.A_rows, self.idx.A_cols] = Av.expand(b, -1)
        J = torch.zeros(b, self.N, self.N, dtype=dt, device=dev)
        if self.P is not None:
            Pv = self.P if self.P.shape[0] == 1 else self.P[sl]
            J[:, self.idx.P_rows, self.idx.P_cols] = Pv.expand(b, -1)
        D = _slice_dense(self.D, sl)
        J[:, :n, n:] = A.transpose(1, 2) @ D
        J[:, n:, :n] = A
        eye_m = torch.eye(m, dtype=dt, device=dev)
        J[:, n:, n:] = D - eye_m
        okb = self.ok[sl]
        if not bool(okb.all()):
            J[~okb] = torch.eye(self.N, dtype=dt, device=dev)
        return J

    def _chunks(self):
        per = max(1, int(_opt.DENSE_MAX_BYTES // (3 * 8 * self.N * self.N)))
        return [slice(i, min(self.B, i + per)) for i in range(0, self.B, per)]

    def _factor(self):
        if self._lu is None:
            self._lu = [_ReducedDense(self, sl) for sl in self._chunks()]
        return self._lu

    def _solve_dense(self, rhs: torch.Tensor, transpose: bool) -> torch.Tensor:
        out = torch.empty_like(rhs)
        for red in self._factor():
            sl = red.sl
            u = red.solve(rhs[sl], transpose)
            # Check against the full Jacobian (matrix-free); fall back to least squares on the
            # dense J for problems where the reduced solve failed (singular J: degenerate point).
            sub = self._slice(sl)
            res = (sub.rmatvec(u) if transpose else sub.matvec(u)) - rhs[sl]
            scale = red.norm_bound * u.abs().amax(1) + rhs[sl].abs().amax(1)
            bad = ~torch.isfinite(u).all(1) | (res.abs().amax(1) > _opt.DENSE_RESIDUAL_TOL * scale)
            if bool(bad.any()):
                J = self.dense(sl)[bad]
                M = J.transpose(1, 2) if transpose else J
                u = u.clone()
                u[bad] = _lstsq(M, rhs[sl][bad])
            out[sl] = u
        return out

    # -- iterative --------------------------------------------------------------------------
    def _solve_iterative(self, rhs: torch.Tensor, transpose: bool) -> torch.Tensor:
        from optlayers.linear_solve import LinearSolveWarning, gmres

        op = self.rmatvec if transpose else self.matvec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LinearSolveWarning)
            u, info = gmres(op, rhs, batch_dims=1, tol=_opt.ITERATIVE_TOL,
                            maxiter=_opt.ITERATIVE_MAXITER_FACTOR * self.N,
                            restart=min(_opt.ITERATIVE_RESTART, self.N), return_info=True)
        bad = ~info.converged | ~torch.isfinite(u).all(1)
        if bool(bad.any()):
            u = u.clone()
            for i in torch.nonzero(bad).flatten().tolist():
                u[i] = self._lsmr_one(i, rhs[i], transpose, u[i])
        return u

    def _lsmr_one(self, i: int, r: torch.Tensor, transpose: bool, x0: torch.Tensor) -> torch.Tensor:
        from scipy.sparse.linalg import LinearOperator, lsmr

        sub = self._single(i)
        f, g = (sub.rmatvec, sub.matvec) if transpose else (sub.matvec, sub.rmatvec)
        dt, dev = r.dtype, r.device

        def mv(v):
            return f(torch.as_tensor(np.asarray(v).ravel(), dtype=dt, device=dev)[None])[0].cpu().numpy()

        def rmv(v):
            return g(torch.as_tensor(np.asarray(v).ravel(), dtype=dt, device=dev)[None])[0].cpu().numpy()

        op = LinearOperator((self.N, self.N), matvec=mv, rmatvec=rmv, dtype=np.float64)
        x0n = x0.cpu().numpy() if bool(torch.isfinite(x0).all()) else None
        sol = lsmr(op, r.cpu().numpy(), atol=_opt.ITERATIVE_TOL, btol=_opt.ITERATIVE_TOL,
                   maxiter=_opt.LSMR_MAXITER_FACTOR * self.N, x0=x0n)[0]
        return torch.as_tensor(sol, dtype=dt, device=dev)

    def _single(self, i: int) -> "DerivativeSystem":
        return self._slice(slice(i, i + 1))

    def _slice(self, sl: slice) -> "DerivativeSystem":
        """The system of the problems ``sl`` (views, no copies)."""
        if sl.start == 0 and sl.stop >= self.B:
            return self
        sub = DerivativeSystem.__new__(DerivativeSystem)
        sub.idx = self.idx
        sub.A = self.A if self.A.shape[0] == 1 else self.A[sl]
        sub.P = None if self.P is None else (self.P if self.P.shape[0] == 1 else self.P[sl])
        sub.x, sub.y, sub.ok = self.x[sl], self.y[sl], self.ok[sl]
        sub.B, sub.n, sub.m, sub.N = sub.x.shape[0], self.n, self.m, self.N
        sub.D = _slice_jac(self.D, sl)
        sub.mode, sub._lu = self.mode, None
        return sub

    # -- public -----------------------------------------------------------------------------
    def solve(self, rhs: torch.Tensor, transpose: bool) -> torch.Tensor:
        """u with J u = rhs (``transpose=False``) or Jᵀ u = rhs, rhs (B, N); failed problems → 0."""
        rhs = torch.where(self.ok.unsqueeze(1), rhs, torch.zeros_like(rhs))
        if self.mode is BackwardMode.DENSE:
            return self._solve_dense(rhs, transpose)
        return self._solve_iterative(rhs, transpose)


class _ReducedDense:
    """Dense solves with J or Jᵀ for the problems ``sl`` through a smaller symmetric system.

    In an orthonormal eigenbasis of each cone block of D = V Λ Vᵀ (zero/nonnegative rows are
    their own eigenvectors; SOC and PSD blocks have analytic eigenvectors, ``cones.py``; exp
    blocks are 3×3 and diagonalized numerically), with
    Â = VᵀA and r̂ = Vᵀr, the rows of J (dx, dw) = (r₁, r₂) decouple per eigen-direction j:

        P dx + Σ_j Â_jᵀ λ_j dŵ_j = r₁,        Â_j dx + (λ_j − 1) dŵ_j = r̂_j.

    Directions with λ_j < σ (``REDUCED_SPLIT``; "S", including the λ = 0 ones, e.g. inactive
    inequalities) are eliminated, dŵ_j = (Â_j dx − r̂_j)/(1 − λ_j); the others ("B", λ ≥ σ, e.g.
    equalities and active inequalities) keep ν_j = λ_j dŵ_j as unknowns. This leaves the
    symmetric quasi-definite system of size n + |B| (padded to the batch's largest |B|)

        [ P + Â_Sᵀ H Â_S    Â_Bᵀ ] [dx]   [ r₁ + Â_Sᵀ H r̂_S ]      H = λ/(1 − λ) ≤ σ/(1 − σ),
        [ Â_B              −G    ] [ν ] = [ r̂_B            ],     G = (1 − λ)/λ ≤ (1 − σ)/σ,

    whose entries stay bounded for every λ ∈ [0, 1]. Jᵀ has the same reduced matrix with
    right-hand side (g₁ + Â_Sᵀ (ĝ_S/(1 − λ)), ĝ_B/λ). For zero/nonnegative cones this is exactly
    the active-set KKT system of the QP layer; with LPs and QPs most inequalities drop out.
    """

    def __init__(self, system: "DerivativeSystem", sl: slice):
        self.sl = sl
        sub = system._slice(sl)
        idx, n, m = system.idx, system.n, system.m
        b = sub.B
        dt, dev = sub.x.dtype, sub.x.device
        A = torch.zeros(b, m, n, dtype=dt, device=dev)
        A[:, idx.A_rows, idx.A_cols] = sub.A.expand(b, -1)
        K11 = torch.zeros(b, n, n, dtype=dt, device=dev)
        if sub.P is not None:
            K11[:, idx.P_rows, idx.P_cols] = sub.P.expand(b, -1)
        self.norm_bound = 1.0 + sub.A.abs().amax(1).expand(b) * math.sqrt(system.N)
        if sub.P is not None:
            self.norm_bound = self.norm_bound + sub.P.abs().amax(1).expand(b) * math.sqrt(n)
        # Eigen-structure of D, rows in eigen-coordinates.
        D = sub.D
        lam = torch.ones(b, m, dtype=dt, device=dev)
        lam[:, D.lay.nonneg] = D.pos
        self.rot = []  # (row index (nb, k), V (b, nb, k, k)) per block group
        blocks = [(D.lay.soc[k], *D.soc[k].eig()) for k in D.soc]
        blocks += [(D.lay.psd[k], *D.psd[k].eig()) for k in D.psd]
        if D.exp is not None:
            blocks.append((D.lay.exp, *torch.linalg.eigh(D.exp)))
        Ahat = A
        for ix, ev, V in blocks:
            lam[:, ix] = ev.clamp(0.0, 1.0)
            Ahat = Ahat.clone() if Ahat is A else Ahat
            Ahat[:, ix] = V.transpose(-1, -2) @ A[:, ix]
            self.rot.append((ix, V))
        self.Ahat, self.lam = Ahat, lam
        keep = lam >= _opt.REDUCED_SPLIT
        self.keep = keep
        S = ~keep
        self.H = torch.where(S, lam / (1 - lam).clamp(min=1e-300), torch.zeros_like(lam))
        K11 = K11 + Ahat.transpose(1, 2) @ (self.H.unsqueeze(-1) * Ahat)
        nB = keep.sum(1)
        nmax = int(nB.max()) if b else 0
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :nmax]
        pad = torch.arange(nmax, device=dev).unsqueeze(0) >= nB.unsqueeze(1)
        self.order, self.pad, self.nmax = order, pad, nmax
        AB = torch.gather(Ahat, 1, order.unsqueeze(-1).expand(b, nmax, n))
        AB = torch.where(pad.unsqueeze(-1), torch.zeros_like(AB), AB)
        lamB = torch.gather(lam, 1, order)
        G = torch.where(pad, torch.ones_like(lamB), (1 - lamB) / lamB.clamp(min=1e-300))
        self.lamB = torch.where(pad, torch.ones_like(lamB), lamB)
        K = torch.zeros(b, n + nmax, n + nmax, dtype=dt, device=dev)
        K[:, :n, :n] = K11
        K[:, :n, n:] = AB.transpose(1, 2)
        K[:, n:, :n] = AB
        K[:, n:, n:] = -torch.diag_embed(G)
        okb = sub.ok
        if not bool(okb.all()):
            K[~okb] = torch.eye(n + nmax, dtype=dt, device=dev)
        self.n, self.m = n, m
        self.LU, self.piv, self.info = torch.linalg.lu_factor_ex(K)

    def _rotate(self, r: torch.Tensor, inverse: bool) -> torch.Tensor:
        """r̂ = Vᵀ r (or V r̂ with ``inverse``) block by block; rows of diagonal cones unchanged."""
        if not self.rot:
            return r
        out = r.clone()
        for ix, V in self.rot:
            M = V if inverse else V.transpose(-1, -2)
            out[:, ix] = (M @ r[:, ix].unsqueeze(-1)).squeeze(-1)
        return out

    def solve(self, rhs: torch.Tensor, transpose: bool) -> torch.Tensor:
        n = self.n
        r1, r2 = rhs[:, :n], rhs[:, n:]
        rh = self._rotate(r2, inverse=False)
        lam, keep = self.lam, self.keep
        one_m = (1 - lam).clamp(min=1e-300)
        if transpose:
            top = r1 + (self.Ahat.transpose(1, 2) @ torch.where(keep, 0.0, rh / one_m).unsqueeze(-1)).squeeze(-1)
            bot = torch.gather(rh, 1, self.order) / self.lamB
        else:
            top = r1 + (self.Ahat.transpose(1, 2) @ (self.H * rh).unsqueeze(-1)).squeeze(-1)
            bot = torch.gather(rh, 1, self.order)
        bot = torch.where(self.pad, torch.zeros_like(bot), bot)
        sol = torch.linalg.lu_solve(self.LU, self.piv, torch.cat([top, bot], 1).unsqueeze(-1)).squeeze(-1)
        dx, nu = sol[:, :n], sol[:, n:]
        Ad = (self.Ahat @ dx.unsqueeze(-1)).squeeze(-1)
        if transpose:
            what = (lam * Ad - rh) / one_m          # û₂ on eliminated directions
            kept = nu                               # û₂ on kept directions
        else:
            what = (Ad - rh) / one_m                # dŵ on eliminated directions
            kept = nu / self.lamB                   # dŵ = ν/λ on kept directions
        full = torch.where(keep, torch.zeros_like(what), what)
        kept = torch.where(self.pad, torch.zeros_like(kept), kept)
        full = full.scatter_add(1, self.order, torch.where(self.pad, torch.zeros_like(kept), kept))
        return torch.cat([dx, self._rotate(full, inverse=True)], 1)


def _lstsq(M: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares solutions of M u = r (batched), for singular systems."""
    if M.device.type == "cpu":
        return torch.linalg.lstsq(M, r.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
    return (torch.linalg.pinv(M) @ r.unsqueeze(-1)).squeeze(-1)


def _slice_jac(D: DualConeJacobian, sl: slice) -> DualConeJacobian:
    """The cone Jacobian of the problems ``sl`` (a view on the batched one)."""
    out = DualConeJacobian.__new__(DualConeJacobian)
    out.dims, out.lay = D.dims, D.lay
    out.dtype, out.device, out.m = D.dtype, D.device, D.m
    out.pos = D.pos[sl]
    out.B = out.pos.shape[0]
    out.soc = {k: _slice_obj(j, sl) for k, j in D.soc.items()}
    out.psd = {k: _slice_obj(j, sl) for k, j in D.psd.items()}
    out.exp = None if D.exp is None else D.exp[sl]
    return out


def _slice_obj(obj, sl: slice):
    new = obj.__class__.__new__(obj.__class__)
    for key, val in vars(obj).items():
        setattr(new, key, val[sl] if isinstance(val, torch.Tensor) else val)
    return new


def _slice_dense(D: DualConeJacobian, sl: slice) -> torch.Tensor:
    if sl.start == 0 and sl.stop >= D.B:
        return D.dense()
    return _slice_jac(D, sl).dense()


# ---------------------------------------------------------------------------------------------
# VJP / JVP in terms of the program data


def _reduce_to(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a batched gradient (B, k) over the batch when the input was shared (1, k)."""
    return g.sum(0, keepdim=True) if like.shape[0] == 1 and g.shape[0] != 1 else g


def vjp(system: DerivativeSystem, c, A, b, P, gx, gy, needs):
    """Gradients (∇c, ∇A, ∇b, ∇P) for upstream (g_x, g_y); ``needs`` = which to compute."""
    idx = system.idx
    x, y = system.x, system.y
    if gx is None:
        gx = torch.zeros_like(x)
    gyD = system.D.matvec(gy) if gy is not None else torch.zeros_like(y)
    u = system.solve(torch.cat([gx, gyD], 1), transpose=True)
    u1, u2 = u[:, : system.n], u[:, system.n:]
    gc = gA = gb = gP = None
    if needs[0]:
        gc = _reduce_to(-u1, c)
    if needs[1]:
        gA = _reduce_to(-(y[:, idx.A_rows] * u1[:, idx.A_cols] + u2[:, idx.A_rows] * x[:, idx.A_cols]), A)
    if needs[2]:
        gb = _reduce_to(u2, b)
    if needs[3] and P is not None:
        gP = _reduce_to(-(u1[:, idx.P_rows] * x[:, idx.P_cols]), P)
    return gc, gA, gb, gP


def jvp(system: DerivativeSystem, dc, dA, db, dP):
    """Tangents (dx, dy) of the solution for data tangents (any may be ``None``)."""
    idx = system.idx
    x, y = system.x, system.y
    B = x.shape[0]
    r1 = x.new_zeros(B, system.n)
    r2 = x.new_zeros(B, system.m)
    if dc is not None:
        r1 = r1 + dc
    if dA is not None:
        r1 = r1 + _spmv(dA, idx.A_cols, idx.A_rows, y, system.n)
        r2 = r2 + _spmv(dA, idx.A_rows, idx.A_cols, x, system.m)
    if db is not None:
        r2 = r2 - db
    if dP is not None:
        r1 = r1 + _spmv(dP, idx.P_rows, idx.P_cols, x, system.n)
    dz = system.solve(-torch.cat([r1, r2], 1), transpose=False)
    dx, dw = dz[:, : system.n], dz[:, system.n:]
    return dx, system.D.matvec(dw)


# ---------------------------------------------------------------------------------------------
# Newton refinement of a solution on the residual map


def residual(idx: ProgramIndex, c, A, b, P, x, w):
    """R(z) (B, N) at z = (x, w), with y = Π_{K*}(w) and s = y − w; returns (R, y, s)."""
    from optlayers._src.conic.cones import proj_dual

    y = proj_dual(w, idx.dims)
    s = y - w
    r1 = _spmv(A, idx.A_cols, idx.A_rows, y, idx.n) + c
    if P is not None:
        r1 = r1 + _spmv(P, idx.P_rows, idx.P_cols, x, idx.n)
    r2 = _spmv(A, idx.A_rows, idx.A_cols, x, idx.m) + s - b
    return torch.cat([r1, r2], 1), y, s


def _rows(t, sel):
    return t if t is None or t.shape[0] == 1 else t[sel]


def refine(idx: ProgramIndex, c, A, b, P, x, y, s, ok, mode: BackwardMode):
    """Semismooth Newton steps on R(z) = 0 from the solver's point (x, w = y − s).

    Only problems whose residual ‖R‖∞ exceeds ``REFINE_TRIGGER`` relative to their data scale
    (1 + max(‖c‖∞, ‖b‖∞)) are refined, until it is below ``REFINE_TOL`` or no step helps. Each
    step solves J dz = −R with the Jacobian of the derivative and backtracks until ‖R‖₂
    decreases (Armijo, factor 1 − 1e-4·t). Near a nondegenerate solution convergence is
    quadratic: a 1e-6-accurate interior-point point (Clarabel on SOC/PSD/exp cones) becomes a
    ~1e-13-residual one in one or two steps. Cone membership and complementarity hold exactly at
    every iterate (y = Π_{K*}(w), s = Π_K(−w)). Returns (x, y, s, steps (B,) int32, and the
    final relative residual (B,)) — a residual ≤ ``REFINE_TOL`` certifies the point as a solution
    (primal and dual feasibility and complementarity all hold to that accuracy).
    """
    B = x.shape[0]
    steps = torch.zeros(B, dtype=torch.int32, device=x.device)
    # Problems not refined are zeroed first: a failed solve's point may be NaN (SCS on an infeasible
    # SDP), and the batch's residual projects every row (an eigendecomposition per PSD block).
    keep = ok.unsqueeze(1)
    x, y, s = (torch.where(keep, t, torch.zeros_like(t)) for t in (x, y, s))
    w = y - s
    # (b is empty for a program without constraint rows)
    b_max = b.abs().amax(1) if b.shape[1] else torch.zeros_like(c[:, 0])
    scale = 1.0 + torch.maximum(c.abs().amax(1), b_max).expand(B)
    R, y_, s_ = residual(idx, c, A, b, P, x, w)
    rel = R.abs().amax(1) / scale
    todo = ok & (rel > _opt.REFINE_TRIGGER)
    if not bool(todo.any()):
        return x, y, s, steps, rel
    sel = torch.nonzero(todo).flatten()
    cs, As, bs, Ps = _rows(c, sel), _rows(A, sel), _rows(b, sel), _rows(P, sel)
    xs, ws, ys, ss, Rs, sc = x[sel], w[sel], y_[sel], s_[sel], R[sel], scale[sel]
    st = torch.zeros(sel.numel(), dtype=torch.int32, device=x.device)
    live = torch.ones(sel.numel(), dtype=torch.bool, device=x.device)
    for _ in range(_opt.REFINE_MAX_STEPS):
        live &= Rs.abs().amax(1) / sc > _opt.REFINE_TOL
        if not bool(live.any()):
            break
        system = DerivativeSystem(idx, As, Ps, xs, ys, ss, live, mode)
        dz = system.solve(-Rs, transpose=False)
        norm0 = torch.linalg.vector_norm(Rs, dim=1)
        t = torch.ones_like(norm0)
        accepted = torch.zeros_like(live)
        for _ in range(_opt.REFINE_BACKTRACKS):
            pending = live & ~accepted
            if not bool(pending.any()):
                break
            xt = xs + t.unsqueeze(1) * dz[:, : idx.n]
            wt = ws + t.unsqueeze(1) * dz[:, idx.n:]
            Rt, yt, stt = residual(idx, cs, As, bs, Ps, xt, wt)
            good = pending & (torch.linalg.vector_norm(Rt, dim=1) <= (1 - 1e-4 * t) * norm0)
            g1 = good.unsqueeze(1)
            xs, ws, ys, ss, Rs = (torch.where(g1, new, old) for new, old in
                                  ((xt, xs), (wt, ws), (yt, ys), (stt, ss), (Rt, Rs)))
            accepted |= good
            t = torch.where(pending & ~good, 0.5 * t, t)
        st += accepted.to(torch.int32)
        live &= accepted
    x, y, s = x.clone(), y.clone(), s.clone()
    x[sel], y[sel], s[sel] = xs, ys, ss
    steps[sel] = st
    rel = rel.clone()
    rel[sel] = Rs.abs().amax(1) / sc
    return x, y, s, steps, rel
