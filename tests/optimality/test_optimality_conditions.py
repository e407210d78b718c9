"""Optimality-condition builders with custom_root / custom_fixed_point, against closed forms."""

from __future__ import annotations

import pytest
import torch

import optlayers as ol
from optlayers import linear_solve, optimality
from optlayers import projection as P
from optlayers.testing import check_grad

D = torch.float64


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def planted_qp(n=6, m=2, seed=0):
    """min ½xᵀQx + cᵀx s.t. Ax = b, x ≥ 0 with a planted strictly complementary solution."""
    M = rnd(n, n, seed=seed)
    Q = M @ M.T / n + torch.eye(n, dtype=D)
    A = rnd(m, n, seed=seed + 1)
    x = torch.rand(n, generator=torch.Generator().manual_seed(seed + 2), dtype=D) + 0.5
    active = torch.zeros(n, dtype=torch.bool)
    active[:2] = True
    x[active] = 0.0
    lam = torch.where(active, 1.0 + torch.rand(n, generator=torch.Generator().manual_seed(seed + 3), dtype=D), torch.zeros(n, dtype=D))
    nu = rnd(m, seed=seed + 4)
    c = -(Q @ x + A.T @ nu - lam)  # stationarity: Qx + c + Aᵀν − λ = 0
    b = A @ x
    return Q, c, A, b, active, (x, nu, lam)


def reduced_kkt_solution(Q, c, A, b, active):
    """Closed form with the active set fixed (valid near a strictly complementary solution).

    Q enters through its symmetric part, as in the objective ½xᵀQx."""
    Q = (Q + Q.T) / 2
    free = ~active
    nf, m = int(free.sum()), A.shape[0]
    K = torch.zeros(nf + m, nf + m, dtype=D)
    K[:nf, :nf] = Q[free][:, free]
    K[:nf, nf:] = A[:, free].T
    K[nf:, :nf] = A[:, free]
    sol = torch.linalg.solve(K, torch.cat([-c[free], b]))
    x = torch.zeros(Q.shape[0], dtype=D).index_put((free,), sol[:nf])
    nu = sol[nf:]
    lam = torch.where(active, Q @ x + c + A.T @ nu, torch.zeros_like(x))
    return x, nu, lam


def test_kkt_optimality_qp_matches_closed_form():
    Q, c, A, b, active, planted = planted_qp()
    x0, nu0, lam0 = reduced_kkt_solution(Q, c, A, b, active)
    assert torch.allclose(x0, planted[0], atol=1e-12) and torch.allclose(lam0, planted[2], atol=1e-12)
    F = optimality.kkt_optimality(
        lambda x, p: 0.5 * x @ p[0] @ x + p[1] @ x,
        eq_fun=lambda x, p: p[0] @ x - p[1],
        ineq_fun=lambda x, _: -x,
    )
    res = F(planted, (Q, c), (A, b), None)
    assert all(float(r.abs().max()) < 1e-12 for r in res)

    @ol.custom_root(F, solve=linear_solve.gmres)
    def qp(init, params_obj, params_eq, params_ineq):
        (Q, c), (A, b) = params_obj, params_eq
        return reduced_kkt_solution(Q, c, A, b, active)

    Qg, cg_, Ag, bg = (t.clone().requires_grad_() for t in (Q, c, A, b))
    z = qp(None, (Qg, cg_), (Ag, bg), None)
    loss = (z[0] * rnd(6, seed=9)).sum() + z[1].sum()
    g_impl = torch.autograd.grad(loss, [Qg, cg_, Ag, bg])
    Qr, cr, Ar, br = (t.clone().requires_grad_() for t in (Q, c, A, b))
    zr = reduced_kkt_solution(Qr, cr, Ar, br, active)
    g_ref = torch.autograd.grad((zr[0] * rnd(6, seed=9)).sum() + zr[1].sum(), [Qr, cr, Ar, br])
    for u, v in zip(g_impl, g_ref):
        assert torch.allclose(u, v, atol=1e-9)
    # The multipliers are differentiated too (finite differences).
    check_grad(lambda cc: qp(None, (Q, cc), (A, b), None)[2], (c.clone().requires_grad_(),), rtol=1e-6)


