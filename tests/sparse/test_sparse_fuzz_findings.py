"""OSQP-route findings of a fuzz against CVXPY + Clarabel (``sparse/solver.py``, ``sparse/kkt.py``).

* **Stale "solved"**: OSQP 1.1 resets its status only on a data update, so the polish retry's
  resumed solve (``update_settings`` + ``solve``) that stopped at its iteration limit reported
  the previous solve's "solved" and its iterate was taken — an LP came back SOLVED with a KKT
  residual of 3e-3 (float32 batches: |x| up to 1e33).
* **Polish factorization refused**: on LPs the regularized KKT matrix's pivots of size δ = 1e-9
  come out of cancellations of terms ~‖A‖²/δ and rounded to 0 — QDLDL refused 27% of random LPs'
  active-set systems, well-conditioned ones included (cond(K) = 14 below); no polish, and the
  backward raised. δ now grows until the factorization goes through.
* **Non-finite data** with ``check_inputs=False``: NaN in P raised "not positive semidefinite",
  NaN in l iterated to MAX_ITER; both are NUMERICAL_ERROR now, like NaN in q or A.
"""

import math

import numpy as np
import pytest
import torch

import optlayers as ol

pytest.importorskip("osqp")
cp = pytest.importorskip("cvxpy")

inf = np.inf
T = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731


def _clarabel_lp(q, A, l, u):
    x = cp.Variable(q.size)
    fl, fu = np.isfinite(l), np.isfinite(u)
    problem = cp.Problem(cp.Minimize(q @ x), [A[fl] @ x >= l[fl], A[fu] @ x <= u[fu]])
    problem.solve(solver=cp.CLARABEL)
    assert problem.status == cp.OPTIMAL
    return problem.value


def test_resumed_solve_at_its_limit_is_not_solved():
    q = np.array([0.7292768086529243, -0.0, 1.1311515132029888, -0.8530546858660041, 0.32140702381457825])
    A = np.array([[0.304649741446021, 0.0, 1.0086499517634397, -0.4526660478669696, 0.0], [0.37760302889243086, 0.0, 0.0, -0.17083607364130998, 0.0], [0.0, 0.0, 1.4621581322393227, -0.1237393435073793, 0.0], [0.31320345315570686, -0.8462406496662139, -0.8295822925559396, 0.0, 0.4308515923025272], [0.0, 0.0, 0.03456503930414552, -1.013357756434099, 0.0], [0.0, 0.0, 0.0, 0.8120723306539965, -1.919211423868965], [0.48033983905900984, 0.0, 1.7902906015011044, 0.0, 0.24988455684365068], [0.21642681201139555, -0.17833817301641952, 0.0, 0.0, 0.0]])
    l = np.array([0.44572917065923195, -inf, 0.5337599152555925, -inf, 1.0754775878866052, -2.5354831803390216, 0.03461063538336039, -inf])
    u = np.array([inf, -0.20309911089133417, 0.5337599152555925, inf, inf, 0.49574308405213086, inf, 1.2713660620689422])
    sol = ol.solve_sparse_qp(None, T(q), T(A).to_sparse(), T(l), T(u), return_solution=True, on_failure="nan",
                             cache=ol.sparse.SolverCache())
    assert int(sol.status) == ol.Status.SOLVED
    x, y = sol.x.numpy(), sol.y.numpy()
    z = A @ x
    assert np.abs(q + A.T @ y).max() < 1e-5  # was 3.4e-3
    assert np.maximum(np.maximum(l - z, z - u), 0).max() < 1e-5  # was 5.6e-4
    assert abs(q @ x - _clarabel_lp(q, A, l, u)) < 1e-5


