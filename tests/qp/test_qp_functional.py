"""``solve_qp`` and ``qp_value`` under ``torch.func`` transforms (``optlayers/_src/qp/functional.py``).

Reference: the same quantities through plain autograd (``torch.autograd.functional.jacobian``),
whose first-order backward is tested against finite differences and closed forms elsewhere, and
the plain batched solve for ``vmap``.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, hessian, jacfwd, jacrev, vmap

import optlayers as ol
from qp_oracles import sym

F64 = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)


def _problem(batch=(), seed=7, shared=()):
    P = ol.testing.random_qp(batch, 5, 6, 1, active_fraction=0.5, seed=seed, shared=shared)
    return [t.detach() for t in P.data()]


def test_jacrev_and_jacfwd_in_every_input_match_autograd(backend):
    data = _problem()
    data[0] = sym(data[0])

    def f(*args):
        S, *rest = args
        return ol.solve_qp(sym(S), *rest, backend=backend)

    ref = torch.autograd.functional.jacobian(f, tuple(data))
    for transform in (jacrev, jacfwd):
        got = transform(f, argnums=tuple(range(6)))(*data)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, **TOL)


def test_jacrev_through_multipliers_with_shared_constraints(backend):
    Q, q, G, h, A, b = _problem(batch=3, shared=("G", "A"))
    h, b = h[0], b[0]  # one h, b for the batch as well

    def f(q_, G_):
        sol = ol.solve_qp(Q, q_, G_, h, A, b, backend=backend, return_solution=True)
        return sol.lam

    got = jacrev(f, argnums=(0, 1))(q, G)
    ref = torch.autograd.functional.jacobian(f, (q, G))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, **TOL)


def test_vmap_is_one_batched_solve(backend):
    Q, q, G, h, A, b = _problem()
    qs = q + 0.3 * torch.randn(7, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    got = vmap(lambda q_: ol.solve_qp(Q, q_, G, h, A, b, backend=backend))(qs)
    torch.testing.assert_close(got, ol.solve_qp(Q, qs, G, h, A, b, backend=backend), rtol=0, atol=1e-12)
    # vmapped along a non-leading dimension, with batched data beside it
    Qb, qb, Gb, hb, Ab, bb = _problem(batch=2, seed=3)
    hs = hb.unsqueeze(-1) + 0.1 * torch.rand(2, 6, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    got = vmap(lambda h_: ol.solve_qp(Qb, qb, Gb, h_, Ab, bb, backend=backend), in_dims=-1)(hs)
    ref = ol.solve_qp(Qb, qb, Gb, hs.movedim(-1, 0), Ab, bb, backend=backend)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_per_sample_jacobians_by_vmap_of_jacrev(backend):
    Q, q, G, h, A, b = _problem()
    qs = q + 0.2 * torch.randn(4, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    f = lambda q_: ol.solve_qp(Q, q_, G, h, A, b, backend=backend)
    got = vmap(jacrev(f))(qs)
    for i in range(4):
        torch.testing.assert_close(got[i], torch.autograd.functional.jacobian(f, qs[i]), **TOL)


def test_per_sample_gradients_of_shared_data(backend):
    """grad of a shared G inside vmap over q: one gradient per vmapped problem."""
    Q, q, G, h, A, b = _problem()
    qs = q + 0.2 * torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    w = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(4))
    loss = lambda G_, q_: (w * ol.solve_qp(Q, q_, G_, h, A, b, backend=backend)).sum()
    got = vmap(grad(loss), in_dims=(None, 0))(G, qs)
    for i in range(3):
        G_ = G.clone().requires_grad_()
        (ref,) = torch.autograd.grad(loss(G_, qs[i]), G_)
        torch.testing.assert_close(got[i], ref, **TOL)


def test_value_grad_and_hessian(backend):
    Q, q, G, h, A, b = _problem()
    V = lambda q_, h_: ol.qp_value(Q, q_, G, h_, A, b, backend=backend)
    gq, gh = grad(V, argnums=(0, 1))(q, h)
    sol = ol.solve_qp(Q, q, G, h, A, b, backend=backend, return_solution=True)
    torch.testing.assert_close(gq, sol.x, **TOL)
    torch.testing.assert_close(gh, -sol.lam, **TOL)
    H = hessian(V, argnums=0)(q, h)
    torch.testing.assert_close(H, torch.autograd.functional.jacobian(lambda q_: ol.solve_qp(Q, q_, G, h, A, b), q), **TOL)


def test_lp_and_equality_only_problems(backend):
    Q, q, G, h, A, b = _problem()
    # equality-constrained QP: x = −Q⁻¹(q + Aᵀν), closed-form Jacobian −(Q⁻¹ − Q⁻¹Aᵀ(AQ⁻¹Aᵀ)⁻¹AQ⁻¹)
    J = jacrev(lambda q_: ol.solve_qp(Q, q_, A=A, b=b, backend=backend))(q)
    Qi = torch.linalg.inv(Q)
    ref = -(Qi - Qi @ A.mT @ torch.linalg.inv(A @ Qi @ A.mT) @ A @ Qi)
    torch.testing.assert_close(J, ref, **TOL)
    # an LP (Q = None) on a box: the vertex does not move with c, so ∂x/∂c = 0 and ∂x/∂h = ±e_i
    G2 = torch.cat([torch.eye(2, dtype=F64), -torch.eye(2, dtype=F64)])
    h2 = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    c = torch.tensor([-1.0, 1.0], dtype=F64)
    Jc, Jh = jacrev(lambda c_, h_: ol.solve_qp(None, c_, G2, h_, backend=backend), argnums=(0, 1))(c, h2)
    torch.testing.assert_close(Jc, torch.zeros(2, 2, dtype=F64))
    torch.testing.assert_close(Jh, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, -1.0]], dtype=F64))


def test_failures_under_vmap(backend):
    Q = torch.eye(1, dtype=F64)
    G = torch.tensor([[1.0], [-1.0]], dtype=F64)
    hs = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=F64)  # the second is infeasible
    q = torch.tensor([0.5], dtype=F64)
    f = lambda h_: ol.solve_qp(Q, q, G, h_, backend=backend, on_failure="nan")
    x = vmap(f)(hs)
    assert x[0].item() == pytest.approx(-0.5) and torch.isnan(x[1]).all()
    J = vmap(jacrev(f))(hs)
    torch.testing.assert_close(J[0], torch.zeros(1, 2, dtype=F64))  # x = −q, off the bounds
    assert torch.isfinite(J[1]).all() and not J[1].any()  # failed: zero, not NaN
    with pytest.raises(ol.SolverError, match="primal infeasible"):
        vmap(lambda h_: ol.solve_qp(Q, q, G, h_, backend=backend))(hs)


def test_float32(backend):
    Q, q, G, h, A, b = (t.float() for t in _problem())
    J = jacrev(lambda q_: ol.solve_qp(Q, q_, G, h, A, b, backend=backend))(q)
    ref = torch.autograd.functional.jacobian(lambda q_: ol.solve_qp(Q.double(), q_, G.double(), h.double(),
                                                                     A.double(), b.double()), q.double())
    assert J.dtype == torch.float32
    torch.testing.assert_close(J.double(), ref, rtol=1e-3, atol=1e-4)


def test_second_and_third_derivatives_of_the_solution(backend):
    """A parameter entering nonlinearly (Q + diag(t²)): torch.func.hessian, jacrev(jacrev) and
    jacrev(jacfwd) equal the autograd Hessian; jacrev(hessian) equals finite differences of it."""
    Q, q, G, h, A, b = (t for t in _problem())
    f = lambda t: ol.solve_qp(Q + torch.diag(t**2), q, G, h, A, b, backend=backend).pow(3).sum()
    t0 = torch.full((5,), 0.7, dtype=F64)
    ref = torch.autograd.functional.hessian(f, t0)
    assert ref.abs().max() > 0.01
    for H in (hessian(f)(t0), jacrev(jacrev(f))(t0), jacrev(jacfwd(f))(t0)):
        torch.testing.assert_close(H, ref, **TOL)
    eps = 1e-5
    fd = torch.stack([(torch.autograd.functional.hessian(f, t0 + eps * e) - torch.autograd.functional.hessian(f, t0 - eps * e))
                      / (2 * eps) for e in torch.eye(5, dtype=F64)], -1)
    torch.testing.assert_close(jacrev(hessian(f))(t0), fd, rtol=1e-6, atol=1e-8)


def test_clear_errors_for_unsupported_uses():
    Q, q, G, h, A, b = _problem()
    f = lambda q_: ol.solve_qp(Q + torch.diag(q_**2), q, G, h, A, b)
    with pytest.raises(RuntimeError, match="forward-over-forward"):
        jacfwd(jacfwd(f))(q)
    with pytest.raises(NotImplementedError, match="osqp"):
        grad(lambda q_: ol.solve_qp(Q, q_, G, h, A, b, backend="osqp").sum())(q)
    with pytest.raises(NotImplementedError, match="warm_start"):
        vmap(lambda q_: ol.solve_qp(Q, q_, G, h, A, b, warm_start=torch.zeros(6, dtype=torch.bool)))(q.expand(2, 5))


def test_qp_layer_per_sample_gradients_by_functional_call():
    """The torch.func recipe for per-sample gradients: vmap(grad(functional_call(model, …)))."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4, dtype=F64)
            self.qp = ol.QPLayer(warm_start=True)
            self.G = torch.cat([torch.eye(4, dtype=F64), -torch.eye(4, dtype=F64)])

        def forward(self, z):
            return self.qp(torch.eye(4, dtype=F64), self.lin(z), self.G, torch.ones(8, dtype=F64))

    torch.manual_seed(0)
    model = Model()
    zs = 3 * torch.randn(5, 3, dtype=F64)
    ys = torch.randn(5, 4, dtype=F64)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, z, y):
        return ((torch.func.functional_call(model, p, (z,)) - y) ** 2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, zs, ys)
    assert model.qp._guess is None
    for i in range(5):
        model.zero_grad()
        loss(dict(model.named_parameters()), zs[i], ys[i]).backward()
        for k, v in model.named_parameters():
            torch.testing.assert_close(per_sample[k][i], v.grad, **TOL)


