"""The "qp" route of a :class:`~optlayers.CvxpyLayer`: LP/QP cone programs solved by ``ol.solve_qp``.

When the canonical cone program has only zero and nonnegative cones,

    minimize ½ xᵀPx + cᵀx   subject to   A_z x = b_z  (zero rows),   A_l x ≤ b_l  (nonneg rows),

it *is* a dense QP, and the library's batched interior point (``optlayers.solve_qp``: native
C++ kernel when built, polished to ~1e-14 in float64) solves the whole batch in one call — far
faster than one SCS solve per problem on small and medium problems. The derivative is
``solve_qp``'s own: autograd runs through the (differentiable) assembly below and through
``solve_qp``'s active-set KKT backward, so it is exact at nondegenerate solutions and is the
same element of the generalized Jacobian as the QP layer's at degenerate ones.

**Eliminating CVXPY's auxiliary variables.** CVXPY canonicalizes ``sum_squares(L x − b)`` (and
other quadratic atoms with parametric data) by introducing ``t = L x − b`` with a quadratic
term on ``t``: the QP-layer benchmark's dense QP (n = 20, 20 inequalities, 5 equalities) becomes
a cone program with 40 variables and 25 equality rows, 8× the interior-point work per
iteration. We eliminate such variables exactly. A variable ``t_j`` is *eliminable* when it has
a stored entry with a constant (parameter-free) coefficient ``d_j ≠ 0`` in some equality row
``e_j`` whose other stored entries are not eliminated variables, and no other eliminated
variable has an entry in row ``e_j`` (so ``A[E, T] = diag(d)`` for the chosen rows E and
variables T). With the kept variables R, the equality rows E give

    x_T = z₀ + Z r,      z₀ = b_E / d,      Z = −diag(d)⁻¹ A[E, R],      x_R = r,

and substituting into the program leaves the QP in r (K = the other rows: remaining zero rows
E' and the nonnegative rows I)

    Q_r = P_RR + P_RT Z + Zᵀ P_TR + Zᵀ P_TT Z,       q_r = c_R + P_RT z₀ + Zᵀ (c_T + P_TT z₀),
    A_K,r = A[K, R] + A[K, T] Z,                    b_K,r = b_K − A[K, T] z₀.

Its KKT conditions with multipliers y_K are the R-rows of the full KKT conditions after adding
``A[E, R]ᵀ y_E``; the T-rows determine the eliminated rows' multipliers,

    y_E = −diag(d)⁻¹ ( (P x + c)_T + A[K, T]ᵀ y_K ),

and with that choice every full KKT condition holds (the R-rows become ``Zᵀ(·) = 0``, which is
the reduced stationarity). The cone program's solution (x, y) — what the output maps read —
is therefore recovered exactly, and differentiably.

Sign conventions match SCS (``cones.py``): ``P x + Aᵀy + c = 0``; the multiplier of a nonnegative
row is ``solve_qp``'s ``lam ≥ 0`` and of a zero row its ``nu``.
"""

from __future__ import annotations


import numpy as np
import scipy.sparse as sp
import torch

from optlayers._src.conic import options as _opt
from optlayers._src.conic.canon import ConeProgram
from optlayers._src.conic.options import ConicOptions
from optlayers._src.status import Status

# A constant coefficient is used as a pivot of the elimination only if it is at least this
# large relative to the largest constant coefficient of its row (CVXPY's auxiliary rows have
# ±1 pivots; the rule only guards against eliminating through a tiny pivot).
ELIM_PIVOT_RATIO = 1e-3


def not_qp_reason(prog: ConeProgram) -> str | None:
    """Why the program cannot take the qp route (``None`` if it can)."""
    d = prog.dims
    other = []
    if d.soc:
        other.append(f"second-order cones {list(d.soc)}")
    if d.psd:
        other.append(f"PSD cones {list(d.psd)}")
    if d.exp:
        other.append(f"{d.exp} exponential cones")
    if not other:
        return None
    return ("solver 'qp' needs a cone program with only zero and nonnegative cones (an LP or QP); "
            f"this problem's canonical program has {', '.join(other)}: use solver='scs' or 'clarabel'")


