"""The active-set KKT solves of ``optlayers/_src/qp/kkt.py`` against dense references.

The reduced Cholesky factor (float64) must give what the LU of K_δ gives: the same elimination
of K_δ (checked without refinement against a dense solve of K_δ), the exact solution of K after
refinement, and the LU's answer wherever it cannot converge (singular K, H not factorizable).
"""

import pytest
import torch

import optlayers as ol
from optlayers._src.qp import kkt
from optlayers._src.qp.backward import data_of

F64 = torch.float64


def _data(P, B):
    return data_of(P.Q, P.q, P.G, P.h, P.A, P.b, B)


def _dense_K(data, mask, delta=None):
    """K (or K_δ) of every problem, built densely from the data (B, N, N)."""
    return kkt.assemble(data, mask, delta)


def _dense_solve(K, r):
    """K⁻¹ r per problem, one matrix at a time: torch's batched LU (MKL) can hang on a 2-thread CPU
    for matrices beyond ~200 (see kkt.CPU_BATCHED_LU_MAX_N)."""
    return torch.stack([torch.linalg.solve(K[i], r[i]) for i in range(K.shape[0])])


def _rhs(B, N, seed):
    return torch.randn(B, N, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("n,m,p,shared", [(5, 8, 2, ()), (20, 20, 5, ("G",)), (12, 41, 0, ("G",)),
                                          (60, 90, 10, ())])
def test_reduced_elimination_solves_the_regularized_system(n, m, p, shared):
    B = 6
    P = ol.testing.random_qp(B, n, m, p, shared=shared, seed=n)
    data = _data(P, B)
    mask = P.active.reshape(B, m).to(F64)
    # A large δ keeps H well conditioned, so the unrefined solve must match K_δ⁻¹ r to round-off:
    # this checks the elimination itself (the default δ ≈ √ε is checked after refinement below).
    fac = kkt.cholesky_factor(data, mask, reg=1e-2)
    assert fac.is_cholesky and fac.lu.shape == (B, n, n)
    r = _rhs(B, n + m + p, 1)
    u = kkt._ReducedSystem(data, fac).apply(r)
    Kd = _dense_K(data, mask, fac.delta)
    ref = _dense_solve(Kd, r)
    assert float(((u - ref).abs().amax(-1) / ref.abs().amax(-1)).max()) <= 1e-11


@pytest.mark.parametrize("n,m,p,shared", [(5, 8, 2, ()), (20, 20, 5, ("G",)), (12, 41, 0, ("G",)),
                                          (60, 90, 10, ()), (100, 200, 10, ())])
def test_cholesky_solve_is_the_exact_solution_like_the_lu(n, m, p, shared):
    B = 4
    P = ol.testing.random_qp(B, n, m, p, shared=shared, seed=n + 1)
    data = _data(P, B)
    mask = P.active.reshape(B, m).to(F64)
    r = _rhs(B, n + m + p, 2)
    K = _dense_K(data, mask)
    ref = _dense_solve(K, r)
    fac = kkt.factor(data, mask)
    assert fac.is_cholesky
    u, res = kkt.solve_with_residual(data, fac, r)
    u_lu = kkt.solve(data, kkt.lu_factor(data, mask), r)
    scale = ref.abs().amax(-1)
    assert float(((u - ref).abs().amax(-1) / scale).max()) <= 1e-10
    assert float(((u - u_lu).abs().amax(-1) / scale).max()) <= 1e-10
    assert torch.allclose(res, r - torch.bmm(K, u.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-12 * float(scale.max()))


def _count_lu(monkeypatch):
    calls = []
    real = kkt.lu_factor

    def counting(data, mask, *args):
        calls.append(data.B)
        return real(data, mask, *args)

    monkeypatch.setattr(kkt, "lu_factor", counting)
    return calls


def test_singular_kkt_falls_back_to_the_lu_answer(monkeypatch):
    # An LP (Q = 0) whose active rows are dependent (row 1 = 2 · row 0) and leave a null space:
    # K is singular, the refinement cannot converge, and the problem takes the LU path.
    B, n, m = 3, 4, 5
    g = torch.Generator().manual_seed(3)
    G = torch.randn(B, m, n, generator=g, dtype=F64)
    G[:, 1] = 2 * G[:, 0]
    Q = torch.zeros(B, n, n, dtype=F64)
    Q[0] = torch.eye(n, dtype=F64)  # problem 0: Q ≻ 0, nonsingular K
    data = data_of(Q, torch.zeros(B, n, dtype=F64), G, torch.zeros(B, m, dtype=F64),
                   torch.zeros(B, 0, n, dtype=F64), torch.zeros(B, 0, dtype=F64), B)
    mask = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=F64)
    r = _rhs(B, n + m, 4)
    calls = _count_lu(monkeypatch)
    u = kkt.solve(data, kkt.factor(data, mask), r)
    assert calls == [2]  # problems 1 and 2, once
    u_lu = kkt.solve(data, kkt.lu_factor(data, mask), r)
    assert torch.isfinite(u).all()
    assert torch.allclose(u, u_lu, rtol=0, atol=1e-9 * float(u_lu.abs().max()))


def test_unfactorizable_H_falls_back_to_the_lu(monkeypatch):
    # A Q with a negative eigenvalue (the solvers reject it; the factor must still not return NaN).
    B, n, m = 2, 3, 2
    Q = torch.eye(n, dtype=F64).repeat(B, 1, 1)
    Q[1, 0, 0] = -1.0
    G = torch.zeros(B, m, n, dtype=F64)
    G[:, 0, 1] = 1.0
    data = data_of(Q, torch.zeros(B, n, dtype=F64), G, torch.zeros(B, m, dtype=F64),
                   torch.zeros(B, 0, n, dtype=F64), torch.zeros(B, 0, dtype=F64), B)
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64)
    fac = kkt.factor(data, mask)
    assert torch.isnan(fac.lu[1]).all() and torch.isfinite(fac.lu[0]).all()
    calls = _count_lu(monkeypatch)
    r = _rhs(B, n + m, 5)
    u = kkt.solve(data, fac, r)
    assert calls == [1]
    K = _dense_K(data, mask)
    assert torch.allclose(u, _dense_solve(K, r), rtol=0, atol=1e-12)


