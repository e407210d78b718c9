"""ol.qp_value: the optimal value and its envelope-theorem gradient.

Checked against (i) central finite differences of the value, (ii) the gradient of
½xᵀQx + qᵀx computed through ``solve_qp``'s implicit KKT backward (an independent route to the
same derivative at strictly complementary solutions), (iii) closed forms, and (iv) forward mode
(<u, J v> both ways). Shared inputs get the batch sum; failed problems follow the status policy.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad

import optlayers as ol

F64 = torch.float64
NAMES = ("Q", "q", "G", "h", "A", "b")


def _objective(Q, q, x):
    return 0.5 * (x * (Q @ x.unsqueeze(-1)).squeeze(-1)).sum(-1) + (q * x).sum(-1)


def _leaves(prob):
    return [t.detach().clone().requires_grad_() for t in prob.data()]


def test_value_equals_objective_at_planted_solution(backend):
    prob = ol.testing.random_qp((2, 3), 8, 6, 2, seed=3)
    v = ol.qp_value(*prob.data(), backend=backend)
    assert v.shape == (2, 3)
    torch.testing.assert_close(v, _objective(prob.data()[0], prob.data()[1], prob.x), rtol=1e-10, atol=1e-10)


def test_unbatched_value_is_a_scalar_and_return_solution(backend):
    prob = ol.testing.random_qp((), 5, 4, 1, seed=4)
    v, sol = ol.qp_value(*prob.data(), backend=backend, return_solution=True)
    assert v.shape == () and sol.x.shape == (5,)
    torch.testing.assert_close(sol.x, prob.x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sol.lam, prob.lam, rtol=1e-9, atol=1e-9)
    assert not sol.x.requires_grad
    assert sol.backend == backend


def test_gradient_matches_finite_differences(backend):
    prob = ol.testing.random_qp(3, 5, 4, 1, seed=5)
    inputs = _leaves(prob)
    # Q is perturbed through its symmetric part (solvers require a symmetric Q).
    report = ol.testing.check_grad(
        lambda S, *d: ol.qp_value(0.5 * (S + S.mT), *d, backend=backend), inputs,
        mode="directional", num_directions=3, rtol=1e-6, raise_on_failure=False,
    )
    assert report.ok, str(report)


def test_gradient_matches_implicit_kkt_gradient_of_the_objective(backend):
    """Envelope (no linear solve) vs autograd through x = solve_qp(...) (KKT adjoint)."""
    prob = ol.testing.random_qp(6, 7, 9, 2, seed=6)
    ins_env = _leaves(prob)
    ins_kkt = _leaves(prob)
    w = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(0))
    v = ol.qp_value(*ins_env, backend=backend)
    g_env = torch.autograd.grad((w * v).sum(), ins_env)
    x = ol.solve_qp(*ins_kkt, backend=backend)
    f = _objective(ins_kkt[0], ins_kkt[1], x)
    torch.testing.assert_close(v, f.detach(), rtol=1e-12, atol=1e-12)
    g_kkt = torch.autograd.grad((w * f).sum(), ins_kkt)
    for name, a, c in zip(NAMES, g_env, g_kkt):
        if name == "Q":  # Q enters only through its symmetric part
            a, c = 0.5 * (a + a.mT), 0.5 * (c + c.mT)
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-9, msg=lambda m: f"d{name}: {m}")


def test_closed_form_gradients():
    """min ½‖x‖² − cᵀx s.t. x ≤ u with c > u on the first coordinate: x = min(c, u), λ = max(c − u, 0)."""
    c = torch.tensor([2.0, 0.5], dtype=F64)
    u = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    q = (-c).requires_grad_()
    v = ol.qp_value(torch.eye(2, dtype=F64), q, torch.eye(2, dtype=F64), u)
    x = torch.minimum(c, u.detach())
    lam = (c - u.detach()).clamp_min(0)
    torch.testing.assert_close(v, 0.5 * (x * x).sum() - (c * x).sum())
    gq, gu = torch.autograd.grad(v, [q, u])
    torch.testing.assert_close(gq, x)
    torch.testing.assert_close(gu, -lam)


def test_shared_inputs_get_batch_summed_gradients(backend):
    """One G, h (and Q) for the batch: gradient = Σ over problems of the per-problem gradient."""
    prob = ol.testing.random_qp(5, 6, 8, 2, shared=("Q", "G"), seed=7)
    Q, q, G, h, A, b = prob.data()
    assert Q.dim() == 2 and G.dim() == 2
    h_shared = h[0].clone()  # one h for all: problem 0's active set is then shared by design
    Qs, Gs, hs = (t.clone().requires_grad_() for t in (Q, G, h_shared))
    qb = q.clone().requires_grad_()
    v = ol.qp_value(Qs, qb, Gs, hs, A, b, backend=backend)
    assert v.shape == (5,)
    gQ, gq, gG, gh = torch.autograd.grad(v.sum(), [Qs, qb, Gs, hs])
    assert gQ.shape == Q.shape and gG.shape == G.shape and gh.shape == h_shared.shape
    # Per-problem reference: the same problems with every input expanded to the batch.
    Qe, Ge, he = (t.expand((5,) + t.shape).clone().requires_grad_() for t in (Q, G, h_shared))
    v2 = ol.qp_value(Qe, q, Ge, he, A, b, backend=backend)
    torch.testing.assert_close(v, v2)
    eQ, eG, eh = torch.autograd.grad(v2.sum(), [Qe, Ge, he])
    torch.testing.assert_close(gQ, eQ.sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gG, eG.sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, eh.sum(0), rtol=1e-12, atol=1e-12)
    # ... and the shared-input gradient also matches finite differences.
    report = ol.testing.check_grad(
        lambda G_, h_: ol.qp_value(Q, q, G_, h_, A, b, backend=backend),
        [G.clone().requires_grad_(), h_shared.clone().requires_grad_()],
        mode="directional", num_directions=3, rtol=1e-6, raise_on_failure=False,
    )
    assert report.ok, str(report)


def test_partially_broadcast_batch():
    """Q per grasp (N, 1, n, n), q per grasp and wrench (N, J, n): value (N, J)."""
    prob = ol.testing.random_qp((3, 4), 5, 6, 0, seed=8)
    Q, q, G, h, _, _ = prob.data()
    Q1 = Q[:, :1].clone().requires_grad_()
    v = ol.qp_value(Q1, q, G, h)
    assert v.shape == (3, 4)
    (gQ,) = torch.autograd.grad(v.sum(), [Q1])
    Qe = Q1.detach().expand(3, 4, 5, 5).clone().requires_grad_()
    (gQe,) = torch.autograd.grad(ol.qp_value(Qe, q, G, h).sum(), [Qe])
    torch.testing.assert_close(gQ, gQe.sum(1, keepdim=True))


def test_only_requested_inputs_get_gradients():
    prob = ol.testing.random_qp(2, 4, 3, 1, seed=9)
    Q, q, G, h, A, b = prob.data()
    q = q.clone().requires_grad_()
    v = ol.qp_value(Q, q, G, h, A, b)
    (gq,) = torch.autograd.grad(v.sum(), [q])
    torch.testing.assert_close(gq, prob.x)


def test_forward_mode_matches_reverse_mode():
    prob = ol.testing.random_qp(3, 5, 6, 2, seed=10)
    data = prob.data()
    gen = torch.Generator().manual_seed(1)
    tangents = [torch.randn(t.shape, dtype=F64, generator=gen) for t in data]
    tangents[0] = 0.5 * (tangents[0] + tangents[0].mT)
    u = torch.randn(3, dtype=F64, generator=gen)
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(t, d) for t, d in zip(data, tangents)]
        jv = forward_ad.unpack_dual(ol.qp_value(*duals)).tangent
    leaves = [t.clone().requires_grad_() for t in data]
    grads = torch.autograd.grad((u * ol.qp_value(*leaves)).sum(), leaves)
    vjp_dot = sum((g * d).sum() for g, d in zip(grads, tangents))
    torch.testing.assert_close((u * jv).sum(), vjp_dot, rtol=1e-10, atol=1e-12)


def test_linear_program_value():
    """Q = None: V = qᵀx* at the planted vertex; ∇q = x*."""
    prob = ol.testing.random_qp(2, 4, 6, 1, lp=True, seed=11)
    _, q, G, h, A, b = prob.data()
    q = q.clone().requires_grad_()
    v = ol.qp_value(None, q, G, h, A, b)
    torch.testing.assert_close(v, (q * prob.x).sum(-1), rtol=1e-9, atol=1e-9)
    (gq,) = torch.autograd.grad(v.sum(), [q])
    torch.testing.assert_close(gq, prob.x, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------ failure policy


def _one_infeasible_batch():
    """Two 1-D problems sharing G: x ≤ h₀, −x ≤ h₁; problem 1 has x ≤ −1 and x ≥ 1."""
    Q = torch.ones(2, 1, 1, dtype=F64)
    q = torch.tensor([[0.5], [0.0]], dtype=F64, requires_grad=True)
    G = torch.tensor([[1.0], [-1.0]], dtype=F64)
    h = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=F64, requires_grad=True)
    return Q, q, G, h


def test_failure_raises_solver_error_naming_the_index(backend):
    Q, q, G, h = _one_infeasible_batch()
    with pytest.raises(ol.SolverError, match="batch index 1: primal infeasible") as info:
        ol.qp_value(Q, q, G, h, backend=backend)
    assert info.value.failed == [1]


def test_failure_nan_policy_gives_status_and_zero_gradient(backend):
    Q, q, G, h = _one_infeasible_batch()
    v, sol = ol.qp_value(Q, q, G, h, backend=backend, on_failure="nan", return_solution=True)
    assert sol.status.tolist() == [int(ol.Status.SOLVED), int(ol.Status.PRIMAL_INFEASIBLE)]
    assert bool(torch.isnan(v[1])) and bool(torch.isnan(sol.x[1]).all())
    torch.testing.assert_close(v[0], torch.tensor(-0.125, dtype=F64))  # x = −0.5
    gq, gh = torch.autograd.grad(v[0], [q, h])  # the failed problem's entries: zero, not NaN
    assert torch.isfinite(gq).all() and torch.isfinite(gh).all()
    torch.testing.assert_close(gq, torch.tensor([[-0.5], [0.0]], dtype=F64))
    torch.testing.assert_close(gh, torch.zeros(2, 2, dtype=F64))


def test_bad_input_errors_come_from_shared_validation():
    with pytest.raises(ValueError, match="G must have shape"):
        ol.qp_value(torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64), torch.zeros(3, 4, dtype=F64), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="positive semidefinite"):
        ol.qp_value(-torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64))


def test_osqp_backend_gives_the_same_value_and_gradient():
    pytest.importorskip("osqp")
    prob = ol.testing.random_qp(3, 6, 5, 2, seed=12)
    a = _leaves(prob)
    b = _leaves(prob)
    va, sol = ol.qp_value(*a, backend="osqp", return_solution=True)
    vb = ol.qp_value(*b, backend="native" if _native_ok() else "torch")
    assert sol.backend == "osqp"
    torch.testing.assert_close(va, vb, rtol=1e-9, atol=1e-9)
    for ga, gb in zip(torch.autograd.grad(va.sum(), a), torch.autograd.grad(vb.sum(), b)):
        torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-9)


def test_sparse_inputs_get_a_clear_error():
    Q = torch.eye(3, dtype=F64).to_sparse()
    with pytest.raises(ValueError, match="qp_value takes dense tensors; Q is sparse"):
        ol.qp_value(Q, torch.zeros(3, dtype=F64))


def _native_ok() -> bool:
    from optlayers._src.native.backend import native_status

    return native_status()[0]