class QPPlan:
    """How a zero/nonnegative-cone :class:`ConeProgram` maps onto ``solve_qp`` (built once).

    Attributes:
        n, m: the cone program's sizes; ``n_r = |R|`` variables, ``p_r = |E'|`` equalities and
            ``m_r = |I|`` inequalities remain after eliminating ``|T|`` auxiliary variables.
        R, T, E, Ez, I: index arrays (see the module docstring), ``K = (Ez, I)``; ``d`` the
            pivots.

    The blocks the reduced QP needs — c_R, c_T, A[E, R], A[K, R], A[K, T], b_E, b_K (and P[R, R],
    P[R, T], P[T, T]) — are dense row blocks of one parameter map (:meth:`data_map`), so a call
    reads them from θ̄ by one sparse product; the pivots A[E, T] = diag(d) are constants and
    P[T, R] is the transpose of P[R, T]. Blocks with no stored entry are skipped in the
    arithmetic, and a diagonal P[T, T] (CVXPY's ``sum_squares`` lifting) is kept as a vector.
    """

    def __init__(self, prog: ConeProgram):
        reason = not_qp_reason(prog)
        if reason is not None:  # pragma: no cover - callers check first
            raise ValueError(reason)
        n, m, z = prog.n, prog.m, prog.dims.zero
        self.prog, self.n, self.m = prog, n, m
        T, E, d = _eliminable(prog)
        if len(T) == n and n > 0:
            # Every variable fixed by an equality (x == p, 2x == p): keep one, so the reduced QP
            # has a variable (solve_qp needs n ≥ 1) and its equality row stays a row; the others'
            # eliminations stay valid (their rows hold no other *eliminated* variable). It had
            # crashed with "q must have at least one entry".
            T, E, d = T[:-1], E[:-1], d[:-1]
        self.T = np.asarray(T, dtype=np.int64)
        self.E = np.asarray(E, dtype=np.int64)
        self.d = np.asarray(d, dtype=np.float64)
        self.R = np.setdiff1d(np.arange(n), self.T).astype(np.int64)
        self.Ez = np.setdiff1d(np.arange(z), self.E).astype(np.int64)
        self.I = np.arange(z, m, dtype=np.int64)
        K = np.concatenate([self.Ez, self.I])
        nR, nT, nK = self.R.size, self.T.size, K.size
        self.n_r, self.p_r, self.m_r = nR, self.Ez.size, self.I.size
        # Position of every variable in (R, T) order and of every row in (E, K) order.
        col_pos = np.empty(n, dtype=np.int64)
        col_pos[np.concatenate([self.R, self.T])] = np.arange(n)
        row_pos = np.empty(m, dtype=np.int64)
        row_pos[np.concatenate([self.E, K])] = np.arange(m)
        self.x_order = col_pos                       # x = cat(x_R, x_T)[:, x_order]
        self.y_order = row_pos                       # y = cat(y_E, y_K)[:, y_order]
        self.c_perm = np.concatenate([self.R, self.T])
        self.b_perm = np.concatenate([self.E, K])
        # A's stored entries → blocks ER (nT×nR), KR (nK×nR), KT (nK×nT), in one flat buffer.
        ci, ri = col_pos[prog.A_cols], row_pos[prog.A_rows]
        inT, inE = ci >= nR, ri < nT
        sizes = [nT * nR, nK * nR, nK * nT]
        off = np.cumsum([0] + sizes)
        pos = np.full(prog.nnz_A, off[-1], dtype=np.int64)      # default: the discarded slot
        er, kr, kt = inE & ~inT, ~inE & ~inT, ~inE & inT
        pos[er] = off[0] + ri[er] * nR + ci[er]
        pos[kr] = off[1] + (ri[kr] - nT) * nR + ci[kr]
        pos[kt] = off[2] + (ri[kt] - nT) * nT + (ci[kt] - nR)
        self.A_pos, self.A_sizes = pos, sizes
        self.has_KT = bool(kt.any())
        # P's stored entries (both triangles) → blocks RR, RT and TT (a vector if diagonal).
        self.P_pos = None
        self.has_RR = self.has_RT = False
        self.TT_diag = True
        if prog.P_rows is not None:
            pi, pj = col_pos[prog.P_rows], col_pos[prog.P_cols]
            iT, jT = pi >= nR, pj >= nR
            rr, rt, tt = ~iT & ~jT, ~iT & jT, iT & jT
            self.has_RR, self.has_RT = bool(rr.any()), bool(rt.any())
            self.TT_diag = bool((pi[tt] == pj[tt]).all())
            tt_size = nT if self.TT_diag else nT * nT
            psizes = [nR * nR, nR * nT, tt_size]
            poff = np.cumsum([0] + psizes)
            ppos = np.full(prog.P_rows.size, poff[-1], dtype=np.int64)
            ppos[rr] = poff[0] + pi[rr] * nR + pj[rr]
            ppos[rt] = poff[1] + pi[rt] * nT + (pj[rt] - nR)
            ppos[tt] = poff[2] + ((pi[tt] - nR) if self.TT_diag else (pi[tt] - nR) * nT + (pj[tt] - nR))
            self.P_pos, self.P_sizes = ppos, psizes
        self._index: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._data_map: tuple | None = None

    def describe(self) -> str:
        return (f"QP with {self.n_r} variables, {self.m_r} inequalities, {self.p_r} equalities "
                f"({self.T.size} auxiliary variables eliminated)")

    def fits_auto(self) -> bool:
        """Small enough for the dense interior point to be the better choice (``"auto"``)."""
        return self.n_r <= _opt.QP_AUTO_MAX_N and self.m_r + self.p_r <= _opt.QP_AUTO_MAX_ROWS

    def data_map(self) -> tuple[sp.csr_matrix, list[int]]:
        """The parameter map of the reduced QP's data blocks, ``M_qp = S M`` (S selects / places
        the cone program's data entries), and the block sizes::

            [c_R (nR), c_T (nT), A[E,R] (nT·nR), A[K,R] (nK·nR), A[K,T] (nK·nT), b_E (nT), b_K (nK),
             P[R,R] (nR²), P[R,T] (nR·nT), P[T,T] (nT, or nT² if not diagonal)]

        (the P blocks only when the program has a quadratic term). One sparse matmul with θ̄
        then yields every block of a batch directly (``CvxpyLayer._assemble``)."""
        if self._data_map is not None:
            return self._data_map
        prog = self.prog
        n, m, nnz_A = self.n, self.m, prog.nnz_A
        nR, nT, nK = self.n_r, self.T.size, self.p_r + self.m_r
        K = np.concatenate([self.Ez, self.I])
        sizes = [nR, nT] + list(self.A_sizes) + [nT, nK]
        off = np.cumsum([0] + sizes)
        dest, src = [np.arange(n)], [self.c_perm]                   # c_R, c_T
        keep = self.A_pos < sum(self.A_sizes)
        dest.append(off[2] + self.A_pos[keep])
        src.append(n + np.nonzero(keep)[0])
        dest.append(off[5] + np.arange(nT + nK))                    # b_E, b_K
        src.append(n + nnz_A + np.concatenate([self.E, K]))
        if self.P_pos is not None:
            sizes += list(self.P_sizes)
            keep = self.P_pos < sum(self.P_sizes)
            dest.append(off[-1] + self.P_pos[keep])
            src.append(n + nnz_A + m + np.nonzero(keep)[0])
        dest, src = np.concatenate(dest), np.concatenate(src)
        S = sp.csr_matrix((np.ones(dest.size), (dest, src)), shape=(sum(sizes), prog.M.shape[0]))
        self._data_map = (sp.csr_matrix(S @ prog.M), sizes)
        return self._data_map

    def index(self, device: torch.device) -> dict[str, torch.Tensor]:
        got = self._index.get(device)
        if got is None:
            arrays = dict(x_order=self.x_order, y_order=self.y_order)
            got = {k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in arrays.items() if v is not None}
            got["d"] = torch.as_tensor(self.d, dtype=torch.float64, device=device)
            self._index[device] = got
        return got

    # -- the solve ----------------------------------------------------------------------------
    def solve(self, blocks: list[torch.Tensor], B: int, options: ConicOptions):
        """Solve the batch; differentiable in the data blocks through ``solve_qp``.

        ``blocks``: the blocks of :meth:`data_map` (float64, any device), each (B, k) or (1, k)
        (shared by the batch). Returns ``(x (B, n), y (B, m), status (B,) int8, iterations (B,)
        int32, the solve_qp backend's name)``; problems that did not solve hold zeros in x and y
        (and get zero gradients).
        """
        from optlayers._src.qp.api import solve_qp

        ix = self.index(blocks[0].device)
        nR, nT, nK, p_r = self.n_r, self.T.size, self.p_r + self.m_r, self.p_r
        cR, cT, A_ER, A_KR, A_KT, bE, bK = blocks[:7]
        A_ER, A_KR, A_KT = (blk.reshape(blk.shape[0], r, k) for blk, (r, k) in
                            zip((A_ER, A_KR, A_KT), ((nT, nR), (nK, nR), (nK, nT))))
        P = None if len(blocks) == 7 else blocks[7:]
        PRR = PRT = PTT = None
        if P is not None:
            PRR, PRT, PTT = P
            PRR = PRR.reshape(-1, nR, nR) if self.has_RR else None
            PRT = PRT.reshape(-1, nR, nT) if self.has_RT else None
            PTT = PTT if self.TT_diag else PTT.reshape(-1, nT, nT)
        d = ix["d"]
        if nT:
            Z = A_ER / (-d).unsqueeze(-1)                          # (B|1, nT, nR)
            z0 = bE / d                                            # (B|1, nT)
            AKr, bKr = A_KR, bK
            if self.has_KT:
                AKr = AKr + A_KT @ Z
                bKr = bKr - (A_KT @ z0.unsqueeze(-1)).squeeze(-1)
            # c̃_T = c_T + P_TT z₀ (the objective's gradient in t at r = 0).
            cT0 = cT
            if P is not None:
                cT0 = cT + (PTT * z0 if self.TT_diag else (PTT @ z0.unsqueeze(-1)).squeeze(-1))
            qr = cR + (Z.transpose(1, 2) @ cT0.unsqueeze(-1)).squeeze(-1)
            Qr = None
            if P is not None:
                PTT_Z = PTT.unsqueeze(-1) * Z if self.TT_diag else PTT @ Z
                Qr = Z.transpose(1, 2) @ PTT_Z
                if PRT is not None:
                    PRT_Z = PRT @ Z
                    Qr = Qr + PRT_Z + PRT_Z.transpose(1, 2)
                    qr = qr + (PRT @ z0.unsqueeze(-1)).squeeze(-1)
                if PRR is not None:
                    Qr = Qr + PRR
                Qr = 0.5 * (Qr + Qr.transpose(1, 2))
        else:
            AKr, bKr, qr = A_KR, bK, cR
            Qr = None if P is None else (PRR if PRR is not None else cR.new_zeros(1, nR, nR))
        Aeq, beq = (AKr[:, :p_r], bKr[:, :p_r]) if p_r else (None, None)
        G, h = (AKr[:, p_r:], bKr[:, p_r:]) if self.m_r else (None, None)
        if G is None and Aeq is None:
            # solve_qp needs a constraint block; an unconstrained program gets a vacuous row
            # 0·x ≤ 1 (its multiplier is 0 at every solution).
            G, h = qr.new_zeros(1, 1, nR), qr.new_ones(1, 1)
        extra = options.extra_dict()
        qp_backend = extra.get("qp_backend", "auto")
        tol = min(float(options.eps_abs), float(options.eps_rel), _opt.QP_TOL)
        sol = solve_qp(
            Qr, qr, G, h, Aeq, beq,
            backend=str(getattr(qp_backend, "value", qp_backend)).lower(), return_solution=True,
            on_failure="nan", check_inputs=False, tol=tol,
            max_iter=int(options.max_iters or _opt.QP_MAX_ITER), polish=bool(extra.get("polish", True)),
        )
        # (Every input has one leading dim, B or 1, so the solution's batch shape is (B,) or (1,).)
        r, lam, nu = (t if t.shape[0] == B else t.expand(B, -1) for t in (sol.x, sol.lam, sol.nu))
        status, iterations = (t if t.shape[0] == B else t.expand(B) for t in (sol.status, sol.iterations))
        ok = status == Status.SOLVED
        yK = torch.cat([nu[:, :p_r], lam[:, : self.m_r]], 1)      # multipliers of the rows K
        if not bool(ok.all()):
            # Failed problems: zeros (finite), so that nothing NaN enters the recovery's backward.
            okc = ok.unsqueeze(1)
            r, yK = torch.where(okc, r, torch.zeros_like(r)), torch.where(okc, yK, torch.zeros_like(yK))
        if nT:
            xT = z0 + (Z @ r.unsqueeze(-1)).squeeze(-1)
            # y_E = −((P x + c)_T + A[K, T]ᵀ y_K) / d   (stationarity of the eliminated columns)
            gT = cT
            if P is not None:
                gT = gT + (PTT * xT if self.TT_diag else (PTT @ xT.unsqueeze(-1)).squeeze(-1))
                if PRT is not None:
                    gT = gT + (PRT.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)
            if self.has_KT:
                gT = gT + (A_KT.transpose(1, 2) @ yK.unsqueeze(-1)).squeeze(-1)
            yE = gT / (-d)
            if not bool(ok.all()):
                yE = torch.where(ok.unsqueeze(1), yE, torch.zeros_like(yE))
            x = torch.cat([r, xT.expand(B, -1)], 1).index_select(1, ix["x_order"])
            y = torch.cat([yE.expand(B, -1), yK], 1).index_select(1, ix["y_order"])
        else:
            x = r.index_select(1, ix["x_order"])
            y = yK.index_select(1, ix["y_order"])
        return x, y, status.to(torch.int8), iterations.to(torch.int32), sol.backend


