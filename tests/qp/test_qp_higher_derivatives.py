"""Second (and higher) derivatives of ``solve_qp`` and ``qp_value`` (``create_graph=True``).

References: ``gradgradcheck`` (finite differences of the first derivative), closed forms of the
Hessians of the optimal value on a fixed active set, and finite differences of the gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optlayers as ol
from optlayers._src.qp.backward import KKTSolveMap
from qp_oracles import sym

F64 = torch.float64


def _leaves(P):
    return [t.detach().clone().requires_grad_() for t in P.data()]


def _solution_fn(backend):
    def fn(S, q, G, h, A, b):
        sol = ol.solve_qp(sym(S), q, G, h, A, b, backend=backend, return_solution=True)
        return sol.x, sol.lam, sol.nu

    return fn


def test_gradgradcheck_solution_wrt_every_input(backend):
    """x, λ, ν of a batch (3 of 5 inequalities active, one equality): second derivatives in all
    six inputs and in the upstream gradients match finite differences of the first derivative."""
    P = ol.testing.random_qp(2, 4, 5, 1, active_fraction=0.5, seed=3)
    assert torch.autograd.gradgradcheck(_solution_fn(backend), _leaves(P))


def test_gradgradcheck_with_shared_constraints(backend):
    """One G, h, A, b for the batch (their second derivatives are batch sums)."""
    P = ol.testing.random_qp(3, 4, 6, 1, active_fraction=0.5, shared=("G", "A"), seed=4)
    S, q, G, h, A, b = _leaves(P)
    h = h[0].detach().clone().requires_grad_()  # shared h too: feasible for every problem?
    sol0 = ol.solve_qp(sym(S), q, G, h, A, b[0].detach(), backend=backend, return_solution=True)
    assert bool(sol0.ok.all())
    b0 = b[0].detach().clone().requires_grad_()
    assert torch.autograd.gradgradcheck(_solution_fn(backend), [S, q, G, h, A, b0])


def _closed_form_value_hessians(Q, q, G, h, A, b, active):
    """On the active set C = [G_𝒜; A] (held fixed): x = −Q⁻¹(q + Cᵀμ), μ = −S⁻¹(CQ⁻¹q + d),
    S = CQ⁻¹Cᵀ, d = (h_𝒜, b). Then ∇²_q V = −(Q⁻¹ − Q⁻¹CᵀS⁻¹CQ⁻¹), and with ∇_h V = −λ,
    ∇²_h V = −∂λ/∂h = S⁻¹ on the active rows (zero elsewhere)."""
    Q, G, A = (t.numpy() for t in (Q, G, A))
    idx = np.flatnonzero(active.numpy())
    C = np.vstack([G[idx], A])
    Qi = np.linalg.inv(Q)
    Si = np.linalg.inv(C @ Qi @ C.T)
    Hq = -(Qi - Qi @ C.T @ Si @ C @ Qi)
    Hh = np.zeros((G.shape[0], G.shape[0]))
    k = len(idx)
    Hh[np.ix_(idx, idx)] = Si[:k, :k]
    return torch.from_numpy(Hq), torch.from_numpy(Hh)


def test_value_hessians_match_closed_form(backend):
    P = ol.testing.random_qp((), 5, 6, 1, active_fraction=0.5, seed=7)
    Q, q, G, h, A, b = (t.detach() for t in P.data())
    Hq = torch.autograd.functional.hessian(lambda q_: ol.qp_value(Q, q_, G, h, A, b, backend=backend), q)
    Hh = torch.autograd.functional.hessian(lambda h_: ol.qp_value(Q, q, G, h_, A, b, backend=backend), h)
    Hq_ref, Hh_ref = _closed_form_value_hessians(Q, q, G, h, A, b, P.active)
    assert Hq_ref.abs().max() > 0.01 and Hh_ref.abs().max() > 0.01  # not a trivially zero Hessian
    torch.testing.assert_close(Hq, Hq_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(Hh, Hh_ref, rtol=1e-8, atol=1e-10)


def test_value_hessian_in_q_is_the_jacobian_of_x(backend):
    P = ol.testing.random_qp(3, 6, 8, 2, active_fraction=0.4, seed=8)
    Q, q, G, h, A, b = (t.detach() for t in P.data())
    H = torch.autograd.functional.hessian(lambda q_: ol.qp_value(Q, q_, G, h, A, b, backend=backend).sum(), q)
    J = torch.autograd.functional.jacobian(lambda q_: ol.solve_qp(Q, q_, G, h, A, b, backend=backend), q)
    torch.testing.assert_close(H, J, rtol=1e-9, atol=1e-11)


def test_hessian_vector_product_in_Q_matches_finite_differences_of_the_gradient(backend):
    """d/dt ∇_S L(S + tV) for L = wᵀx*(sym S) — double backward vs a central difference of
    first-order gradients (which only use the tested first-order backward)."""
    P = ol.testing.random_qp(2, 5, 6, 1, active_fraction=0.5, seed=9)
    S0, q, G, h, A, b = (t.detach() for t in P.data())
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, 5, generator=gen, dtype=F64)
    V = torch.randn(S0.shape, generator=gen, dtype=F64)

    def grad_S(S, create_graph=False):
        x = ol.solve_qp(sym(S), q, G, h, A, b, backend=backend)
        return torch.autograd.grad((w * x).sum(), S, create_graph=create_graph)[0]

    S = S0.clone().requires_grad_()
    (hvp,) = torch.autograd.grad((grad_S(S, create_graph=True) * V).sum(), S)
    eps = 1e-6
    fd = (grad_S((S0 + eps * V).requires_grad_()) - grad_S((S0 - eps * V).requires_grad_())) / (2 * eps)
    # The Hessian is symmetric: ⟨∇²L V, ·⟩ computed by double backward is ∇²L V.
    torch.testing.assert_close(hvp, fd, rtol=1e-6, atol=1e-8)


def test_backends_agree_on_second_derivatives(backend):
    P = ol.testing.random_qp(4, 6, 9, 1, active_fraction=0.4, shared=("G",), seed=10)
    Q, q, G, h, A, b = (t.detach() for t in P.data())

    def hvp(be):
        Gl = G.clone().requires_grad_()
        v = ol.qp_value(Q, q, Gl, h, A, b, backend=be).sum()
        (g,) = torch.autograd.grad(v, Gl, create_graph=True)
        (hg,) = torch.autograd.grad(g.square().sum(), Gl)
        return hg

    torch.testing.assert_close(hvp(backend), hvp("torch"), rtol=1e-8, atol=1e-10)


def test_failed_problems_get_finite_zero_second_derivatives(backend):
    Q = torch.eye(1, dtype=F64).expand(2, 1, 1)
    G = torch.tensor([[[1.0], [-1.0]], [[1.0], [-1.0]]], dtype=F64)
    h = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=F64)  # problem 1: x ≤ −1 and x ≥ 1
    q = torch.tensor([[0.5], [0.0]], dtype=F64, requires_grad=True)
    v = ol.qp_value(Q, q, G, h, backend=backend, on_failure="nan")
    (g,) = torch.autograd.grad(v[0], q, create_graph=True)
    (H,) = torch.autograd.grad(g.sum(), q)
    torch.testing.assert_close(H, torch.tensor([[-1.0], [0.0]], dtype=F64))  # V = −q²/2 for |q| < 1


def test_registered_op_is_twice_differentiable():
    """``torch.ops.optlayers.qp_solve`` called directly (its ``register_autograd`` formula)."""
    from optlayers._src.native import ops
    from optlayers._src.native.backend import native_status
    from optlayers._src.qp.problem import canonicalize

    ok, why = native_status()
    if not ok:
        pytest.skip(f"native backend unavailable: {why}")
    P = ol.testing.random_qp(2, 4, 5, 1, active_fraction=0.5, seed=11)
    Q, q, G, h, A, b = (t.detach() for t in P.data())

    def fn(q_, h_):
        data = canonicalize(Q, q_, G, h_, A, b)
        return torch.ops.optlayers.qp_solve(*ops._solve_args(data, 1e-9, 50, True, False))[0]

    assert torch.autograd.gradgradcheck(fn, [q.clone().requires_grad_(), h.clone().requires_grad_()])


def test_kkt_solve_map_is_twice_differentiable():
    """u = K⁻¹r on a fixed active set: the torch factor (reduced Cholesky in float64) and the C++
    solve (where the native ops are loaded); shared and batched matrices."""
    from optlayers._src.native.backend import native_status

    P = ol.testing.random_qp(2, 4, 6, 1, active_fraction=0.5, seed=12)
    S, q, G, h, A, b = _leaves(P)
    mask = P.active.to(F64)
    rhs = torch.randn(2, 4 + 6 + 1, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    kinds = [False] + ([True] if native_status()[0] else [])
    for native in kinds:

        def fn(S_, G_, A_, r_):
            return KKTSolveMap.apply(sym(S_), G_, A_, mask, r_, native)

        assert torch.autograd.gradgradcheck(fn, [S, G, A, rhs])
        G0 = G[0].detach().clone().requires_grad_()  # one G for the batch
        assert torch.autograd.gradgradcheck(fn, [S, G0, A, rhs])



def test_dependent_and_degenerate_active_rows_give_finite_second_derivatives(backend):
    """A duplicated active row (dependent active constraints: K singular, the regularized solve
    of kkt.py) leaves ∂x/∂q unchanged; a weakly active row (zero multiplier) stays finite."""
    P = ol.testing.random_qp((), 5, 6, 1, active_fraction=0.5, seed=7)
    Q, q, G, h, A, b = (t.detach() for t in P.data())
    i = int(P.active.nonzero()[0])
    G2, h2 = torch.cat([G, G[i:i + 1]]), torch.cat([h, h[i:i + 1]])
    H = torch.autograd.functional.hessian(lambda q_: ol.qp_value(Q, q_, G2, h2, A, b, backend=backend), q)
    J = torch.autograd.functional.jacobian(lambda q_: ol.solve_qp(Q, q_, G, h, A, b, backend=backend), q)
    torch.testing.assert_close(H, J, rtol=1e-9, atol=1e-11)
    Hh = torch.autograd.functional.hessian(lambda h_: ol.qp_value(Q, q, G2, h_, A, b, backend=backend), h2)
    assert torch.isfinite(Hh).all()
    x = ol.solve_qp(Q, q, G, h, A, b, backend=backend)
    Gd, hd = torch.cat([G, torch.eye(5, dtype=F64)[:1]]), torch.cat([h, x[:1]])  # x₀ ≤ x₀*: λ = 0
    Hd = torch.autograd.functional.hessian(lambda q_: ol.qp_value(Q, q_, Gd, hd, A, b, backend=backend), q)
    assert torch.isfinite(Hd).all()
