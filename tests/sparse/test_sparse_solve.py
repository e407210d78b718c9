"""Sparse QP forward pass: solutions vs. CVXPY + Clarabel and planted solutions, every input form
(COO, CSR, dense, batched with a shared pattern, explicit zeros), two-sided and equality rows,
and the routes through ``ol.solve_qp`` / ``ol.QPLayer``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import optlayers as ol
from sparse_oracles import clarabel_solve, coo_parts, planted_sparse_qp, torch_data

pytest.importorskip("osqp")
D = torch.float64


@pytest.mark.parametrize("layout", ["coo", "csr", "dense"])
def test_matches_clarabel_and_planted(layout):
    prob = planted_sparse_qp(n=20, m=16, density=0.2, n_eq=3, seed=1)
    sol = ol.solve_sparse_qp(*torch_data(prob, layout), return_solution=True)
    x_ref, y_ref = clarabel_solve(prob.P, prob.q, prob.A, prob.l, prob.u)
    assert sol.status.item() == ol.Status.SOLVED and bool(sol.polished)
    np.testing.assert_allclose(sol.x.numpy(), x_ref, atol=1e-7)
    np.testing.assert_allclose(sol.x.numpy(), prob.x, atol=1e-9)
    np.testing.assert_allclose(sol.y.numpy(), prob.y, atol=1e-8)
    np.testing.assert_allclose(sol.y.numpy(), y_ref, atol=1e-6)


def test_unpolished_solution_is_osqp_accurate():
    prob = planted_sparse_qp(n=20, m=16, seed=2)
    sol = ol.solve_sparse_qp(*torch_data(prob), polish=False, eps_abs=1e-7, eps_rel=1e-7, return_solution=True,
                             cache=ol.sparse.SolverCache())
    assert not bool(sol.polished) and sol.status.item() == ol.Status.SOLVED
    err = np.abs(sol.x.numpy() - prob.x).max()
    assert 1e-13 < err < 1e-4  # ADMM accuracy, not the polished ~1e-12


def test_batched_shared_pattern_coo_and_csr():
    """A batch of 3 problems with one sparsity pattern and different values (and q, l, u)."""
    base = planted_sparse_qp(n=15, m=12, seed=3)
    probs = [planted_sparse_qp(n=15, m=12, seed=10 + k, P=base.P * (1 + 0.3 * k), A=base.A * (1 - 0.2 * k))
             for k in range(3)]
    B = len(probs)
    Pidx, _ = coo_parts(base.P)
    k = Pidx.shape[1]
    Pvals = torch.stack([coo_parts(p.P)[1] for p in probs])
    bidx = torch.cat([torch.arange(B).repeat_interleave(k)[None], Pidx.repeat(1, B)])
    P_coo = torch.sparse_coo_tensor(bidx, Pvals.reshape(-1), (B, 15, 15))
    A_csr = torch.stack([torch.tensor(p.A.toarray()) for p in probs]).to_sparse_csr()
    t = lambda name: torch.tensor(np.stack([getattr(p, name) for p in probs]))  # noqa: E731
    sol = ol.solve_sparse_qp(P_coo, t("q"), A_csr, t("l"), t("u"), return_solution=True)
    assert sol.x.shape == (3, 15) and sol.y.shape == (3, 12) and sol.status.shape == (3,)
    for b, p in enumerate(probs):
        np.testing.assert_allclose(sol.x[b].numpy(), p.x, atol=1e-9)


def test_broadcast_batch_dims_and_shared_matrices():
    prob = planted_sparse_qp(n=10, m=8, seed=4)
    P, q, A, l, u = torch_data(prob)
    q2 = torch.stack([q, q + 0.1, q - 0.1]).reshape(3, 1, 10).expand(3, 2, 10)
    sol = ol.solve_sparse_qp(P, q2, A, l, u, return_solution=True)
    assert sol.x.shape == (3, 2, 10) and sol.status.shape == (3, 2)
    for i, d in enumerate([0.0, 0.1, -0.1]):
        x_ref, _ = clarabel_solve(prob.P, prob.q + d, prob.A, prob.l, prob.u)
        np.testing.assert_allclose(sol.x[i, 1].numpy(), x_ref, atol=1e-7)


def test_explicit_zeros_are_kept_and_harmless():
    prob = planted_sparse_qp(n=10, m=8, seed=5)
    P = sp.coo_matrix(prob.P)
    A = sp.coo_matrix(prob.A)
    # Append explicit zeros at positions that are structurally empty (symmetric pair for P).
    zr, zc = np.nonzero(prob.P.toarray() == 0)
    zr, zc = zr[:2], zc[:2]
    Pz = sp.coo_matrix((np.r_[P.data, 0.0, 0.0, 0.0, 0.0], (np.r_[P.row, zr, zc], np.r_[P.col, zc, zr])), shape=P.shape)
    ar, ac = np.nonzero(prob.A.toarray() == 0)
    Az = sp.coo_matrix((np.r_[A.data, 0.0], (np.r_[A.row, ar[0]], np.r_[A.col, ac[0]])), shape=A.shape)
    Pi, Pv = coo_parts(Pz)
    Ai, Av = coo_parts(Az)
    P_t = torch.sparse_coo_tensor(Pi, Pv, P.shape).coalesce()
    A_t = torch.sparse_coo_tensor(Ai, Av, A.shape).coalesce()
    assert P_t._nnz() == P.nnz + 4 and A_t._nnz() == A.nnz + 1  # zeros stored
    sol = ol.solve_sparse_qp(P_t, *[torch.tensor(a) for a in (prob.q,)], A=A_t, l=torch.tensor(prob.l),
                             u=torch.tensor(prob.u), return_solution=True)
    np.testing.assert_allclose(sol.x.numpy(), prob.x, atol=1e-9)


def test_lp_and_unconstrained():
    # LP: min cᵀx over a box with a two-sided sparse row (vertex: x1 + x2 = 0.5, x2 = 1, x3 = −1).
    c = torch.tensor([-1.0, -2.0, 0.5], dtype=D)
    A = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]], dtype=D).to_sparse()
    l = torch.tensor([-1.0, -1.0, -1.0, -1.5], dtype=D)
    u = torch.tensor([1.0, 1.0, 1.0, 0.5], dtype=D)
    x = ol.solve_sparse_qp(None, c, A, l, u)
    torch.testing.assert_close(x, torch.tensor([-0.5, 1.0, -1.0], dtype=D), atol=1e-9, rtol=0)
    # Unconstrained: x = −P⁻¹q.
    prob = planted_sparse_qp(n=8, m=1, seed=6)
    P, q, *_ = torch_data(prob)
    x = ol.solve_sparse_qp(P, q)
    np.testing.assert_allclose(x.numpy(), -np.linalg.solve(prob.P.toarray(), prob.q), atol=1e-9)


def test_solve_qp_routes_sparse_inputs_to_osqp():
    """ol.solve_qp with sparse Q/G/A gives the dense backend's answer and duals."""
    r = ol.testing.random_qp((), n=12, m=10, p=3, seed=7)
    Q, q, G, h, A, b = r.data()
    sol = ol.solve_qp(Q.to_sparse(), q, G.to_sparse_csr(), h, A.to_sparse(), b, return_solution=True)
    assert sol.backend == "osqp"
    torch.testing.assert_close(sol.x, r.x, atol=1e-9, rtol=0)
    torch.testing.assert_close(sol.lam, r.lam, atol=1e-8, rtol=0)
    torch.testing.assert_close(sol.nu, r.nu, atol=1e-8, rtol=0)
    # Dense data with backend="osqp", batched, through QPLayer.
    rb = ol.testing.random_qp(4, n=6, m=5, p=2, seed=8)
    layer = ol.QPLayer(backend="osqp")
    torch.testing.assert_close(layer(*rb.data()), rb.x, atol=1e-9, rtol=0)
    # QPLayer with its default backend ("auto") on sparse data.
    torch.testing.assert_close(ol.QPLayer()(Q.to_sparse(), q, G.to_sparse(), h, A.to_sparse(), b), r.x, atol=1e-9, rtol=0)
    # Only inequalities / only equalities.
    x_ineq = ol.solve_qp(Q.to_sparse(), q, G.to_sparse(), h)
    torch.testing.assert_close(x_ineq, ol.solve_qp(Q, q, G, h), atol=1e-8, rtol=0)
    x_eq = ol.solve_qp(Q.to_sparse(), q, A=A.to_sparse(), b=b)
    torch.testing.assert_close(x_eq, ol.solve_qp(Q, q, A=A, b=b), atol=1e-8, rtol=0)