def test_kkt_optimality_argument_errors():
    F = optimality.kkt_optimality(lambda x, _: (x**2).sum(), eq_fun=None, ineq_fun=lambda x, _: -x)
    x = torch.ones(3, dtype=D)
    with pytest.raises(ValueError, match="triple"):
        F(x, None)
    with pytest.raises(ValueError, match="nu must be None"):
        F((x, x, x), None)
    G = optimality.kkt_optimality(lambda x, _: x**2)
    with pytest.raises(ValueError, match="scalar"):
        G((x, None, None), None)


def test_gradient_optimality_pytree_ridge_with_intercept():
    X, y = rnd(30, 3, seed=10), rnd(30, seed=11) + 2.0

    def obj(params, hp):
        lam, X, y = hp
        return 0.5 * ((X @ params["w"] + params["b"] - y) ** 2).sum() + 0.5 * lam * (params["w"] ** 2).sum()

    def closed(lam, X, y):
        Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=D)], 1)
        R = torch.diag(torch.cat([lam * torch.ones(3, dtype=D), torch.zeros(1, dtype=D)]))
        sol = torch.linalg.solve(Xa.T @ Xa + R, Xa.T @ y)
        return {"w": sol[:3], "b": sol[3]}

    F = optimality.gradient_optimality(obj)

    @ol.custom_root(F, solve=linear_solve.cg)
    def fit(init, hp):
        return closed(*hp)

    lam = torch.tensor(3.0, dtype=D, requires_grad=True)
    out = fit(None, (lam, X, y))
    assert float(F(out, (lam.detach(), X, y))["w"].abs().max()) < 1e-10
    ref = closed(lam, X, y)
    g = torch.autograd.grad(out["w"].sum() + out["b"], lam)[0]
    g_ref = torch.autograd.grad(ref["w"].sum() + ref["b"], lam)[0]
    assert torch.allclose(g, g_ref, rtol=1e-9)


def test_projected_gradient_l2_ball_closed_form():
    # min ½‖x − θ‖² s.t. ‖x‖ ≤ r  ⇒  x* = P_ball(θ, r); derivative w.r.t. θ and r.
    T = optimality.projected_gradient_fixed_point(
        lambda x, th: 0.5 * ((x - th) ** 2).sum(), lambda v, r: P.projection_l2_ball(v, r), step_size=0.7
    )

    @ol.custom_fixed_point(T, solve=linear_solve.gmres)
    def solver(init, theta, radius):
        x = torch.zeros_like(theta)
        for _ in range(200):  # projected gradient iterations (the solver is not differentiated)
            x = T(x, theta, radius)
        return x

    theta, r = rnd(4, seed=12) * 3, torch.tensor(1.5, dtype=D)
    J = torch.func.jacrev(lambda th: solver(None, th, r))(theta)
    J_ref = torch.func.jacrev(lambda th: P.projection_l2_ball(th, r))(theta)
    assert torch.allclose(J, J_ref, atol=1e-10)
    dr = torch.func.jacfwd(lambda rr: solver(None, theta, rr))(r)
    assert torch.allclose(dr, theta / theta.norm(), atol=1e-10)


def test_mirror_descent_entropy_simplex_matches_projected_gradient():
    # min ½‖x − θ‖² on the simplex with an interior solution: exponentiated-gradient fixed point
    # and projected-gradient fixed point give the same Jacobian I − 11ᵀ/n.
    theta = torch.tensor([0.30, 0.25, 0.20, 0.35], dtype=D)
    f = lambda x, th: 0.5 * ((x - th) ** 2).sum()  # noqa: E731
    T_md = optimality.mirror_descent_fixed_point(f, torch.log, lambda y, _: torch.softmax(y, -1), step_size=1.0)

    @ol.custom_fixed_point(T_md, solve=linear_solve.gmres)
    def eg(init, params_fun, params_proj):
        x = torch.full_like(params_fun, 1.0 / params_fun.shape[0])
        for _ in range(500):
            x = T_md(x, params_fun, params_proj)
        return x

    x = eg(None, theta, None)
    assert torch.allclose(x, P.projection_simplex(theta), atol=1e-12)
    J = torch.func.jacrev(lambda th: eg(None, th, None))(theta)
    assert torch.allclose(J, torch.eye(4, dtype=D) - 0.25, atol=1e-10)


def test_step_size_and_objective_errors():
    with pytest.raises(ValueError, match="step_size"):
        optimality.prox_grad_fixed_point(lambda x, p: x.sum(), P.prox_none, step_size=0.0)
    T = optimality.prox_grad_fixed_point(lambda x, p: x, P.prox_none)
    with pytest.raises(ValueError, match="scalar"):
        T(torch.ones(3, dtype=D), None, None)
