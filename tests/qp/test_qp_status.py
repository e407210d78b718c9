"""Per-problem status: infeasible, unbounded, iteration limit; SolverError and on_failure="nan"."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import optlayers as ol
F64 = torch.float64
S = ol.Status


def _t(*rows):
    return torch.tensor(rows, dtype=F64)


def test_status_codes_are_stable():
    assert [int(s) for s in (S.SOLVED, S.PRIMAL_INFEASIBLE, S.DUAL_INFEASIBLE, S.MAX_ITER, S.NUMERICAL_ERROR)] == [
        0, 1, 2, 3, 4,
    ]


# ----------------------------------------------------------------------------- single problems


def test_primal_infeasible_box(backend):
    """x ≤ −1 and x ≥ 1."""
    solve = partial(ol.solve_qp, backend=backend)
    G, h = _t([1.0], [-1.0]), _t(-1.0, -1.0)
    sol = solve(torch.eye(1, dtype=F64), _t(0.0), G, h, return_solution=True, on_failure="nan")
    assert int(sol.status) == S.PRIMAL_INFEASIBLE
    assert bool(torch.isnan(sol.x).all()) and bool(torch.isnan(sol.lam).all())
    with pytest.raises(ol.SolverError, match="primal infeasible"):
        solve(torch.eye(1, dtype=F64), _t(0.0), G, h)


@pytest.mark.parametrize("n", [3, 10, 50])
def test_primal_infeasible_lower_bounds_over_a_simplex(backend, n):
    """x ≥ lo with Σ lo > 1 and Σ x ≤ 1. On such problems the merit grows while the certificate
    ratio ‖Gᵀz‖ / (−hᵀz) falls geometrically; before the stall rule also counted that progress,
    both backends stopped nearly all of them (2,371 of 3,200 in a scan) as MAX_ITER an iteration
    or two before the certificate reached its tolerance."""
    g = torch.Generator().manual_seed(n)
    B = 32
    lo = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    lo = lo / lo.sum(-1, keepdim=True) * (1 + 10.0 ** -torch.randint(1, 4, (B, 1), generator=g).double())
    Q = torch.eye(n, dtype=torch.float64) * torch.rand(B, 1, 1, generator=g, dtype=torch.float64)
    q = torch.randn(B, n, generator=g, dtype=torch.float64)
    G = torch.cat([-torch.eye(n, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64)])
    h = torch.cat([-lo, torch.ones(B, 1, dtype=torch.float64)], -1)
    sol = ol.solve_qp(Q, q, G, h, backend=backend, on_failure="nan", return_solution=True)
    assert sol.status.tolist() == [int(ol.Status.PRIMAL_INFEASIBLE)] * B


def test_primal_infeasible_equalities(backend):
    """x₁ = 1 and x₁ = 2 (inconsistent equalities, no inequalities)."""
    solve = partial(ol.solve_qp, backend=backend)
    A, b = _t([1.0, 0.0], [1.0, 0.0]), _t(1.0, 2.0)
    sol = solve(torch.eye(2, dtype=F64), _t(0.0, 0.0), A=A, b=b, return_solution=True, on_failure="nan")
    assert int(sol.status) == S.PRIMAL_INFEASIBLE


def test_primal_infeasible_mixed(backend):
    """x₁ + x₂ = 3 with x₁ ≤ 1, x₂ ≤ 1."""
    solve = partial(ol.solve_qp, backend=backend)
    sol = solve(
        torch.eye(2, dtype=F64), _t(0.0, 0.0), torch.eye(2, dtype=F64), _t(1.0, 1.0), _t([1.0, 1.0]), _t(3.0),
        return_solution=True, on_failure="nan",
    )
    assert int(sol.status) == S.PRIMAL_INFEASIBLE


def test_dual_infeasible_lp_with_unbounded_direction(backend):
    """minimize −x₁ subject to −x₁ ≤ 0, −x₂ ≤ 0, x₂ ≤ 1: x₁ → ∞."""
    solve = partial(ol.solve_qp, backend=backend)
    G = _t([-1.0, 0.0], [0.0, -1.0], [0.0, 1.0])
    h = _t(0.0, 0.0, 1.0)
    sol = solve(None, _t(-1.0, 0.0), G, h, return_solution=True, on_failure="nan")
    assert int(sol.status) == S.DUAL_INFEASIBLE
    assert bool(torch.isnan(sol.x).all())
    with pytest.raises(ol.SolverError, match="unbounded"):
        solve(None, _t(-1.0, 0.0), G, h)


@pytest.mark.parametrize("Q", [None, "zeros"])
def test_dual_infeasible_unconstrained_zero_q(backend, Q):
    solve = partial(ol.solve_qp, backend=backend)
    Qt = None if Q is None else torch.zeros(2, 2, dtype=F64)
    sol = solve(Qt, _t(1.0, -2.0), return_solution=True, on_failure="nan")
    assert int(sol.status) == S.DUAL_INFEASIBLE
    assert bool(torch.isnan(sol.x).all())


def test_dual_infeasible_singular_q_with_equalities(backend):
    """minimize ½x₁² + x₂ subject to x₁ = 1: x₂ → −∞."""
    solve = partial(ol.solve_qp, backend=backend)
    Q = torch.diag(_t(1.0, 0.0))
    sol = solve(Q, _t(0.0, 1.0), A=_t([1.0, 0.0]), b=_t(1.0), return_solution=True, on_failure="nan")
    assert int(sol.status) == S.DUAL_INFEASIBLE


def test_max_iter_raises_by_default_and_flags_max_iter(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(3, 8, 8, 2, seed=1)
    sol = solve(*P.data(), max_iter=1, polish=False, return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [S.MAX_ITER] * 3
    assert bool(torch.isnan(sol.x).all()) and bool(torch.isnan(sol.nu).all())
    with pytest.raises(ol.SolverError) as info:
        solve(*P.data(), max_iter=1, polish=False)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.failed == [0, 1, 2]
    assert err.status.tolist() == [S.MAX_ITER] * 3
    msg = str(err)
    assert "3 of 3" in msg and "iteration limit" in msg
    for i in range(3):
        assert f"batch index {i}" in msg


# ----------------------------------------------------------------------------- mixed batches


def _batch_with_infeasible(bad=(2,), B=5, shared_G=False, seed=3):
    """random_qp plus two rows  x₀ ≤ c₁,  −x₀ ≤ c₂  (inactive, slack 1, for the good problems;
    c₁ = c₂ = −1, i.e. infeasible, for the ``bad`` ones). The planted solution of the good
    problems is unchanged."""
    P = ol.testing.random_qp(B, 5, 6, 1, shared=("G",) if shared_G else (), seed=seed)
    e0 = torch.zeros(2, 5, dtype=F64)
    e0[0, 0], e0[1, 0] = 1.0, -1.0
    G = torch.cat([P.G, e0], -2) if shared_G else torch.cat([P.G, e0.expand(B, 2, 5)], -2)
    extra = torch.stack([P.x[:, 0] + 1.0, -P.x[:, 0] + 1.0], -1)
    extra[list(bad)] = -1.0
    h = torch.cat([P.h, extra], -1)
    lam = torch.cat([P.lam, torch.zeros(B, 2, dtype=F64)], -1)
    return P, G, h, lam


def test_failed_entries_are_nan_and_others_correct(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P, G, h, lam = _batch_with_infeasible(bad=(1, 3))
    sol = solve(P.Q, P.q, G, h, P.A, P.b, return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [0, S.PRIMAL_INFEASIBLE, 0, S.PRIMAL_INFEASIBLE, 0]
    assert sol.ok.tolist() == [True, False, True, False, True]
    bad, good = ~sol.ok, sol.ok
    for t in (sol.x, sol.lam, sol.nu):
        assert bool(torch.isnan(t[bad]).all())
        assert bool(torch.isfinite(t[good]).all())
    assert float((sol.x[good] - P.x[good]).abs().max()) <= 1e-10
    assert float((sol.lam[good] - lam[good]).abs().max()) <= 1e-10
    assert float((sol.nu[good] - P.nu[good]).abs().max()) <= 1e-10


def test_solver_error_names_the_failing_indices(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P, G, h, _ = _batch_with_infeasible(bad=(1, 3))
    with pytest.raises(ol.SolverError) as info:
        solve(P.Q, P.q, G, h, P.A, P.b)
    msg = str(info.value)
    assert info.value.failed == [1, 3]
    assert "2 of 5" in msg
    assert "batch index 1: primal infeasible" in msg and "batch index 3: primal infeasible" in msg
    assert "batch index 0" not in msg and "batch index 2" not in msg
    assert "on_failure='nan'" in msg


def test_solver_error_multi_dim_batch_index(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P, G, h, _ = _batch_with_infeasible(bad=(5,), B=6)
    data = [t.reshape((2, 3) + t.shape[1:]) for t in (P.Q, P.q, G, h, P.A, P.b)]
    with pytest.raises(ol.SolverError) as info:
        solve(*data)
    assert info.value.failed == [(1, 2)]
    assert "batch index (1, 2)" in str(info.value)
    sol = solve(*data, return_solution=True, on_failure="nan")
    assert sol.status.shape == (2, 3)
    assert sol.status[1, 2] == S.PRIMAL_INFEASIBLE and int((sol.status != 0).sum()) == 1


def test_mixed_failure_kinds_in_one_batch(backend):
    """One solved, one primal infeasible, one unbounded problem in the same batch (1-D, n = 2)."""
    solve = partial(ol.solve_qp, backend=backend)
    Q = torch.zeros(3, 2, 2, dtype=F64)
    Q[0] = torch.eye(2, dtype=F64)
    q = _t([0.5, 0.5], [0.0, 0.0], [-1.0, 0.0])
    G = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=F64)  # box |x_i| ≤ h
    h = _t([1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    # Problem 1: x₀ ≤ −1 and x₀ ≥ 1. Problem 2 (an LP): drop its row x₀ ≤ 1, so −x₀ → −∞.
    G3 = G.expand(3, 4, 2).clone()
    G3[2, 0] = 0.0
    sol = solve(Q, q, G3, h, return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [S.SOLVED, S.PRIMAL_INFEASIBLE, S.DUAL_INFEASIBLE]
    assert float((sol.x[0] - _t(-0.5, -0.5)).abs().max()) <= 1e-12
    with pytest.raises(ol.SolverError) as info:
        solve(Q, q, G3, h)
    msg = str(info.value)
    assert "batch index 1: primal infeasible" in msg and "batch index 2: dual infeasible" in msg


@pytest.mark.parametrize("shared_G", [False, True], ids=["batched_G", "shared_G"])
def test_gradients_of_good_problems_finite_in_failed_batch(backend, shared_G):
    """on_failure='nan': a loss over the good entries only has finite gradients, equal to the
    gradients obtained by solving the good problems alone (the failed problem contributes
    nothing — also to the sum of a shared G's gradient)."""
    solve = partial(ol.solve_qp, backend=backend)
    bad = (2,)
    P, G, h, _ = _batch_with_infeasible(bad=bad, B=4, shared_G=shared_G, seed=4)
    leaves = [t.clone().requires_grad_() for t in (P.Q, P.q, G, h, P.A, P.b)]
    sol = solve(*leaves, return_solution=True, on_failure="nan")
    good = sol.ok
    assert good.tolist() == [True, True, False, True]
    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    loss = (w * sol.x)[good].sum() + sol.lam[good].sum()
    grads = torch.autograd.grad(loss, leaves)
    for g in grads:
        assert bool(torch.isfinite(g).all())
    idx = torch.tensor([0, 1, 3])
    sub = [t.clone().requires_grad_() for t in (P.Q[idx], P.q[idx], G if shared_G else G[idx], h[idx], P.A[idx],
                                                P.b[idx])]
    sol_g = solve(*sub, return_solution=True)
    loss_g = (w[idx] * sol_g.x).sum() + sol_g.lam.sum()
    ref = torch.autograd.grad(loss_g, sub)
    for k, (g, r) in enumerate(zip(grads, ref)):
        is_shared = k == 2 and shared_G
        gg = g if is_shared else g[idx]
        assert float((gg - r).abs().max()) <= 1e-10 * (1 + float(r.abs().max())), f"input {k}"
        if not is_shared:
            assert float(g[2].abs().max()) == 0.0  # the failed problem's own data gets zero gradient


def test_nan_policy_without_failures_changes_nothing(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(3, 5, 6, 2, seed=5)
    a = solve(*P.data())
    b = solve(*P.data(), on_failure="nan")
    c = solve(*P.data(), on_failure=ol.OnFailure.NAN)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_no_nan_without_a_status_saying_so(backend):
    """Default policy never returns NaN: either finite output or SolverError."""
    solve = partial(ol.solve_qp, backend=backend)
    P, G, h, _ = _batch_with_infeasible(bad=(0,), B=2, seed=6)
    with pytest.raises(ol.SolverError):
        solve(P.Q, P.q, G, h, P.A, P.b)
    x = solve(P.Q[1], P.q[1], G[1], h[1], P.A[1], P.b[1])
    assert bool(torch.isfinite(x).all())


def test_unbounded_problem_in_equality_batch(backend):
    """Equality-only batch where problem 1 gets Q = 0 (and q ∉ range(Aᵀ)), so it is unbounded;
    the others must still be solved exactly."""
    solve = partial(ol.solve_qp, backend=backend)
    B = 3
    P = ol.testing.random_qp(B, 4, 1, 1, seed=7)
    Q = P.Q.clone()
    Q[1] = 0.0
    sol = solve(Q, P.q, A=P.A, b=P.b, return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [S.SOLVED, S.DUAL_INFEASIBLE, S.SOLVED]
    K = torch.cat([torch.cat([P.Q, P.A.mT], -1), torch.cat([P.A, torch.zeros(B, 1, 1, dtype=F64)], -1)], -2)
    ref = torch.linalg.solve(K, torch.cat([-P.q, P.b], -1))[:, :4]
    assert float((sol.x[[0, 2]] - ref[[0, 2]]).abs().max()) <= 1e-12