@pytest.mark.parametrize("transform", [jacrev, jacfwd])
def test_nested_vmap_of_jacobians_in_shared_and_batched_data(backend, transform):
    """vmap over problems of Jacobians in a shared G and a batched h: the folded data is never
    materialized per (co)tangent, and every slice gets its own Jacobian."""
    Q, q, G, h, A, b = _problem(batch=3, shared=("G",))
    f = lambda G_, h_, q_, Q_, A_, b_: ol.solve_qp(Q_, q_, G_, h_, A_, b_, backend=backend)
    got = vmap(transform(f, argnums=(0, 1)), in_dims=(None, 0, 0, 0, 0, 0))(G, h, q, Q, A, b)
    for i in range(3):
        ref = torch.autograd.functional.jacobian(lambda G_, h_: f(G_, h_, q[i], Q[i], A[i], b[i]), (G, h[i]))
        for g, r in zip(got, ref):
            torch.testing.assert_close(g[i], r, **TOL)


def test_vmap_and_jacrev_of_the_optimal_value(backend):
    Q, q, G, h, A, b = _problem()
    qs = q + 0.2 * torch.randn(4, 5, dtype=F64, generator=torch.Generator().manual_seed(5))
    V = lambda q_: ol.qp_value(Q, q_, G, h, A, b, backend=backend)
    torch.testing.assert_close(vmap(V)(qs), ol.qp_value(Q, qs, G, h, A, b, backend=backend), rtol=0, atol=1e-12)
    torch.testing.assert_close(vmap(jacrev(V))(qs), ol.solve_qp(Q, qs, G, h, A, b, backend=backend), **TOL)