def test_lp_vertex_is_polished_and_differentiable():
    A = np.array([[-0.7772501608366094, 0.0, 0.0, -1.4489971598648306, -1.40488128438364, 0.0, 0.0], [-0.4035937475959087, 1.9034893097694368, 0.7128034026065335, 0.0, -0.8055234231203782, -0.5069572572686938, -0.7268823041264264], [0.0, 0.20935496746065074, 0.0, 2.657997124823946, 0.0, -1.113863190359116, -0.28101933446897204], [0.0, -0.2671527599198288, -0.21127373105061328, -1.4707019115499993, -0.27661166485257865, 0.7362863004038082, 0.0], [-2.0094953600811127, 1.450087338748028, 0.0, 0.0, 2.8113962808363624, -0.6885991965085573, -0.5820194143775087], [0.3949163595739696, 0.0, 0.0, -0.6123470240596566, 0.9925842217208952, -0.16288938725739757, 0.0], [0.0, -0.6349997306453792, 0.0, 0.0, -1.342356989274518, 1.9110511874507923, -0.7144145705406728], [0.0, -0.09326794658921095, 0.0, 0.401664182923908, -0.6213501666553057, 0.9646465564076309, 0.0], [-2.0818243920072175, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, -1.637848496584344, 0.04350364731269456, -0.06226782742867912], [0.0, 0.6242580553659116, -1.2114481480781798, 0.7123860447243905, 0.6034587812661499, 0.0, -0.03525493397757054], [-0.14169640801307862, 0.11128419215399553, -1.197636929920331, 1.8452562665151324, 0.0, 0.17193442137824475, -0.3048370671427123], [0.0, 2.458435166917558, 1.6564680339883402, 1.008779439195602, 0.8201394895088601, 0.0, -0.9474623306710748]])
    l = np.array([-inf, 2.015738797878679, -0.3653147930630861, -1.3393413579728903, -0.40311841865182224, 0.5167943543429898, -inf, -1.7546199544780938, -2.8005456784481133, -1.0426710592757817, -0.14935224985707335, -3.1995235901892682, 3.1052362430561686])
    u = np.array([inf, 2.015738797878679, -0.3653147930630861, inf, inf, inf, -1.5095605795950753, 1.30250216625041, -1.6662175953021643, 1.1505417672302403, 0.44418769984280865, inf, inf])
    q = np.array([-0.5903468745385185, 8.431442703888157, 1.2773165018926773, 2.6576392327124516, 4.119657218622058, -3.0479400222395867, -1.733936543205386])
    qt = T(q).requires_grad_()
    sol = ol.solve_sparse_qp(None, qt, T(A).to_sparse(), T(l), T(u), return_solution=True,
                             cache=ol.sparse.SolverCache())
    assert int(sol.status) == ol.Status.SOLVED and bool(sol.polished)
    assert abs(float(qt.detach() @ sol.x.detach()) - _clarabel_lp(q, A, l, u)) < 1e-7  # (Clarabel: ~1e-8)
    sol.x.sum().backward()  # a nondegenerate vertex: x does not move with q
    assert float(qt.grad.abs().max()) < 1e-12


@pytest.mark.parametrize("where", ["P nan", "P inf", "A nan", "l nan"])
def test_non_finite_data_without_checks_is_a_numerical_error(where):
    P, A = torch.eye(2, dtype=torch.float64), T([[1.0, 1.0]])
    q, l, u = T([1.0, 1.0]), T([-1.0]), T([1.0])
    bad = {"P nan": (P, 0, math.nan), "P inf": (P, 0, math.inf), "A nan": (A, 0, math.nan), "l nan": (l, None, math.nan)}
    t, i, v = bad[where]
    if i is None:
        t[0] = v
    else:
        t[i, 0] = v
    sol = ol.solve_sparse_qp(P.to_sparse(), q, A.to_sparse(), l, u, check_inputs=False, return_solution=True,
                             on_failure="nan", cache=ol.sparse.SolverCache())
    assert int(sol.status) == ol.Status.NUMERICAL_ERROR
    assert bool(torch.isnan(sol.x).all())