def test_float32_keeps_the_lu():
    P = ol.testing.random_qp(3, 6, 6, 1, dtype=torch.float32)
    data = _data(P, 3)
    fac = kkt.factor(data, P.active.to(torch.float32))
    assert not fac.is_cholesky and fac.lu.shape == (3, 13, 13)


def test_merged_polish_factor_keeps_its_kind_through_the_backward(monkeypatch):
    # The torch backend's forward factor (Cholesky, float64) is what the backward reuses: its
    # gradients must equal those of the native backend's own C++ solve (an independent code path)
    # or, without the native build, those of the LU factor.
    P = ol.testing.random_qp(16, 30, 40, 5, seed=7)
    ins = [t.clone().requires_grad_() for t in P.data()]
    x = ol.solve_qp(*ins, backend="torch")
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=F64)
    g_chol = torch.autograd.grad((w * x).sum(), ins)
    data = _data(P, 16)
    mask = P.active.to(F64)
    monkeypatch.setenv("OPTLAYERS_TORCH_KKT", "lu")
    assert not kkt.factor(data, mask).is_cholesky
    ins2 = [t.clone().requires_grad_() for t in P.data()]
    g_lu = torch.autograd.grad((w * ol.solve_qp(*ins2, backend="torch")).sum(), ins2)
    monkeypatch.delenv("OPTLAYERS_TORCH_KKT")
    assert kkt.factor(data, mask).is_cholesky
    for a, b in zip(g_chol, g_lu):
        assert float((a - b).abs().max()) <= 1e-10 * (1 + float(b.abs().max()))
