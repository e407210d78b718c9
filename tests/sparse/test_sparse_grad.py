"""Sparse implicit backward: finite differences on small planted problems (1e-5 relative, the
issue's target; typically ~1e-9), agreement with the dense backend on a medium problem, forward
mode (VJP vs JVP), gradients of explicit zeros, sparse leaf gradients, batch sums."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import optlayers as ol
from sparse_oracles import coo_parts, csr_parts, planted_sparse_qp, random_sparse_pd, random_sparse_rows

pytest.importorskip("osqp")
D = torch.float64
RTOL = 1e-5


def _sym_coo(prob):
    """P as a function of the values of its upper triangle (mirrored), so FD keeps P symmetric."""
    U = sp.triu(prob.P).tocoo()
    rows = np.r_[U.row, U.col[U.row != U.col]]
    cols = np.r_[U.col, U.row[U.row != U.col]]
    mirror = torch.tensor(np.r_[np.arange(U.nnz), np.flatnonzero(U.row != U.col)])
    idx = torch.tensor(np.vstack([rows, cols]))
    n = prob.P.shape[0]
    return torch.tensor(U.data, requires_grad=True), lambda v: torch.sparse_coo_tensor(idx, v[mirror], (n, n))


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_gradients_match_finite_differences(layout):
    prob = planted_sparse_qp(n=10, m=9, density=0.3, n_eq=0, seed=21)
    Pu, make_P = _sym_coo(prob)
    if layout == "coo":
        Aidx, Av = coo_parts(prob.A)
        make_A = lambda v: torch.sparse_coo_tensor(Aidx, v, prob.A.shape)  # noqa: E731
    else:
        crow, col, Av = csr_parts(prob.A)
        make_A = lambda v: ol.sparse.csr_tensor(crow, col, v, prob.A.shape)  # noqa: E731
    Av = Av.clone().requires_grad_()
    q, l, u = (torch.tensor(a, requires_grad=True) for a in (prob.q, prob.l, prob.u))

    def f(Pu, q, Av, l, u):
        sol = ol.solve_sparse_qp(make_P(Pu), q, make_A(Av), l, u, return_solution=True)
        return sol.x, sol.y

    rep = ol.testing.check_grad(f, (Pu, q, Av, l, u), rtol=RTOL)
    assert rep.worst < RTOL


def test_equality_rows_gradient_via_solve_qp():
    """Equality rows (A x = b through solve_qp): ∇b is the multiplier part of the adjoint."""
    r = ol.testing.random_qp((), n=8, m=6, p=3, seed=22)
    Q, q, G, h, A, b = r.data()
    Gi, Gv = coo_parts(sp.coo_matrix(G.numpy()))
    Ai, Av = coo_parts(sp.coo_matrix(A.numpy()))
    args = [t.clone().requires_grad_() for t in (q, h, b, Gv, Av)]

    def f(q, h, b, Gv, Av):
        sol = ol.solve_qp(Q.to_sparse(), q, torch.sparse_coo_tensor(Gi, Gv, G.shape), h,
                          torch.sparse_coo_tensor(Ai, Av, A.shape), b, return_solution=True)
        return sol.x, sol.lam, sol.nu

    ol.testing.check_grad(f, args, rtol=RTOL)


def test_matches_dense_backend_on_medium_problem():
    """n = 120: every gradient of the sparse path equals the dense torch backend's."""
    rng = np.random.default_rng(23)
    n, m, p = 120, 90, 10
    Q = random_sparse_pd(n, 0.03, rng)
    G = random_sparse_rows(m, n, 0.04, rng)
    A = random_sparse_rows(p, n, 0.05, rng)
    x0 = rng.standard_normal(n)
    h = G @ x0 + rng.uniform(0, 1, m) * (rng.random(m) < 0.6)  # ~40% rows active at x0
    b = A @ x0
    q = rng.standard_normal(n)
    dense = [torch.tensor(M.toarray(), requires_grad=True) for M in (Q, G, A)]
    vecs = [torch.tensor(v, requires_grad=True) for v in (q, h, b)]
    Qd, Gd, Ad = dense
    qd, hd, bd = vecs
    x_dense = ol.solve_qp(Qd, qd, Gd, hd, Ad, bd, backend="torch")
    # Sparse path: differentiate w.r.t. the stored values (sparse tensors built from them).
    parts = [coo_parts(M) for M in (Q, G, A)]
    vals = [v.clone().requires_grad_() for _, v in parts]
    sq = [torch.sparse_coo_tensor(i, v, M.shape) for (i, _), v, M in zip(parts, vals, (Q, G, A))]
    vecs2 = [torch.tensor(v, requires_grad=True) for v in (q, h, b)]
    x_sparse = ol.solve_qp(sq[0], vecs2[0], sq[1], vecs2[1], sq[2], vecs2[2])
    torch.testing.assert_close(x_sparse, x_dense, atol=1e-8, rtol=0)
    w = torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(0))
    g_dense = torch.autograd.grad((w * x_dense).sum(), dense + vecs)
    g_sparse = torch.autograd.grad((w * x_sparse).sum(), vals + vecs2)
    for name, gd, gs in zip(("q", "h", "b"), g_dense[3:], g_sparse[3:]):
        torch.testing.assert_close(gs, gd, atol=1e-8, rtol=1e-7, msg=name)
    for name, gd, (idx, _), gs in zip(("Q", "G", "A"), g_dense[:3], parts, g_sparse[:3]):
        gd_at = gd[idx[0], idx[1]]
        if name == "Q":  # the dense backend returns the symmetric gradient; so do we
            gd_at = 0.5 * (gd[idx[0], idx[1]] + gd[idx[1], idx[0]])
        torch.testing.assert_close(gs, gd_at, atol=1e-8, rtol=1e-7, msg=name)