def test_float32_follows_inputs():
    prob = planted_sparse_qp(n=10, m=8, seed=9)
    P, q, A, l, u = (t.float() for t in torch_data(prob))
    x = ol.solve_sparse_qp(P, q, A, l, u)
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), prob.x, atol=1e-4)


def test_sparse_layer_module():
    prob = planted_sparse_qp(n=10, m=8, seed=11)
    layer = ol.SparseQPLayer(eps_abs=1e-7, eps_rel=1e-7, return_solution=True)
    sol = layer(*torch_data(prob))
    np.testing.assert_allclose(sol.x.numpy(), prob.x, atol=1e-9)
    assert layer.cache.stats.setups == 1
    assert "eps_abs=1e-07" in repr(layer)


def test_polish_is_exact_or_refused_on_near_degenerate_problems():
    """Tiny margins (multipliers and slacks ~1e-4): OSQP's iterate at eps = 1e-3 often points at a
    slightly wrong active set. The polish must then be refused (violations beyond round-off),
    ADMM resumed at tighter tolerances, and ``polished`` must mean exact."""
    from sparse_oracles import random_sparse_pd, random_sparse_rows

    retried = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n, m = 40, 60
        P = random_sparse_pd(n, 0.1, rng, shift=0.1)
        A = random_sparse_rows(m, n, 0.1, rng)
        x = rng.standard_normal(n)
        active = rng.random(m) < 0.5
        y = np.where(active, rng.uniform(1e-4, 1e-3, m), 0.0)
        u = A @ x + np.where(active, 0.0, rng.uniform(1e-4, 1e-3, m))
        q = -(P @ x + A.T @ y)
        cache = ol.sparse.SolverCache()
        sol = ol.solve_sparse_qp(torch.tensor(P.toarray()).to_sparse(), torch.tensor(q), torch.tensor(A.toarray()).to_sparse(),
                                 None, torch.tensor(u), eps_abs=1e-3, eps_rel=1e-3, cache=cache, return_solution=True)
        retried += cache.stats.solves > 1
        err = np.abs(sol.x.numpy() - x).max()
        assert int(sol.status) == ol.Status.SOLVED
        assert err < (1e-8 if bool(sol.polished) else 1e-3), (seed, bool(sol.polished), err)
    assert retried > 0  # the retry path was exercised
