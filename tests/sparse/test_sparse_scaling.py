"""The OSQP route on badly scaled problems (optlayers/_src/sparse/scaling.py: column and cost
scaling of the data before OSQP, the polish and the backward see it; optlayers/_src/sparse/kkt.py:
the polish accepted only with a small KKT residual).

Before: objective × 1e4 came back SOLVED with x off by 4e-2 (the polish's regularized KKT solve
had stalled, and only signs and feasibility were tested), objective × 1e-8 raised the factorization
error of qdldl, and with the OSQP tolerance being absolute, a rescue would have returned x off by 0.5.
With cost scaling of OSQP's input only: × 1e-8 left 3 of 16 unpolished (x off by 5e-6), variables
in units 1e-4 … 1e4 apart ran to MAX_ITER. Before the rows were scaled: constraints × 1e-4 left 2 of
16 off by 3e-6, × 1e-8 raised, rows each in its own unit 1e-6 … 1e6 left all 16 off by up to 3.
"""

import pytest
import torch

import optlayers as ol

pytest.importorskip("osqp")


@pytest.mark.parametrize("s", [1e4, 1e8, 1e-4, 1e-8])
def test_scaled_objective_is_solved_and_polished(s):
    P = ol.testing.random_qp(16, 10, 15, 3, dtype=torch.float64, seed=0)
    Q, q, G, h, A, b = P.data()
    sol = ol.solve_qp(Q * s, q * s, G, h, A, b, backend="osqp", return_solution=True, on_failure="nan")
    ok = sol.status == 0
    assert bool(ok.all()), sol.status
    err = (sol.x - P.x).abs().amax(-1) / (1 + P.x.abs().amax(-1))
    assert float(err.max()) < 1e-10, err
    lam_err = (sol.lam - s * P.lam).abs().max() / (s * (1 + P.lam.abs().max()))
    assert float(lam_err) < 1e-10


def _disguised(r, seed=0, B=16, active_fraction=0.5):
    """Planted problems with the variables in units 1e-r … 1e+r apart: x̃ = x / D."""
    P = ol.testing.random_qp(B, 10, 15, 3, dtype=torch.float64, seed=seed, active_fraction=active_fraction)
    Q, q, G, h, A, b = P.data()
    D = torch.logspace(-r, r, 10, dtype=torch.float64)
    return P, D, (D[:, None] * Q * D, q * D, G * D, h, A * D, b)


@pytest.mark.parametrize("r", [3, 4, 5])
def test_variables_in_units_far_apart(r):
    P, D, data = _disguised(r)
    sol = ol.solve_qp(*data, backend="osqp", return_solution=True, on_failure="nan")
    assert bool((sol.status == 0).all()), sol.status
    err = (sol.x * D - P.x).abs().amax(-1) / (1 + P.x.abs().amax(-1))
    assert float(err.max()) < 1e-9, err
    torch.testing.assert_close(sol.lam, P.lam, rtol=1e-8, atol=1e-9)


def test_gradients_of_a_disguised_problem_match_the_dense_route():
    """D and σ are constants of the solution map: the gradients through the scaled solve are the
    original problem's (checked against the dense backend, which scales on its own). 3 active rows
    and 3 equalities for 10 variables: x depends on every input (with 7 active, ∂x/∂q = 0)."""
    _, _, data = _disguised(4, seed=1, B=4, active_fraction=0.2)
    data_s = [t.clone().requires_grad_() for t in data]
    data_d = [t.clone().requires_grad_() for t in data]
    w = torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (w * ol.solve_qp(*data_s, backend="osqp")).sum().backward()
    (w * ol.solve_qp(*data_d, backend="torch")).sum().backward()
    for a, b in zip(data_s, data_d):
        scale = b.grad.abs().max()
        assert scale > 1e-6
        torch.testing.assert_close(a.grad / scale, b.grad / scale, rtol=0, atol=1e-10)


def test_sparse_inputs_with_a_shared_pattern_are_scaled_per_problem():
    P, D, (Q, q, G, h, A, b) = _disguised(4, B=3)
    Ab = torch.cat([A, G], 1)
    l = torch.cat([b, torch.full_like(h, -float("inf"))], 1)
    u = torch.cat([b, h], 1)
    x = ol.solve_sparse_qp(Q.to_sparse_csr(), q, Ab.to_sparse_csr(), l, u)
    torch.testing.assert_close(x * D, P.x, rtol=1e-9, atol=1e-9)


def test_polish_rejects_a_point_with_a_large_kkt_residual():
    """A polish solve that did not converge (here: an absurd active set forced onto the factor)
    must not be accepted even where signs and feasibility happen to pass."""
    import numpy as np
    import scipy.sparse as sp

    from optlayers._src.sparse import kkt as kkt_mod

    class Stalled:  # a KKT factor whose solve returns a wrong point with valid signs
        n = 2
        sign = np.array([1], np.int8)
        active = np.array([0])
        P = sp.csr_matrix(np.eye(2))
        AaT = sp.csr_matrix(np.array([[1.0], [0.0]]))

        def solve(self, rhs):
            return np.array([1.0, 0.3, 0.5])  # x = (1, 0.3), y = 0.5: stationarity fails

    A = sp.csr_matrix(np.array([[1.0, 0.0]]))
    x, y, ok = kkt_mod.polish(Stalled(), np.array([-1.5, 0.0]), A, np.array([-np.inf]), np.array([1.0]))
    assert not ok


@pytest.mark.parametrize("s", [1e-8, 1e-4, 1e8])
def test_scaled_constraints_are_solved(s):
    """G, h, A, b times s: the same x, multipliers λ/s (OSQP's tolerances are absolute in the rows'
    units: before the row scaling, × 1e-4 left 2 of 16 off by 3e-6 and × 1e-8 raised)."""
    P = ol.testing.random_qp(16, 10, 15, 3, dtype=torch.float64, seed=0)
    Q, q, G, h, A, b = P.data()
    sol = ol.solve_qp(Q, q, G * s, h * s, A * s, b * s, backend="osqp", return_solution=True, on_failure="nan")
    assert bool((sol.status == 0).all()), sol.status
    err = (sol.x - P.x).abs().amax(-1) / (1 + P.x.abs().amax(-1))
    assert float(err.max()) < 1e-10, err
    assert float((sol.lam * s - P.lam).abs().max()) < 1e-8 * (1 + float(P.lam.abs().max()))


def test_rows_each_in_its_own_unit():
    """Row i of G times 10^(−6 … 6) (and of A times 1e-5, 1, 1e5): all 16 were off by up to 3 before."""
    P = ol.testing.random_qp(16, 10, 15, 3, dtype=torch.float64, seed=0)
    Q, q, G, h, A, b = P.data()
    r = torch.logspace(-6, 6, 15, dtype=torch.float64)
    a = torch.tensor([1e-5, 1.0, 1e5], dtype=torch.float64)
    sol = ol.solve_qp(Q, q, r[:, None] * G, r * h, a[:, None] * A, a * b, backend="osqp", return_solution=True,
                      on_failure="nan")
    assert bool((sol.status == 0).all()), sol.status
    assert float((sol.x - P.x).abs().max()) < 1e-9 * (1 + float(P.x.abs().max()))
    assert torch.allclose(sol.lam * r, P.lam, atol=1e-8) and torch.allclose(sol.nu * a, P.nu, atol=1e-8)