def test_explicit_zero_gets_the_dense_gradient():
    """An explicitly stored zero in A is a structural entry: its gradient is the dense one."""
    prob = planted_sparse_qp(n=8, m=6, n_eq=0, seed=24)
    zr, zc = map(int, np.argwhere(prob.A.toarray() == 0)[0])
    Ac = sp.coo_matrix(prob.A)
    Az = sp.coo_matrix((np.r_[Ac.data, 0.0], (np.r_[Ac.row, zr], np.r_[Ac.col, zc])), shape=Ac.shape)
    Ai, Av = coo_parts(Az)
    Av.requires_grad_()
    P = torch.tensor(prob.P.toarray())
    args = [torch.tensor(a) for a in (prob.q, prob.l, prob.u)]
    x = ol.solve_sparse_qp(P.to_sparse(), args[0], torch.sparse_coo_tensor(Ai, Av, Az.shape), *args[1:])
    (g_sparse,) = torch.autograd.grad(x.sum(), Av)
    Ad = torch.tensor(prob.A.toarray(), requires_grad=True)
    xd = ol.solve_sparse_qp(P, args[0], Ad, *args[1:])  # dense A: every entry structural
    (g_dense,) = torch.autograd.grad(xd.sum(), Ad)
    Ai_c = torch.sparse_coo_tensor(Ai, Av, Az.shape).coalesce().indices()
    k = int(((Ai_c[0] == zr) & (Ai_c[1] == zc)).nonzero())
    g_coalesced = torch.sparse_coo_tensor(Ai, g_sparse, Az.shape).coalesce().values()
    assert abs(float(g_dense[zr, zc])) > 1e-6  # the test would be vacuous otherwise
    torch.testing.assert_close(g_coalesced[k], g_dense[zr, zc], atol=1e-9, rtol=1e-7)


def test_sparse_leaf_gets_sparse_gradient_with_same_pattern():
    prob = planted_sparse_qp(n=8, m=6, seed=25)
    A = torch.sparse_coo_tensor(*coo_parts(prob.A), prob.A.shape).coalesce().requires_grad_()
    Pc = torch.tensor(prob.P.toarray()).to_sparse_csr().requires_grad_()
    x = ol.solve_sparse_qp(Pc, torch.tensor(prob.q), A, torch.tensor(prob.l), torch.tensor(prob.u))
    x.sum().backward()
    assert A.grad.layout == torch.sparse_coo and torch.equal(A.grad.coalesce().indices(), A.indices())
    assert Pc.grad.layout == torch.sparse_csr and torch.equal(Pc.grad.col_indices(), Pc.col_indices())
    assert float(A.grad.coalesce().values().abs().max()) > 0


def test_shared_input_gradient_is_batch_sum():
    prob = planted_sparse_qp(n=8, m=6, seed=26)
    Ai, Av = coo_parts(prob.A)
    Av.requires_grad_()
    P = torch.sparse_coo_tensor(*coo_parts(prob.P), prob.P.shape)
    q = torch.tensor(prob.q)
    qs = torch.stack([q, q + 0.05, q - 0.05])
    l, u = torch.tensor(prob.l), torch.tensor(prob.u)
    x = ol.solve_sparse_qp(P, qs, torch.sparse_coo_tensor(Ai, Av, prob.A.shape), l, u)
    (g_batch,) = torch.autograd.grad(x.sum(), Av)
    total = torch.zeros_like(Av)
    for k in range(3):
        xk = ol.solve_sparse_qp(P, qs[k], torch.sparse_coo_tensor(Ai, Av, prob.A.shape), l, u)
        total += torch.autograd.grad(xk.sum(), Av)[0]
    torch.testing.assert_close(g_batch, total, atol=1e-10, rtol=1e-9)


