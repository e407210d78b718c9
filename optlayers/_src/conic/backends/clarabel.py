"""Clarabel backend (Goulart & Chen, *Clarabel: an interior-point solver for conic programs
with quadratic objectives*, 2024): same cone program, same sign conventions as SCS
(``Px + Aᵀy + c = 0``, ``Ax + s = b``), except for the PSD rows: Clarabel's triangle is the
*upper* triangle in column-major order (SCS: lower), so PSD rows are permuted on the way in and
out. Interior points do not warm start; a ``warm_start`` request is ignored.
"""

from __future__ import annotations

import numpy as np

from optlayers._src.conic import options as _opt
from optlayers._src.conic.backends import BatchData, RawConeSolution, SolverCache, WarmStart, run_chunks
from optlayers._src.conic.backends.scs import matrices
from optlayers._src.conic.cones import ConeDims
from optlayers._src.conic.options import ConicOptions
from optlayers._src.qp.options import Backend
from optlayers._src.status import Status


def _clarabel():
    try:
        import clarabel
    except ImportError as err:  # pragma: no cover
        raise ImportError("the 'clarabel' backend needs Clarabel: pip install 'optlayers[conic]'") from err
    return clarabel


def _status_map(clarabel) -> dict:
    S = clarabel.SolverStatus
    return {
        str(S.Solved): Status.SOLVED,
        str(S.AlmostSolved): Status.MAX_ITER,  # reduced accuracy: not claimed as solved
        str(S.PrimalInfeasible): Status.PRIMAL_INFEASIBLE,
        str(S.AlmostPrimalInfeasible): Status.PRIMAL_INFEASIBLE,
        str(S.DualInfeasible): Status.DUAL_INFEASIBLE,
        str(S.AlmostDualInfeasible): Status.DUAL_INFEASIBLE,
        str(S.MaxIterations): Status.MAX_ITER,
        str(S.MaxTime): Status.MAX_ITER,
    }


def psd_row_permutation(dims: ConeDims) -> np.ndarray:
    """π with ``rows_clarabel = rows_scs[π]``: SCS lower-triangle column-major svec → Clarabel
    upper-triangle column-major svec (entry (i, j), i ≥ j, sits at j·k − j(j−1)/2 + (i − j) in
    SCS order and at i(i+1)/2 + j in Clarabel's)."""
    m = dims.size
    perm = np.arange(m)
    off = dims.zero + dims.nonneg + sum(dims.soc)
    for k in dims.psd:
        q = 0
        for j in range(k):
            for i in range(j, k):
                perm[off + i * (i + 1) // 2 + j] = off + q
                q += 1
        off += k * (k + 1) // 2
    return perm


def _cones(clarabel, dims: ConeDims) -> list:
    cones = []
    if dims.zero:
        cones.append(clarabel.ZeroConeT(dims.zero))
    if dims.nonneg:
        cones.append(clarabel.NonnegativeConeT(dims.nonneg))
    cones += [clarabel.SecondOrderConeT(k) for k in dims.soc]
    cones += [clarabel.PSDTriangleConeT(k) for k in dims.psd]
    cones += [clarabel.ExponentialConeT() for _ in range(dims.exp)]
    return cones


class ClarabelBackend:
    name = Backend.CLARABEL

    def solve(self, data: BatchData, options: ConicOptions, warm: WarmStart | None,
              cache: SolverCache) -> RawConeSolution:
        clarabel = _clarabel()
        prog = data.prog
        B = data.B
        out = RawConeSolution.empty(B, prog.n, prog.m)
        perm = psd_row_permutation(prog.dims)
        permuted = bool(prog.dims.psd)
        cones = _cones(clarabel, prog.dims)
        status_map = _status_map(clarabel)
        S = clarabel.SolverStatus
        inexact = {str(S.AlmostSolved), str(S.MaxIterations), str(S.MaxTime), str(S.InsufficientProgress)}
        import scipy.sparse as sp

        def make_settings():
            st = clarabel.DefaultSettings()
            st.verbose = bool(options.verbose)
            st.tol_gap_abs = float(options.eps_abs)
            st.tol_feas = float(options.eps_abs)
            st.tol_gap_rel = float(options.eps_rel)
            st.max_iter = int(options.max_iters or _opt.CLARABEL_MAX_ITER)
            for key, value in options.extra:
                setattr(st, key, value)
            return st

        def work(chunk: range) -> None:
            settings = make_settings()
            for i in chunk:
                A, P = matrices(data, i)
                b = data.b[i]
                if permuted:
                    A, b = A[perm], b[perm]
                if P is None:
                    P = sp.csc_matrix((prog.n, prog.n))
                sol = clarabel.DefaultSolver(P.tocsc(), data.c[i], A.tocsc(), b, cones, settings).solve()
                y, s = np.asarray(sol.z), np.asarray(sol.s)
                if permuted:
                    y_, s_ = np.empty_like(y), np.empty_like(s)
                    y_[perm], s_[perm] = y, s
                    y, s = y_, s_
                out.x[i], out.y[i], out.s[i] = np.asarray(sol.x), y, s
                out.status[i] = status_map.get(str(sol.status), Status.NUMERICAL_ERROR)
                out.iterations[i] = int(sol.iterations)
                out.solver_status[i] = str(sol.status)
                out.inexact[i] = str(sol.status) in inexact

        run_chunks(B, options.n_jobs, work)
        return out
