"""CvxpyLayer: statuses and input checks found by fuzzing the layer against CVXPY + Clarabel.

* SCS returns NaN iterates for infeasible and unbounded SDPs; the refinement projected them onto
  the PSD cone and ``eigh`` raised — the whole batch was lost instead of getting its statuses.
* Values that break what a parameter was declared with (``nonneg=True``, ``PSD=True``) made the
  program nonconvex and every route answered SOLVED with a different stationary point.
* A ``diag=True`` variable crashed construction; a problem without parameters, a bare Parameter
  instead of a list and integer variables gave unclear errors; NaN in the triangle of a symmetric
  parameter that CVXPY does not read was ignored.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

cp = pytest.importorskip("cvxpy")

import optlayers as ol
from optlayers.conic import CvxpyLayer

S = ol.Status
T = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731


def _sdp(k: int = 3):
    X = cp.Variable((k, k), symmetric=True)
    t, C = cp.Parameter(), cp.Parameter((k, k), symmetric=True)
    problem = cp.Problem(cp.Minimize(cp.trace(C @ X) + cp.sum_squares(X)), [X >> 0, cp.trace(X) == t])
    return problem, [t, C], [X]


@pytest.mark.parametrize("solver", ["scs", "clarabel"])
def test_infeasible_sdp_in_a_batch_gets_its_status(solver):
    problem, params, out = _sdp()
    layer = CvxpyLayer(problem, params, out, solver=solver, return_solution=True, on_failure="nan")
    sol = layer(T([1.0, -1.0, 2.0]), torch.eye(3, dtype=torch.float64))
    assert sol.status.tolist() == [S.SOLVED, S.PRIMAL_INFEASIBLE, S.SOLVED]
    X = sol.values[0]
    assert bool(torch.isnan(X[1]).all()) and bool(torch.isfinite(X[[0, 2]]).all())
    for i, tv in ((0, 1.0), (2, 2.0)):  # the feasible ones: trace(X) = t, X ⪰ 0
        assert abs(float(torch.trace(X[i])) - tv) < 1e-6
        assert float(torch.linalg.eigvalsh(X[i]).min()) > -1e-7


def test_unbounded_sdp_is_dual_infeasible():
    X = cp.Variable((3, 3), symmetric=True)
    C = cp.Parameter((3, 3), symmetric=True)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.trace(C @ X)), [X >> 0]), [C], [X], solver="scs",
                       return_solution=True, on_failure="nan")
    sol = layer(torch.diag(T([1.0, -1.0, 1.0])))
    assert int(sol.status) == S.DUAL_INFEASIBLE


def _quad(n: int = 3):
    x = cp.Variable(n)
    lam, q = cp.Parameter(nonneg=True), cp.Parameter(n)
    P = cp.Parameter((n, n), PSD=True)
    ridge = cp.Problem(cp.Minimize(lam * cp.sum_squares(x) + q @ x), [x >= -1, x <= 1])
    quad = cp.Problem(cp.Minimize(cp.quad_form(x, P) + q @ x), [x >= -1, x <= 1])
    return x, lam, q, P, ridge, quad


@pytest.mark.parametrize("solver", ["auto", "scs", "clarabel"])
def test_declared_parameter_constraints_are_checked(solver):
    x, lam, q, P, ridge, quad = _quad()
    qv = T([0.1, -0.2, 0.3])
    layer = CvxpyLayer(ridge, [lam, q], [x], solver=solver)
    with pytest.raises(ValueError, match=r"params\[0\].*nonneg=True.*nonnegative"):
        layer(T([1.0, -1.0]), qv)  # one problem of the batch breaks it
    (xs,) = layer(T([0.0, 2.0]), qv)  # 0 is allowed
    np.testing.assert_allclose(xs[1].numpy(), np.clip(-qv.numpy() / 4, -1, 1), atol=1e-6)
    layer = CvxpyLayer(quad, [P, q], [x], solver=solver)
    Pb = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1)
    Pb[1, 1, 1] = -1e-3
    with pytest.raises(ValueError, match=r"params\[0\].*PSD=True.*positive semidefinite"):
        layer(Pb, qv)
    Pb[1, 1, 1] = -1e-14  # rounding-level negative eigenvalues pass (CVXPY's tolerance is absolute 1e-10)
    (xs,) = layer(Pb, qv)
    np.testing.assert_allclose(xs[0].numpy(), np.clip(-qv.numpy() / 2, -1, 1), atol=1e-6)


def test_diag_variable_matches_cvxpy():
    n = 3
    q = cp.Parameter(n)
    D = cp.Variable((n, n), diag=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(cp.diag(D) - q) + cp.norm(D, "fro")))
    layer = CvxpyLayer(problem, [q], [D])
    qv = T([1.0, 2.0, 3.0]).requires_grad_()
    (Dt,) = layer(qv)
    q.value = qv.detach().numpy()
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    np.testing.assert_allclose(Dt.detach().numpy(), D.value.toarray(), atol=1e-6)
    Dt.diagonal().sum().backward()
    assert bool(torch.isfinite(qv.grad).all())


def test_construction_errors_name_the_problem():
    x, q = cp.Variable(3), cp.Parameter(3)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - q)))
    with pytest.raises(ValueError, match="parameters must be a list or tuple"):
        CvxpyLayer(problem, q, [x])
    with pytest.raises(ValueError, match="parameters is empty"):
        CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - 1))), [], [x])
    z = cp.Variable(3, integer=True)
    A = cp.Parameter((3, 3))
    with pytest.raises(ValueError, match="integer.*mixed-integer problems are not supported"):
        CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(A @ z - 1))), [A], [z])


def test_nan_in_the_unread_triangle_raises():
    # CVXPY reads one triangle of a symmetric parameter; a NaN in the other is still bad input.
    X = cp.Variable((3, 3), symmetric=True)
    C = cp.Parameter((3, 3), symmetric=True)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.trace(C @ X) + cp.sum_squares(X)), [X >> 0]), [C], [X])
    Cv = torch.eye(3, dtype=torch.float64)
    Cv[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"params\[0\].*non-finite"):
        layer(Cv)
    Cv[0, 2] = Cv[2, 0] = 0.0
    assert bool(torch.isfinite(layer(Cv)[0]).all())


@pytest.mark.parametrize("solver", ["auto", "scs", "clarabel"])
def test_layers_can_be_copied_and_pickled(solver):
    # (found by fuzzing: a lock in the solver pool made deepcopy/pickle/torch.save of any model
    # with a CvxpyLayer fail) Copies start with an empty pool and solve like the original — also
    # through the qp route of a layer pickled before it was ever planned.
    import copy
    import pickle

    x, q, A = cp.Variable(3), cp.Parameter(3), cp.Parameter((2, 3))
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - q)), [A @ x <= 1]), [q, A], [x], solver=solver)
    qv, Av = T([0.3, -1.0, 2.0]), T([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    fresh = pickle.loads(pickle.dumps(layer))
    (want,) = layer(qv, Av)
    for other in (fresh, copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        torch.testing.assert_close(other(qv, Av)[0], want, rtol=0, atol=1e-6)
    torch.testing.assert_close(fresh(qv, Av, solver_args={"solver": "qp"})[0], want, rtol=0, atol=1e-6)