def test_forward_mode_matches_reverse_mode():
    """<w, J v> by forward AD equals <Jᵀ w, v> by reverse AD (dense-entry inputs: torch has no
    forward AD for sparse tensor constructors)."""
    import torch.autograd.forward_ad as fwAD

    prob = planted_sparse_qp(n=9, m=7, seed=27)
    base = [torch.tensor(M.toarray()) for M in (prob.P, prob.A)] + [torch.tensor(a) for a in (prob.q, prob.l, prob.u)]
    gen = torch.Generator().manual_seed(1)
    tang = [torch.randn(t.shape, dtype=D, generator=gen) for t in base]
    tang[0] = 0.5 * (tang[0] + tang[0].T)
    fin = [torch.isfinite(t) for t in base[3:]]
    for k, f in zip((3, 4), fin[1:]):
        tang[k] = torch.where(f, tang[k], torch.zeros_like(tang[k]))

    def f(P, A, q, l, u):
        sol = ol.solve_sparse_qp(P, q, A, l, u, return_solution=True, cache=ol.sparse.SolverCache())
        return sol.x, sol.y

    with fwAD.dual_level():
        outs = f(*[fwAD.make_dual(t, v) for t, v in zip(base, tang)])
        jx, jy = (fwAD.unpack_dual(o).tangent for o in outs)
    wx, wy = torch.randn(jx.shape, dtype=D, generator=gen), torch.randn(jy.shape, dtype=D, generator=gen)
    inputs = [t.clone().requires_grad_() for t in base]
    x, y = f(*inputs)
    grads = torch.autograd.grad((wx * x).sum() + (wy * y).sum(), inputs)
    lhs = float((wx * jx).sum() + (wy * jy).sum())
    rhs = sum(float(torch.where(torch.isfinite(g * v), g * v, torch.zeros_like(v)).sum()) for g, v in zip(grads, tang))
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs))


def test_gradient_without_polish_uses_backward_factorization():
    prob = planted_sparse_qp(n=10, m=8, seed=28)
    cache = ol.sparse.SolverCache()
    q = torch.tensor(prob.q, requires_grad=True)
    P = torch.sparse_coo_tensor(*coo_parts(prob.P), prob.P.shape)
    A = torch.sparse_coo_tensor(*coo_parts(prob.A), prob.A.shape)
    l, u = torch.tensor(prob.l), torch.tensor(prob.u)
    x = ol.solve_sparse_qp(P, q, A, l, u, polish=False, eps_abs=1e-9, eps_rel=1e-9, cache=cache)
    assert cache.stats.factorizations == 0  # no polish: nothing factored in the forward
    (g,) = torch.autograd.grad(x.sum(), q)
    assert cache.stats.factorizations == 1
    x2 = ol.solve_sparse_qp(P, q, A, l, u, cache=ol.sparse.SolverCache())
    (g2,) = torch.autograd.grad(x2.sum(), q)
    torch.testing.assert_close(g, g2, atol=1e-8, rtol=0)


def test_superlu_fallback_without_qdldl(monkeypatch):
    """Without QDLDL the reduced KKT system is factored by scipy's SuperLU: same gradients."""
    import sys

    prob = planted_sparse_qp(n=10, m=8, seed=29)
    P = torch.sparse_coo_tensor(*coo_parts(prob.P), prob.P.shape)
    A = torch.sparse_coo_tensor(*coo_parts(prob.A), prob.A.shape)
    l, u = torch.tensor(prob.l), torch.tensor(prob.u)

    def grad_q():
        q = torch.tensor(prob.q, requires_grad=True)
        x = ol.solve_sparse_qp(P, q, A, l, u, cache=ol.sparse.SolverCache())
        return x.detach(), torch.autograd.grad((x * torch.arange(10.0, dtype=D)).sum(), q)[0]

    x1, g1 = grad_q()
    monkeypatch.setitem(sys.modules, "qdldl", None)  # import qdldl -> ImportError
    x2, g2 = grad_q()
    torch.testing.assert_close(x2, x1, atol=1e-12, rtol=0)
    torch.testing.assert_close(g2, g1, atol=1e-10, rtol=1e-9)


def test_float32_gradients_match_float64():
    prob = planted_sparse_qp(n=10, m=8, seed=30)
    out = {}
    for dt in (torch.float32, torch.float64):
        Ai, Av = coo_parts(prob.A)
        Av = Av.to(dt).requires_grad_()
        q = torch.tensor(prob.q, dtype=dt, requires_grad=True)
        P = torch.sparse_coo_tensor(*coo_parts(prob.P), prob.P.shape).to(dt)
        x = ol.solve_sparse_qp(P, q, torch.sparse_coo_tensor(Ai, Av, prob.A.shape), torch.tensor(prob.l, dtype=dt),
                               torch.tensor(prob.u, dtype=dt))
        gq, gA = torch.autograd.grad(x.sum(), (q, Av))
        assert gq.dtype == dt and gA.dtype == dt
        out[dt] = (gq.double(), gA.double())
    for a, b in zip(out[torch.float32], out[torch.float64]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
