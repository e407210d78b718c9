"""Problem generators and independent references for the sparse QP tests.

Nothing here calls optlayers' solver. ``planted_sparse_qp`` builds problems whose solution is
known exactly and strictly complementary (so finite differences are meaningful);
``clarabel_solve`` is the independent oracle (CVXPY + Clarabel at tight tolerances).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch

CLARABEL_TIGHT = dict(tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, max_iter=200)


@dataclasses.dataclass
class SparseQP:
    """min ½xᵀPx + qᵀx  s.t.  l ≤ Ax ≤ u, with planted solution (x, y). scipy/numpy data."""

    P: sp.csr_matrix
    q: np.ndarray
    A: sp.csr_matrix
    l: np.ndarray
    u: np.ndarray
    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray  # per row: 0 inactive, 1 upper-active, -1 lower-active, 2 equality


def random_sparse_pd(n: int, density: float, rng: np.random.Generator, shift: float = 0.5) -> sp.csr_matrix:
    M = sp.random(n, n, density=density, random_state=rng, data_rvs=rng.standard_normal)
    return (M.T @ M + shift * sp.eye(n)).tocsr()


def random_sparse_rows(m: int, n: int, density: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Random sparse (m, n) with at least one entry per row."""
    A = sp.random(m, n, density=density, random_state=rng, data_rvs=rng.standard_normal).tolil()
    for i in range(m):
        if A.rows[i] == []:
            A[i, int(rng.integers(n))] = float(rng.standard_normal()) + 2.0
    return A.tocsr()


def planted_sparse_qp(n: int = 12, m: int = 10, *, density: float = 0.25, n_eq: int = 2, seed: int = 0,
                      P: sp.csr_matrix | None = None, A: sp.csr_matrix | None = None) -> SparseQP:
    """A sparse QP with a known strictly complementary solution.

    Rows: ``n_eq`` equalities (l = u), then a mix of upper-active, lower-active (multiplier
    magnitude in [0.5, 1.5]) and inactive rows (slacks in [0.5, 1.5]; one- or two-sided).
    """
    rng = np.random.default_rng(seed)
    P = random_sparse_pd(n, density, rng) if P is None else P
    A = random_sparse_rows(m, n, density, rng) if A is None else A
    x = rng.standard_normal(n)
    z = A @ x
    kind = rng.choice([0, 1, -1], size=m, p=[0.5, 0.25, 0.25])
    kind[:n_eq] = 2
    y = np.zeros(m)
    mag = rng.uniform(0.5, 1.5, m)
    y[kind == 1] = mag[kind == 1]
    y[kind == -1] = -mag[kind == -1]
    y[kind == 2] = rng.standard_normal((kind == 2).sum())
    s_lo, s_hi = rng.uniform(0.5, 1.5, m), rng.uniform(0.5, 1.5, m)
    one_sided = rng.random(m) < 0.3
    l = z - s_lo
    u = z + s_hi
    l[kind == -1] = z[kind == -1]
    u[kind == 1] = z[kind == 1]
    l[(kind == 1) & one_sided] = -np.inf
    u[(kind == -1) & one_sided] = np.inf
    l[(kind == 0) & one_sided] = -np.inf
    l[kind == 2] = u[kind == 2] = z[kind == 2]
    q = -(P @ x + A.T @ y)
    return SparseQP(P.tocsr(), q, A.tocsr(), l, u, x, y, kind)


def clarabel_solve(P, q, A, l, u) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of min ½xᵀPx + qᵀx s.t. l ≤ Ax ≤ u by CVXPY + Clarabel (y in OSQP's sign
    convention: + at the upper bound)."""
    import cvxpy as cp

    P = sp.csr_matrix(P)
    A = sp.csr_matrix(A)
    n = q.shape[0]
    x = cp.Variable(n)
    cons = []
    eq = np.isfinite(l) & np.isfinite(u) & (l == u)
    up = np.isfinite(u) & ~eq
    lo = np.isfinite(l) & ~eq
    if eq.any():
        cons.append(A[eq] @ x == u[eq])
    if up.any():
        cons.append(A[up] @ x <= u[up])
    if lo.any():
        cons.append(A[lo] @ x >= l[lo])
    obj = 0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x
    cp.Problem(cp.Minimize(obj), cons).solve(solver="CLARABEL", **CLARABEL_TIGHT)
    y = np.zeros(A.shape[0])
    k = 0
    if eq.any():
        y[eq] = cons[k].dual_value
        k += 1
    if up.any():
        y[up] += cons[k].dual_value
        k += 1
    if lo.any():
        y[lo] -= cons[k].dual_value
    return np.asarray(x.value), y


def coo_parts(M: sp.spmatrix) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (2, k), values (k,)) of a scipy matrix, explicit zeros kept."""
    C = sp.coo_matrix(M)
    return torch.tensor(np.vstack([C.row, C.col]), dtype=torch.int64), torch.tensor(C.data, dtype=torch.float64)


def csr_parts(M: sp.spmatrix):
    C = sp.csr_matrix(M)
    return torch.tensor(C.indptr, dtype=torch.int64), torch.tensor(C.indices, dtype=torch.int64), torch.tensor(C.data, dtype=torch.float64)


def torch_data(prob: SparseQP, layout: str = "coo"):
    """(P, q, A, l, u) as torch tensors: P/A sparse in ``layout`` ("coo", "csr", "dense")."""
    def mat(M):
        if layout == "dense":
            return torch.tensor(M.toarray())
        if layout == "csr":
            crow, col, v = csr_parts(M)
            return torch.sparse_csr_tensor(crow, col, v, M.shape)
        idx, v = coo_parts(M)
        return torch.sparse_coo_tensor(idx, v, M.shape).coalesce()
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return mat(prob.P), t(prob.q), mat(prob.A), t(prob.l), t(prob.u)
