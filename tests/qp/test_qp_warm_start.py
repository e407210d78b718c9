"""Warm start of the dense QP layers (``solve_qp`` / ``qp_value`` / ``QPLayer`` ``warm_start``):
an accepted guess is as exact as a cold solve, a wrong guess costs only time, statuses and
gradients are those of a cold solve, bad input gets a clear error."""

from __future__ import annotations

import pytest
import torch

import optlayers as ol
from optlayers._src.qp import warm_start as warm

from qp_oracles import cvxpy_solve_batch

D = torch.float64


def planted(B=12, n=10, m=15, p=2, seed=3, dtype=D):
    return ol.testing.random_qp((B,), n=n, m=m, p=p, active_fraction=0.5, seed=seed, dtype=dtype)


def solve(P, **kw):
    return ol.solve_qp(P.Q, P.q, P.G, P.h, P.A, P.b, return_solution=True, **kw)


def test_own_solution_is_accepted_without_iterations(backend):
    P = planted()
    cold = solve(P, backend=backend)
    assert bool((cold.iterations > 0).all())
    w = solve(P, backend=backend, warm_start=cold)
    assert bool(w.ok.all()) and bool((w.iterations == 0).all())
    assert float((w.x - P.x).abs().max()) < 1e-10
    assert float((w.lam - P.lam).abs().max()) < 1e-8
    assert float((w.nu - P.nu).abs().max()) < 1e-8


@pytest.mark.parametrize("kind", ["none", "all", "random"])
def test_wrong_guesses_cost_time_not_accuracy(backend, kind):
    P = planted(seed=5)
    shape = (P.q.shape[0], P.h.shape[-1])
    if kind == "none":
        guess = torch.zeros(shape, dtype=torch.bool)
    elif kind == "all":  # 15 rows on 10 variables: never a valid active set here
        guess = torch.ones(shape, dtype=torch.bool)
    else:
        guess = torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.5
    w = solve(P, backend=backend, warm_start=guess)
    assert bool(w.ok.all())
    assert float((w.x - P.x).abs().max()) < 1e-10
    truth = P.lam > 0
    # Problems whose guess (or its one correction) was wrong were solved cold (iterations > 0).
    wrong = (guess != truth).any(-1)
    if kind == "all":
        assert bool((w.iterations[wrong] > 0).all())
    assert bool((w.iterations[~wrong] == 0).all())


def test_perturbed_problems_match_an_independent_solver(backend):
    """The bilevel use: solve, change the data a little, warm-start from the old solution.
    Reference: CVXPY + Clarabel on the new problems."""
    P = planted(B=6, n=8, m=12, p=1, seed=11)
    old = solve(P, backend=backend)
    g = torch.Generator().manual_seed(1)
    q2 = P.q + 1e-3 * torch.randn(P.q.shape, generator=g, dtype=D)
    h2 = P.h + 1e-3 * torch.rand(P.h.shape, generator=g, dtype=D)
    w = ol.solve_qp(P.Q, q2, P.G, h2, P.A, P.b, backend=backend, return_solution=True, warm_start=old)
    x_ref, _, _ = cvxpy_solve_batch(P.Q, q2, P.G, h2, P.A, P.b)
    assert bool(w.ok.all())
    assert bool((w.iterations == 0).any())  # the guesses are mostly right after a small change
    assert float((w.x - x_ref).abs().max()) < 1e-6  # Clarabel's own accuracy
    cold = ol.solve_qp(P.Q, q2, P.G, h2, P.A, P.b, backend=backend, return_solution=True)
    assert float((w.x - cold.x).abs().max()) < 1e-10


def test_gradients_equal_the_cold_solve_and_finite_differences(backend):
    P = planted(B=5, n=6, m=9, p=1, seed=7)
    old = solve(P, backend=backend)
    c = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=D)

    def grads(warm_start):
        q, h = P.q.clone().requires_grad_(), P.h.clone().requires_grad_()
        sol = ol.solve_qp(P.Q, q, P.G, h, P.A, P.b, backend=backend, return_solution=True, warm_start=warm_start)
        ((sol.x * c).sum() + sol.lam.sum()).backward()
        return q.grad, h.grad, sol.iterations

    gq_c, gh_c, _ = grads(None)
    gq_w, gh_w, it = grads(old)
    assert bool((it == 0).all())
    assert torch.allclose(gq_w, gq_c, atol=1e-9) and torch.allclose(gh_w, gh_c, atol=1e-9)
    report = ol.testing.check_grad(
        lambda q, h: ol.solve_qp(P.Q, q, P.G, h, P.A, P.b, backend=backend, warm_start=old),
        (P.q.clone().requires_grad_(), P.h.clone().requires_grad_()), rtol=1e-6,
    )
    assert report.ok, report


def test_qp_value_warm_start(backend):
    P = planted(B=8, seed=13)
    v_cold, old = ol.qp_value(P.Q, P.q, P.G, P.h, P.A, P.b, backend=backend, return_solution=True)
    q = P.q.clone().requires_grad_()
    v, sol = ol.qp_value(P.Q, q, P.G, P.h, P.A, P.b, backend=backend, return_solution=True, warm_start=old)
    v.sum().backward()
    assert bool((sol.iterations == 0).all())
    assert torch.allclose(v, v_cold, rtol=1e-12, atol=1e-12)
    assert torch.allclose(q.grad, P.x, atol=1e-10)  # envelope: ∇q V = x*


