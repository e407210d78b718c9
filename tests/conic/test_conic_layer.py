"""CvxpyLayer forward pass: solutions and duals vs. CVXPY, batching, dtypes, statuses, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

cp = pytest.importorskip("cvxpy")

import optlayers as ol
from optlayers._src.conic import problems
from optlayers.conic import ConicSolution, CvxpyLayer

# Reference: CVXPY's own canonicalization and solve, with SCS at eps=1e-12. (CVXPY + Clarabel at
# its tightest settings is only 1e-8..1e-6 accurate on SOC / PSD / exp-cone problems: 2e-6 on
# the EXP case here — too coarse to check a 1e-6 target.)
SOL_TOL = 1e-6
REF = dict(solver="SCS", eps=1e-12, max_iters=200_000)


def cvxpy_solve(case, values):
    for p, v in zip(case.parameters, values):
        p.value = v
    # (SCS cannot reach 1e-12 on the log-log transformed GP; 1e-10 suffices there.)
    case.problem.solve(gp=case.gp, **(dict(REF, eps=1e-10) if case.gp else REF))
    assert case.problem.status == cp.OPTIMAL
    return [np.array(v.value) for v in case.variables]


@pytest.mark.parametrize("name", sorted(problems.ALL_CLASSES))
def test_solution_matches_cvxpy_unbatched_and_batched(name):
    case = problems.ALL_CLASSES[name]()
    rng = np.random.default_rng(0)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    values = case.sample(rng)
    (x,) = layer(*map(torch.tensor, values))
    (ref,) = cvxpy_solve(case, values)
    assert x.shape == ref.shape
    np.testing.assert_allclose(x.numpy(), ref, atol=SOL_TOL)

    B = 3
    values = case.sample(rng, batch=B)
    (xb,) = layer(*map(torch.tensor, values))
    assert xb.shape == (B,) + ref.shape
    for i in range(B):
        vi = [v[i] if b else v for v, b in zip(values, case.batched)]
        (ref,) = cvxpy_solve(case, vi)
        np.testing.assert_allclose(xb[i].numpy(), ref, atol=SOL_TOL)


def test_mixed_batched_broadcast_and_multiple_batch_dims():
    case = problems.socp()
    rng = np.random.default_rng(1)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    c, A, b = (torch.tensor(v) for v in case.sample(rng))
    cb = c + 0.1 * torch.randn(2, 3, c.shape[0], dtype=torch.float64)
    bb = b + 0.1 * torch.randn(3, b.shape[0], dtype=torch.float64)   # broadcasts against (2, 3)
    (x,) = layer(cb, A, bb)
    assert x.shape == (2, 3, c.shape[0])
    (x12,) = layer(cb[1, 2], A, bb[2])
    torch.testing.assert_close(x[1, 2], x12, atol=1e-8, rtol=0)


def test_duals_match_cvxpy_and_cvxpylayers_spelling():
    case = problems.socp()
    cons = case.problem.constraints
    rng = np.random.default_rng(2)
    values = case.sample(rng)
    x = case.variables[0]
    # A constraint with one dual variable may be passed directly; the SOC's two dual variables
    # (t part, u part) are passed as cvxpylayers 1.x does.
    layer = CvxpyLayer(case.problem, case.parameters, [x, cons[1], cons[0].dual_variables[0], cons[0].dual_variables[1]])
    xo, lam, soc_t, soc_u = layer(*map(torch.tensor, values))
    cvxpy_solve(case, values)
    np.testing.assert_allclose(lam.numpy(), cons[1].dual_value, atol=SOL_TOL)
    np.testing.assert_allclose(soc_t.numpy().ravel(), np.ravel(cons[0].dual_value[0]), atol=SOL_TOL)
    np.testing.assert_allclose(soc_u.numpy().ravel(), np.ravel(cons[0].dual_value[1]), atol=SOL_TOL)
    assert float(lam) >= 0  # a dual of an inequality is nonnegative in CVXPY's convention


def test_psd_dual_and_symmetric_variable_match_cvxpy():
    k = 3
    X = cp.Variable((k, k), symmetric=True)
    C = cp.Parameter((k, k), symmetric=True)
    psd = X >> 0
    eq = cp.trace(X) == 1
    prob = cp.Problem(cp.Minimize(cp.trace(C @ X) + 0.1 * cp.sum_squares(X)), [psd, eq])
    rng = np.random.default_rng(3)
    M = rng.normal(size=(k, k))
    Cv = M + M.T
    layer = CvxpyLayer(prob, [C], [X, psd, eq])
    Xo, Z, nu = layer(torch.tensor(Cv))
    C.value = Cv
    prob.solve(**REF)
    np.testing.assert_allclose(Xo.numpy(), X.value, atol=SOL_TOL)
    np.testing.assert_allclose(Z.numpy(), psd.dual_value, atol=SOL_TOL)
    np.testing.assert_allclose(float(nu), eq.dual_value, atol=SOL_TOL)
    torch.testing.assert_close(Xo, Xo.T)


def test_geometric_program_matches_cvxpy():
    case = problems.geometric()
    rng = np.random.default_rng(4)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=True)
    values = case.sample(rng, batch=2)
    outs = layer(*map(torch.tensor, values))
    for i in range(2):
        vi = [v[i] if b else v for v, b in zip(values, case.batched)]
        refs = cvxpy_solve(case, vi)
        for o, r in zip(outs, refs):
            np.testing.assert_allclose(o[i].numpy(), r, rtol=1e-6)


def test_parametric_quad_form_objective():
    n = 4
    x = cp.Variable(n)
    S = cp.Parameter((n, n), PSD=True)
    q = cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, S) + q @ x), [x >= -1, cp.sum(x) == 0])
    rng = np.random.default_rng(5)
    M = rng.normal(size=(n, n))
    Sv, qv = M @ M.T + np.eye(n), rng.normal(size=n)
    layer = CvxpyLayer(prob, [S, q], [x])
    (xo,) = layer(torch.tensor(Sv), torch.tensor(qv))
    S.value, q.value = Sv, qv
    prob.solve(**REF)
    np.testing.assert_allclose(xo.numpy(), x.value, atol=SOL_TOL)
    assert layer.program.nnz_P > 0  # S enters the quadratic term, not a second-order cone


def test_float32_follows_input_dtype():
    case = problems.qp()
    values = case.sample(np.random.default_rng(6))
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    (x64,) = layer(*map(torch.tensor, values))
    (x32,) = layer(*(torch.tensor(v, dtype=torch.float32) for v in values))
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, atol=1e-5, rtol=0)


def test_clarabel_backend_matches_scs():
    for case in (problems.sdp(), problems.exp_cone()):
        values = case.sample(np.random.default_rng(7))
        (xs,) = CvxpyLayer(case.problem, case.parameters, case.variables)(*map(torch.tensor, values))
        (xc,) = CvxpyLayer(case.problem, case.parameters, case.variables, solver="clarabel")(*map(torch.tensor, values))
        torch.testing.assert_close(xs, xc, atol=SOL_TOL, rtol=0)


def _infeasible_case():
    x = cp.Variable(2)
    lo = cp.Parameter(2)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= lo, cp.sum(x) <= 1])
    return prob, lo, x


def test_infeasible_raises_with_index_and_nan_policy_reports_status():
    prob, lo, x = _infeasible_case()
    lo_t = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.2, 0.1]], requires_grad=True)  # problem 1 is infeasible
    layer = CvxpyLayer(prob, [lo], [x])
    with pytest.raises(ol.SolverError, match="batch index 1: primal infeasible") as info:
        layer(lo_t)
    assert info.value.failed == [1]

    layer = CvxpyLayer(prob, [lo], [x], on_failure="nan", return_solution=True)
    sol = layer(lo_t)
    assert isinstance(sol, ConicSolution)
    assert sol.status.tolist() == [ol.Status.SOLVED, ol.Status.PRIMAL_INFEASIBLE, ol.Status.SOLVED]
    (xo,) = sol.values
    assert torch.isnan(xo[1]).all() and torch.isfinite(xo[[0, 2]]).all()
    xo[[0, 2]].sum().backward()
    assert torch.isfinite(lo_t.grad).all() and float(lo_t.grad[1].abs().max()) == 0.0


def test_unbounded_is_dual_infeasible():
    x = cp.Variable(2)
    c = cp.Parameter(2)
    prob = cp.Problem(cp.Minimize(c @ x), [x >= 0])
    layer = CvxpyLayer(prob, [c], [x], on_failure="nan", return_solution=True)
    sol = layer(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))
    assert sol.status.tolist() == [ol.Status.SOLVED, ol.Status.DUAL_INFEASIBLE]


def test_iteration_limit_is_reported():
    case = problems.socp()
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, on_failure="nan", return_solution=True)
    sol = layer(*map(torch.tensor, case.sample(np.random.default_rng(8))), solver_args={"max_iters": 3, "refine": False})
    assert int(sol.status) == ol.Status.MAX_ITER
    assert torch.isnan(sol.values[0]).all()


def test_refinement_rescues_an_inaccurate_solver_point():
    """SCS stopped by its iteration limit before an unreachable tolerance: the Newton
    refinement certifies the point (residual ≤ 1e-12) and the problem counts as solved."""
    case = problems.socp()
    values = case.sample(np.random.default_rng(8))
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, return_solution=True)
    sol = layer(*map(torch.tensor, values), solver_args={"eps": 1e-14, "max_iters": 50})
    assert "inaccurate" in sol.solver_status[0] and int(sol.status) == ol.Status.SOLVED
    assert int(sol.refine_steps) >= 1
    (ref,) = cvxpy_solve(case, values)
    np.testing.assert_allclose(sol.values[0].numpy(), ref, atol=1e-8)


def test_warm_start_reuses_previous_solution():
    case = problems.portfolio(n=20, k=4)
    rng = np.random.default_rng(9)
    values = [torch.tensor(v) for v in case.sample(rng, batch=4)]
    cold = CvxpyLayer(case.problem, case.parameters, case.variables, return_solution=True)
    warm = CvxpyLayer(case.problem, case.parameters, case.variables, return_solution=True, warm_start=True)
    first = warm(*values)
    # The same problems again: SCS starts at their solutions and stops at its first
    # convergence check (it checks every 25 iterations).
    again = warm(*values)
    assert int(again.iterations.max()) <= 25 < int(first.iterations.min())
    torch.testing.assert_close(again.values[0], first.values[0], atol=1e-8, rtol=0)
    # Slightly changed problems (a training step): fewer iterations than a cold start.
    g = torch.Generator().manual_seed(0)
    values2 = [values[0] + 1e-6 * torch.randn(values[0].shape, generator=g, dtype=torch.float64), values[1]]
    again_cold = cold(*values2)
    again_warm = warm(*values2)
    torch.testing.assert_close(again_warm.values[0], again_cold.values[0], atol=1e-6, rtol=0)
    assert int(again_warm.iterations.sum()) < int(again_cold.iterations.sum())
    # A different batch size cannot use the cache: it silently solves cold.
    (x1,) = warm(values2[0][:2], values2[1]).values
    torch.testing.assert_close(x1, again_cold.values[0][:2], atol=1e-6, rtol=0)


def test_solver_args_are_parsed_and_validated():
    case = problems.qp()
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, solver="scs", return_solution=True)
    values = [torch.tensor(v) for v in case.sample(np.random.default_rng(10))]
    loose = layer(*values, solver_args={"eps": 1e-3})
    tight = layer(*values, solver_args={"solve_method": "SCS", "eps_abs": 1e-10, "eps_rel": 1e-10,
                                        "acceleration_lookback": 5, "n_jobs_forward": 1})
    assert loose.backend == tight.backend == "scs"
    assert int(loose.iterations) < int(tight.iterations)
    with pytest.raises(ValueError, match="'epsilon' is not a scs setting"):
        layer(*values, solver_args={"epsilon": 1e-3})
    with pytest.raises(ValueError, match="'epsilon' is not a scs or qp setting"):
        CvxpyLayer(case.problem, case.parameters, case.variables)(*values, solver_args={"epsilon": 1e-3})
    with pytest.raises(ValueError, match="eps_abs"):
        layer(*values, solver_args={"eps_abs": -1.0})
    with pytest.raises(ValueError, match="solver must be"):
        CvxpyLayer(case.problem, case.parameters, case.variables, solver="osqp")


def test_bad_parameter_tensors_name_the_argument():
    case = problems.socp()
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    c, A, b = (torch.tensor(v) for v in case.sample(np.random.default_rng(11)))
    with pytest.raises(ValueError, match=r"expects 3 parameter tensors"):
        layer(c, A)
    with pytest.raises(ValueError, match=r"params\[1\] \(A\) must have shape \(6, 4\)"):
        layer(c, A.T, b)
    with pytest.raises(ValueError, match=r"do not broadcast"):
        layer(c.expand(2, -1), A, b.expand(3, -1))
    with pytest.raises(ValueError, match=r"share one dtype"):
        layer(c.float(), A, b)
    with pytest.raises(ValueError, match=r"params\[2\] \(b\) has non-finite"):
        layer(c, A, b.clone().fill_(float("nan")))
    with pytest.raises(TypeError, match=r"params\[0\] \(c\) must be a torch.Tensor"):
        layer(c.numpy(), A, b)


def test_bad_problem_definitions():
    x = cp.Variable(2)
    a, b = cp.Parameter(), cp.Parameter()
    cons = [x >= a * b]
    nondpp = cp.Problem(cp.Minimize(cp.sum_squares(x)), cons)
    with pytest.raises(ValueError, match=r"DPP(.|\n)*constraints\[0\](.|\n)*CVXPY says"):
        CvxpyLayer(nondpp, [a, b], [x])
    with pytest.raises(ValueError, match="DCP"):
        CvxpyLayer(cp.Problem(cp.Maximize(cp.sum_squares(x - a))), [a], [x])
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [x >= b])
    with pytest.raises(ValueError, match=r"missing: \['param"):
        CvxpyLayer(prob, [a], [x])
    with pytest.raises(ValueError, match=r"variables\[0\] must be a variable of the problem"):
        CvxpyLayer(prob, [a, b], [cp.Variable(2)])
    with pytest.raises(ValueError, match="power cones"):
        pow_cone = cp.PowCone3D(x[0], x[1], cp.Variable(), 0.3)
        CvxpyLayer(cp.Problem(cp.Minimize(cp.sum(x) - a), [x >= b, pow_cone]), [a, b], [x])
    with pytest.raises(ValueError, match="on_failure"):
        CvxpyLayer(prob, [a, b], [x], on_failure="ignore")


def test_gp_parameters_must_be_positive():
    case = problems.geometric()
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=True)
    with pytest.raises(ValueError, match=r"params\[0\] \(a\) must be positive"):
        layer(torch.tensor(-1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))


@pytest.mark.parametrize("cone", ["qp", "soc"])
def test_empty_batch_gives_empty_outputs_and_zero_gradients(cone):
    """A batch of zero problems (the empty tail of a data loader) on the QP route and on a cone
    solver: empty outputs, zero gradients for the shared parameters, no solver call."""
    x = cp.Variable(3)
    c = cp.Parameter(3)
    M = cp.Parameter((2, 3))
    cons = [x >= -1, M @ x <= 1] if cone == "qp" else [x >= -1, cp.norm(M @ x) <= 2]
    layer = ol.CvxpyLayer(cp.Problem(cp.Minimize(c @ x + cp.sum_squares(x)), cons), parameters=[c, M], variables=[x])
    cc = torch.randn(0, 3, dtype=torch.float64, requires_grad=True)
    MM = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out, = layer(cc, MM)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert cc.grad.shape == (0, 3) and torch.equal(MM.grad, torch.zeros(2, 3, dtype=torch.float64))
