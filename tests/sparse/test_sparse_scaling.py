"""The OSQP route on badly scaled objectives (optlayers/_src/sparse/solver.py: cost scaling of what
OSQP sees; optlayers/_src/sparse/kkt.py: the polish accepted only with a small KKT residual).

Before: objective × 1e4 came back SOLVED with x off by 4e-2 (the polish's regularized KKT solve
had stalled, and only signs and feasibility were tested), objective × 1e-8 raised the factorization
error of qdldl, and with the OSQP tolerance being absolute, a rescue would have returned x off by 0.5.
"""

import pytest
import torch

import optlayers as ol

pytest.importorskip("osqp")


@pytest.mark.parametrize("s,tol", [(1e4, 1e-6), (1e8, 1e-6), (1e-8, 1e-4)])
def test_scaled_objective_is_solved_or_honestly_inexact(s, tol):
    P = ol.testing.random_qp(16, 10, 15, 3, dtype=torch.float64, seed=0)
    Q, q, G, h, A, b = P.data()
    sol = ol.solve_qp(Q * s, q * s, G, h, A, b, backend="osqp", return_solution=True, on_failure="nan")
    ok = sol.status == 0
    assert bool(ok.all()), sol.status
    err = (sol.x - P.x).abs().amax(-1) / (1 + P.x.abs().amax(-1))
    assert float(err.max()) < tol, err
    lam_err = (sol.lam - s * P.lam).abs().max() / (s * (1 + P.lam.abs().max()))
    assert float(lam_err) < tol


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