def test_infeasible_problem_keeps_its_status(backend):
    # x1 ≤ −1 and −x1 ≤ −1 (x1 ≥ 1): infeasible whatever the guess.
    Q = torch.eye(2, dtype=D).expand(2, 2, 2)
    q = torch.zeros(2, 2, dtype=D)
    G = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=D)
    h = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=D)  # problem 1 is feasible
    guess = torch.ones(2, 2, dtype=torch.bool)
    sol = ol.solve_qp(Q, q, G, h, backend=backend, return_solution=True, on_failure="nan", warm_start=guess)
    assert sol.status.tolist() == [int(ol.Status.PRIMAL_INFEASIBLE), int(ol.Status.SOLVED)]
    assert bool(sol.x[0].isnan().all()) and torch.allclose(sol.x[1], torch.zeros(2, dtype=D), atol=1e-12)


def test_guess_broadcasts_over_the_batch_and_float32_works(backend):
    P = planted(B=4, p=0, seed=17, dtype=torch.float32)
    cold = ol.solve_qp(P.Q, P.q, P.G, P.h, backend=backend, return_solution=True)
    shared = cold.lam[0] > 0  # (m,): one guess for every problem
    w = ol.solve_qp(P.Q, P.q, P.G, P.h, backend=backend, return_solution=True, warm_start=shared)
    assert bool(w.ok.all()) and w.x.dtype == torch.float32
    assert float((w.x - P.x).abs().max()) < 1e-4
    assert int(w.iterations[0]) == 0


def test_bad_warm_start_inputs_get_clear_errors():
    P = planted(B=3, m=15)
    with pytest.raises(ValueError, match=r"warm_start must have shape \(\*, m\).*m = 15"):
        solve(P, warm_start=torch.zeros(3, 14, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"warm_start must have shape"):
        solve(P, warm_start=torch.zeros(2, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="warm_start must be a QPSolution"):
        solve(P, warm_start=[1, 0, 1])
    with pytest.raises(ValueError, match="warm_start is for dense QPs"):
        ol.solve_qp(P.Q[0].to_sparse(), P.q[0], P.G[0], P.h[0], warm_start=torch.zeros(15, dtype=torch.bool))


def test_equality_only_problems_ignore_the_guess():
    Q = torch.eye(3, dtype=D)
    A = torch.ones(1, 3, dtype=D)
    sol = ol.solve_qp(Q, torch.zeros(3, dtype=D), None, None, A, torch.ones(1, dtype=D), return_solution=True,
                      warm_start=torch.zeros(0, dtype=torch.bool))
    assert torch.allclose(sol.x, torch.full((3,), 1 / 3, dtype=D))


def test_layer_reuses_its_last_active_sets(backend):
    P = planted(B=6, seed=19)
    layer = ol.QPLayer(backend=backend, warm_start=True, return_solution=True)
    first = layer(P.Q, P.q, P.G, P.h, P.A, P.b)
    second = layer(P.Q, P.q, P.G, P.h, P.A, P.b)
    assert bool((first.iterations > 0).all()) and bool((second.iterations == 0).all())
    assert float((second.x - P.x).abs().max()) < 1e-10
    # Another batch size: solved cold, no error; then the stored guess is that batch's.
    third = layer(P.Q[:2], P.q[:2], P.G[:2], P.h[:2], P.A[:2], P.b[:2])
    assert bool((third.iterations > 0).all())
    layer.reset_warm_start()
    assert bool((layer(P.Q, P.q, P.G, P.h, P.A, P.b).iterations > 0).all())
    assert list(layer.state_dict()) == []  # the guess is not model state
    sparse = ol.QPLayer(warm_start=True)  # sparse data: the OSQP route, which warm-starts itself
    for _ in range(2):
        xs = sparse(P.Q[0].to_sparse(), P.q[0], P.G[0].to_sparse(), P.h[0])
    assert torch.allclose(xs, ol.solve_qp(P.Q[0], P.q[0], P.G[0], P.h[0]), atol=1e-6)
    plain = ol.QPLayer(backend=backend, warm_start=True)  # returns x only, still warm-starts
    x0 = plain(P.Q, P.q, P.G, P.h, P.A, P.b)
    assert isinstance(x0, torch.Tensor) and plain._guess is not None


def test_guess_of_reads_solutions_and_tensors():
    P = planted(B=2, m=15)
    from optlayers._src.qp.problem import canonicalize

    data = canonicalize(P.Q, P.q, P.G, P.h, P.A, P.b)
    cold = solve(P)
    g = warm.guess_of(cold, data)
    assert g.shape == (2, 15) and g.dtype == D and torch.equal(g > 0, cold.lam > 0)
    assert torch.equal(warm.guess_of(torch.tensor([1.0] * 15), data), torch.ones(2, 15, dtype=D))
    assert warm.guess_of(torch.zeros(5, 15), data, strict=False) is None
