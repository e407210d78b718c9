"""Status policy on the sparse path: infeasible / unbounded / iteration limit raise
``ol.SolverError`` naming the batch indices, or give NaN plus the status tensor; failed problems
get zero gradient and never poison the others."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optlayers as ol
from sparse_oracles import planted_sparse_qp, torch_data

pytest.importorskip("osqp")
D = torch.float64


def _infeasible_batch():
    """Problem 0 feasible, problem 1 primal infeasible (x₁ + x₂ ≥ 3 with |x| ≤ 1), same pattern."""
    P = torch.eye(2, dtype=D).to_sparse()
    q = torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=D, requires_grad=True)
    A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D).to_sparse()
    l = torch.tensor([[-1.0, -1.0, -2.0], [-1.0, -1.0, 3.0]], dtype=D)
    u = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 4.0]], dtype=D)
    return P, q, A, l, u


def test_infeasible_raises_with_indices():
    with pytest.raises(ol.SolverError) as info:
        ol.solve_sparse_qp(*_infeasible_batch(), cache=ol.sparse.SolverCache())
    assert info.value.failed == [1]
    assert "primal infeasible" in str(info.value)


def test_infeasible_nan_policy_and_zero_gradient():
    P, q, A, l, u = _infeasible_batch()
    sol = ol.solve_sparse_qp(P, q, A, l, u, on_failure="nan", return_solution=True, cache=ol.sparse.SolverCache())
    assert sol.status.tolist() == [ol.Status.SOLVED, ol.Status.PRIMAL_INFEASIBLE]
    assert torch.isnan(sol.x[1]).all() and torch.isfinite(sol.x[0]).all()
    torch.testing.assert_close(sol.x[0], torch.tensor([-1.0, 1.0], dtype=D), atol=1e-9, rtol=0)
    (g,) = torch.autograd.grad(sol.x[0].sum(), q)
    assert torch.isfinite(g).all() and torch.equal(g[1], torch.zeros(2, dtype=D))


def test_unbounded_lp_is_dual_infeasible():
    c = torch.tensor([-1.0, 0.0], dtype=D)
    A = torch.tensor([[0.0, 1.0]], dtype=D).to_sparse()
    sol = ol.solve_sparse_qp(None, c, A, torch.tensor([-1.0], dtype=D), torch.tensor([1.0], dtype=D),
                             on_failure="nan", return_solution=True, cache=ol.sparse.SolverCache())
    assert int(sol.status) == ol.Status.DUAL_INFEASIBLE and torch.isnan(sol.x).all()


def test_iteration_limit_is_reported_unless_polish_rescues_it():
    prob = planted_sparse_qp(n=30, m=25, density=0.15, seed=51)
    data = torch_data(prob)
    sol = ol.solve_sparse_qp(*data, max_iter=1, polish=False, on_failure="nan", return_solution=True,
                             cache=ol.sparse.SolverCache())
    assert int(sol.status) == ol.Status.MAX_ITER and torch.isnan(sol.x).all()
    with pytest.raises(ol.SolverError, match="iteration limit"):
        ol.solve_sparse_qp(*data, max_iter=1, polish=False, cache=ol.sparse.SolverCache())


def test_solve_qp_route_follows_the_policy():
    Q = torch.eye(2, dtype=D).to_sparse()
    G = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=D).to_sparse()
    h = torch.tensor([-1.0, -1.0], dtype=D)  # x₁ ≤ −1 and x₁ ≥ 1
    sol = ol.solve_qp(Q, torch.zeros(2, dtype=D), G, h, on_failure="nan", return_solution=True)
    assert int(sol.status) == ol.Status.PRIMAL_INFEASIBLE
    assert torch.isnan(sol.x).all() and torch.isnan(sol.lam).all()
    with pytest.raises(ol.SolverError):
        ol.solve_qp(Q, torch.zeros(2, dtype=D), G, h)


def test_empty_interval_without_input_checks_is_infeasible_not_stale():
    """l > u is an input error when checked; unchecked, the problem is infeasible (never the
    previous values silently kept by OSQP's rejected update)."""
    prob = planted_sparse_qp(n=6, m=4, n_eq=0, seed=52)
    P, q, A, l, u = torch_data(prob)
    cache = ol.sparse.SolverCache()
    ol.solve_sparse_qp(P, q, A, l, u, cache=cache)
    bad_l = l.clone()
    bad_l[0] = u[0] + 1.0
    sol = ol.solve_sparse_qp(P, q, A, bad_l, u, check_inputs=False, on_failure="nan", return_solution=True, cache=cache)
    assert int(sol.status) == ol.Status.PRIMAL_INFEASIBLE


def test_status_of_solved_batch_and_polish_flag():
    prob = planted_sparse_qp(n=10, m=8, seed=53)
    sol = ol.solve_sparse_qp(*torch_data(prob), return_solution=True)
    assert bool(sol.ok) and bool(sol.polished) and int(sol.iterations) > 0
    assert np.abs(sol.x.numpy() - prob.x).max() < 1e-9


def test_unchecked_nan_data_is_a_failed_problem_not_garbage():
    prob = planted_sparse_qp(n=6, m=4, seed=54)
    P, q, A, l, u = torch_data(prob)
    bad = q.clone()
    bad[0] = float("nan")
    for cache in (ol.sparse.SolverCache(), None):  # fresh set-up, then a cached solver's update
        if cache is None:
            cache = ol.sparse.SolverCache()
            ol.solve_sparse_qp(P, q, A, l, u, cache=cache)
        sol = ol.solve_sparse_qp(P, bad, A, l, u, check_inputs=False, on_failure="nan", return_solution=True, cache=cache)
        assert int(sol.status) == ol.Status.NUMERICAL_ERROR and torch.isnan(sol.x).all()
        # ... and the solver recovers on the next, valid call.
        x = ol.solve_sparse_qp(P, q, A, l, u, cache=cache)
        np.testing.assert_allclose(x.numpy(), prob.x, atol=1e-9)