def test_forward_mode_in_Q_sees_only_its_symmetric_part(backend):
    # ½xᵀQx depends on sym(Q) only; reverse mode returns a symmetric ∇Q, and forward mode must
    # treat a non-symmetric tangent (jacfwd's basis E_ij) the same way — it used dQ x and gave
    # jacfwd ≠ jacrev in Q by 0.125, func.hessian of qp_value in Q off by 0.08 (found by fuzzing).
    from torch.autograd import forward_ad as fwAD

    data = _problem()
    data[0] = sym(data[0])
    Q, rest = data[0], data[1:]
    E = torch.zeros_like(Q)
    E[0, 1] = 1.0
    with fwAD.dual_level():
        t_asym = fwAD.unpack_dual(ol.solve_qp(fwAD.make_dual(Q, E), *rest, backend=backend)).tangent
        t_sym = fwAD.unpack_dual(ol.solve_qp(fwAD.make_dual(Q, 0.5 * (E + E.T)), *rest, backend=backend)).tangent
    assert float(t_sym.abs().max()) > 1e-3  # the direction matters at this solution
    torch.testing.assert_close(t_asym, t_sym, **TOL)
    f = lambda Q: ol.solve_qp(Q, *rest, backend=backend)  # noqa: E731
    torch.testing.assert_close(jacfwd(f)(Q), jacrev(f)(Q), **TOL)
    V = lambda Q: ol.qp_value(Q, *rest, backend=backend)  # noqa: E731
    torch.testing.assert_close(hessian(V)(Q), jacrev(jacrev(V))(Q), **TOL)
