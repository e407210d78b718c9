"""Cone projections and the Jacobians of the projections (zero, nonneg, SOC, PSD, exp)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optlayers._src.conic import cones as C

DT = torch.float64


def _fd_jacobian(f, v: torch.Tensor, h: float) -> torch.Tensor:
    """Central differences of a batched map f: (E, k) -> (E, k); returns (E, k, k)."""
    E, k = v.shape
    J = torch.zeros(E, k, k, dtype=DT)
    for j in range(k):
        e = torch.zeros(k, dtype=DT)
        e[j] = h
        J[:, :, j] = (f(v + e) - f(v - e)) / (2 * h)
    return J


def _exp_in_cone(p: torch.Tensor, tol: float) -> torch.Tensor:
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    ysafe = torch.where(y > 0, y, torch.ones_like(y))
    smooth = (y > 0) & (ysafe * torch.exp(x / ysafe) <= z + tol * (1 + z.abs()))
    face = (y.abs() <= tol) & (x <= tol) & (z >= -tol)
    return smooth | face


def test_exp_projection_properties_and_against_cvxpy():
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(0)
    v = torch.tensor(np.concatenate([2 * rng.normal(size=(300, 3)), 30 * rng.normal(size=(50, 3)),
                                     0.01 * rng.normal(size=(50, 3))]), dtype=DT)
    p = C.proj_exp(v)
    d = C.proj_exp_dual(-v)           # Π_{K*}(−v)
    # Moreau: v = Π_K(v) − Π_{K*}(−v), the two parts orthogonal; Π_K(v) ∈ K.
    torch.testing.assert_close(p - d, v, atol=1e-12, rtol=0)
    # (Points whose projection has a large ρ = x/y lose digits to e^ρ: ~1e-9 relative.)
    assert float(((p * d).sum(1).abs() / (1 + (v * v).sum(1))).max()) < 1e-8
    assert bool(_exp_in_cone(p, 1e-9).all())
    # Against a small CVXPY projection problem (Clarabel, tight): we are never farther from v.
    for i in range(0, 400, 20):
        x = cp.Variable(3)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(x - v[i].numpy())), [cp.ExpCone(x[0], x[1], x[2])])
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        ours = float(torch.linalg.vector_norm(v[i] - p[i]))
        theirs = float(np.linalg.norm(v[i].numpy() - x.value))
        assert ours <= theirs + 1e-7 * (1 + theirs)
        np.testing.assert_allclose(p[i].numpy(), x.value, atol=1e-4 * (1 + float(v[i].abs().max())))


def test_exp_projection_cases():
    v = torch.tensor([
        [0.0, 1.0, 2.0],      # inside K (1·e^0 ≤ 2): unchanged
        [1.0, -1.0, -5.0],    # in the polar cone: projects to 0
        [-1.0, -2.0, 3.0],    # x, y ≤ 0: (x, 0, max(z, 0))
        [1.0, 1.0, 1.0],      # outside: onto the smooth boundary
    ], dtype=DT)
    p = C.proj_exp(v)
    torch.testing.assert_close(p[0], v[0])
    torch.testing.assert_close(p[1], torch.zeros(3, dtype=DT))
    torch.testing.assert_close(p[2], torch.tensor([-1.0, 0.0, 3.0], dtype=DT))
    x, y, z = p[3]
    assert float(y) > 0 and abs(float(y * torch.exp(x / y) - z)) < 1e-12


def test_jacobians_match_finite_differences():
    rng = np.random.default_rng(1)
    # SOC (all three cases occur among random points).
    w = torch.tensor(rng.normal(size=(200, 5)), dtype=DT)
    jac = C._SOCJac(w)
    torch.testing.assert_close(jac.dense(), _fd_jacobian(C.proj_soc, w, 1e-7), atol=1e-6, rtol=0)
    # PSD (svec, order 4).
    lay = C._layout(C.ConeDims(psd=(4,)), torch.device("cpu"))
    maps = lay.psd_maps[4]
    w = torch.tensor(rng.normal(size=(100, 10)), dtype=DT)
    torch.testing.assert_close(C._PSDJac(w, 4, maps).dense(),
                               _fd_jacobian(lambda u: C.proj_psd(u, 4, maps), w, 1e-7), atol=1e-6, rtol=0)
    # Exponential cone: compare where finite differences are reliable (points whose projection
    # has moderate ρ = x/y; at large ρ, e^ρ makes the z-component's differences noisy).
    v = torch.tensor(rng.normal(size=(2000, 3)), dtype=DT)
    p = C.proj_exp(v)
    rho = torch.where(p[:, 1] > 0, p[:, 0] / p[:, 1].clamp(min=1e-300), torch.zeros_like(p[:, 0]))
    keep = rho.abs() < 5
    v = v[keep]
    Jfd = _fd_jacobian(C.proj_exp, v, 1e-7)
    Jan = C._dproj_exp(v, C.proj_exp(v))
    assert float((Jfd - Jan).abs().amax()) < 1e-5
    assert bool(((Jan - Jan.transpose(1, 2)).abs() < 1e-10).all())


def test_dual_cone_jacobian_dense_matches_matvec_and_is_a_projection_derivative():
    dims = C.ConeDims(zero=1, nonneg=2, soc=(3, 4, 3), psd=(2, 3), exp=2)
    rng = np.random.default_rng(2)
    w = torch.tensor(rng.normal(size=(4, dims.size)), dtype=DT)
    jac = C.DualConeJacobian(w, dims)
    D = jac.dense()
    v = torch.tensor(rng.normal(size=(4, dims.size)), dtype=DT)
    torch.testing.assert_close(jac.matvec(v), (D @ v.unsqueeze(-1)).squeeze(-1))
    V = torch.tensor(rng.normal(size=(4, 5, dims.size)), dtype=DT)
    torch.testing.assert_close(jac.matvec(V), V @ D.transpose(1, 2))
    torch.testing.assert_close(D, D.transpose(1, 2))
    eig = torch.linalg.eigvalsh(D)
    assert float(eig.min()) > -1e-10 and float(eig.max()) < 1 + 1e-10
    # y = Π_{K*}(w) and s = y − w = Π_K(−w) are complementary, for every block.
    y = C.proj_dual(w, dims)
    s = C.proj_primal(-w, dims)
    torch.testing.assert_close(y - s, w, atol=1e-12, rtol=0)
    assert float((y * s).sum(1).abs().max()) < 1e-10
    # Finite differences of the whole product projection.
    Jfd = _fd_jacobian(lambda u: C.proj_dual(u, dims), w, 1e-7)
    torch.testing.assert_close(D, Jfd, atol=1e-5, rtol=0)