def _eliminable(prog: ConeProgram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choice of (variables T, equality rows E, pivots d) with A[E, T] = diag(d) constant.

    A stored entry of A is *constant* when its row of the parameter map M has no parameter
    column. Each equality row proposes its constant entry (of pivot size, ``ELIM_PIVOT_RATIO``)
    whose variable appears in the fewest rows (CVXPY's auxiliary variables appear in one), each
    variable keeps the first row proposing it, and every chosen variable that also appears in
    another chosen row is dropped (then A[E, T] is diagonal). Vectorized: construction stays
    cheap for large programs.
    """
    n, m, z, nnz = prog.n, prog.m, prog.dims.zero, prog.nnz_A
    if z == 0 or nnz == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    MA = prog.M[n:n + nnz].tocsc()
    const_col = prog.n_theta - 1
    constant = MA[:, :const_col].getnnz(axis=1) == 0
    value = np.asarray(MA[:, const_col].todense()).ravel()
    rows, cols = prog.A_rows, prog.A_cols
    row_max = np.zeros(m)
    np.maximum.at(row_max, rows[constant], np.abs(value[constant]))
    cand = (rows < z) & constant & (value != 0) & (np.abs(value) >= ELIM_PIVOT_RATIO * row_max[rows])
    k = np.nonzero(cand)[0]
    col_count = np.bincount(cols, minlength=n)
    k = k[np.lexsort((cols[k], col_count[cols[k]], rows[k]))]     # by row, then fewest rows, then index
    k = k[np.unique(rows[k], return_index=True)[1]]                # one proposal per row
    k = k[np.unique(cols[k], return_index=True)[1]]                # one row per variable
    # A chosen variable that also appears in another chosen row breaks diagonality: drop it
    # (such "intruders" are the user's variables appearing in many rows, e.g. x in sum(x) == 1
    # next to t = L x − b; CVXPY's auxiliaries appear in one row and are kept). One round removes
    # every conflict (only intruders cause them, and dropping pairs adds none).
    row_of = np.full(m, -1, dtype=np.int64)
    row_of[rows[k]] = cols[k]                                      # chosen row → its variable
    owner = row_of[rows]                                           # per stored entry
    intruder_entry = (owner >= 0) & (owner != cols)
    chosen = np.zeros(n, dtype=bool)
    chosen[cols[k]] = True
    intruders = np.unique(cols[intruder_entry & chosen[cols]])
    k = k[~np.isin(cols[k], intruders)]
    k = k[np.argsort(cols[k], kind="stable")]
    return cols[k].astype(np.int64), rows[k].astype(np.int64), value[k].astype(np.float64)
