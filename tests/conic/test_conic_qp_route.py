"""The "qp" route of CvxpyLayer: LP/QP cone programs solved by ol.solve_qp (auxiliary variables
eliminated), differentiated through its KKT backward. References are independent: CVXPY +
Clarabel at tight tolerances (solutions, duals), diffcp + SCS at 1e-12 (gradients), central
finite differences, and the layer's own SCS route."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad

cp = pytest.importorskip("cvxpy")

import optlayers as ol
from optlayers._src.conic import problems
from optlayers._src.conic.qp_route import QPPlan
from optlayers.conic import ConicSolver, CvxpyLayer

CLARABEL = dict(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, max_iter=500)
SOL_TOL = 1e-7       # Clarabel at 1e-11 is accurate to ~1e-9 on these LPs/QPs
DIFFCP_RTOL = 1e-6


def coupled(n: int = 4, k: int = 3) -> problems.ProblemCase:
    """A QP whose lifted variable t = Lx − b (i) is part of a user variable z = (x, t), (ii)
    appears in an inequality (t ≤ 0.5: the A[K, T] block) and (iii) is coupled to x by a dense,
    constant quadratic term (P[R, R], P[R, T] and a non-diagonal P[T, T])."""
    z = cp.Variable(n + k, name="z")
    x, t = z[:n], z[n:]
    L, b, q = cp.Parameter((k, n), name="L"), cp.Parameter(k, name="b"), cp.Parameter(n, name="q")
    M = np.random.default_rng(0).normal(size=(n + k, n + k))
    S = M @ M.T / (n + k) + 0.3 * np.eye(n + k)
    cons = [t == L @ x - b, t <= 0.5, x >= -1, cp.sum(x) == 1]
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, S) + q @ x), cons)

    def draw(rng, given):
        Lv = given[0] if given[0] is not None else rng.normal(size=(k, n))
        x0 = rng.dirichlet(np.ones(n))        # feasible: x0 ≥ 0, 1ᵀx0 = 1, t0 = L x0 − b ≤ 0.3
        return [Lv, Lv @ x0 + rng.uniform(-0.3, 0.6, size=k), 2 * rng.normal(size=n)]

    return problems.ProblemCase("coupled", prob, [L, b, q], [z], draw, (False, True, True))


def unconstrained(n: int = 4, k: int = 6) -> problems.ProblemCase:
    """Least squares with no constraint at all (solve_qp gets a vacuous row)."""
    x = cp.Variable(n, name="x")
    A, b = cp.Parameter((k, n), name="A"), cp.Parameter(k, name="b")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)))

    def draw(rng, given):
        return [rng.normal(size=(k, n)), rng.normal(size=k)]

    return problems.ProblemCase("lsq", prob, [A, b], [x], draw, (True, True))


CASES = {
    "LP": problems.lp,
    "QP": problems.qp,
    "dense-QP": lambda: problems.dense_qp(5, 6, 2),
    "coupled": coupled,
    "unconstrained": unconstrained,
}


def clarabel_solve(case, values, extra=()):
    for p, v in zip(case.parameters, values):
        p.value = v
    case.problem.solve(**CLARABEL)
    assert case.problem.status == cp.OPTIMAL
    return [np.array(v.value) for v in case.variables] + [np.array(c.dual_value) for c in extra]


def test_auto_picks_qp_for_lp_qp_and_scs_otherwise():
    for name, make in CASES.items():
        case = make()
        layer = CvxpyLayer(case.problem, case.parameters, case.variables, return_solution=True)
        assert layer.qp_plan() is not None, name
        sol = layer(*map(torch.tensor, case.sample(np.random.default_rng(0))))
        assert sol.backend == "qp" and sol.solver_status[0].startswith("qp/"), name
        assert "-> 'qp'" in repr(layer)
    soc = problems.socp()
    layer = CvxpyLayer(soc.problem, soc.parameters, soc.variables, return_solution=True)
    assert layer.qp_plan() is None
    assert layer(*map(torch.tensor, soc.sample(np.random.default_rng(0)))).backend == "scs"
    with pytest.raises(ValueError, match="only zero and nonnegative cones.*second-order"):
        CvxpyLayer(soc.problem, soc.parameters, soc.variables, solver="qp")
    with pytest.raises(ValueError, match="only zero and nonnegative cones"):
        layer(*map(torch.tensor, soc.sample(np.random.default_rng(0))), solver_args={"solve_method": "qp"})


def test_solver_names_and_settings_choose_the_route():
    case = problems.qp()
    values = [torch.tensor(v) for v in case.sample(np.random.default_rng(1))]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, return_solution=True)
    assert layer(*values).backend == "qp"
    # cvxpylayers' SCS spellings and SCS-only settings select SCS (their code keeps its meaning).
    assert layer(*values, solver_args={"solve_method": "SCS"}).backend == "scs"
    assert layer(*values, solver_args={"acceleration_lookback": 0}).backend == "scs"
    assert CvxpyLayer(case.problem, case.parameters, case.variables, solver=cp.SCS,
                      return_solution=True)(*values).backend == "scs"
    assert CvxpyLayer(case.problem, case.parameters, case.variables, solver=ol.Backend.CLARABEL,
                      return_solution=True)(*values).backend == "clarabel"
    # qp settings.
    sol = layer(*values, solver_args={"qp_backend": "torch", "polish": False})
    assert sol.backend == "qp" and sol.solver_status[0].startswith("qp/torch")
    with pytest.raises(ValueError, match="mixes SCS settings"):
        layer(*values, solver_args={"acceleration_lookback": 0, "polish": True})
    with pytest.raises(ValueError, match="qp_backend"):
        layer(*values, solver_args={"qp_backend": "osqp"})
    with pytest.raises(ValueError, match="solver must be one of 'auto', 'qp', 'scs', 'clarabel'"):
        CvxpyLayer(case.problem, case.parameters, case.variables, solver="ecos")
    assert ConicSolver.resolve(None) is ConicSolver.AUTO and ConicSolver.resolve("diffcp") is ConicSolver.SCS


def test_elimination_removes_cvxpys_auxiliary_variables():
    case = problems.dense_qp(5, 6, 2)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    plan = layer.qp_plan()
    # ½‖Lx‖² is canonicalized with t = Lx (5 variables, 5 equality rows): all eliminated.
    assert (layer.program.n, plan.n_r, plan.T.size, plan.p_r, plan.m_r) == (10, 5, 5, 2, 6)
    assert isinstance(plan, QPPlan) and plan.TT_diag and not plan.has_KT
    plan_c = CvxpyLayer(*(lambda c: (c.problem, c.parameters, c.variables))(coupled())).qp_plan()
    assert (plan_c.n_r, plan_c.T.size) == (4, 3)
    assert plan_c.has_KT and plan_c.has_RT and plan_c.has_RR and not plan_c.TT_diag
    # sum(x) == 1 has constant coefficients on x too, but x appears in the rows of t = A x − b:
    # x must not be eliminated at the expense of the four t's.
    n = 5
    x = cp.Variable(n)
    S, A, b = cp.Parameter((n, n), PSD=True), cp.Parameter((4, n)), cp.Parameter(4)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, S) + cp.sum_squares(A @ x - b)), [x >= -0.5, cp.sum(x) == 1])
    plan = CvxpyLayer(prob, [S, A, b], [x]).qp_plan()
    assert (plan.n_r, plan.T.size, plan.p_r, plan.has_RR) == (5, 4, 1, True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_solutions_and_duals_match_clarabel_unbatched_and_batched(name):
    case = CASES[name]()
    cons = case.problem.constraints
    layer = CvxpyLayer(case.problem, case.parameters, case.variables + list(cons))
    rng = np.random.default_rng(2)
    values = case.sample(rng)
    outs = layer(*map(torch.tensor, values))
    refs = clarabel_solve(case, values, cons)
    for o, r in zip(outs, refs):
        np.testing.assert_allclose(o.numpy(), r, atol=SOL_TOL)
    B = 4
    values = case.sample(rng, batch=B)
    outs = layer(*map(torch.tensor, values))
    for i in range(B):
        refs = clarabel_solve(case, [v[i] if b else v for v, b in zip(values, case.batched)], cons)
        for o, r in zip(outs, refs):
            np.testing.assert_allclose(o[i].numpy(), r, atol=SOL_TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_diffcp_and_the_scs_route(name):
    pytest.importorskip("diffcp")
    from test_conic_gradients import diffcp_reference, layer_grads, rel_err  # (same directory)

    case = CASES[name]()
    rng = np.random.default_rng(3)
    B = 3
    values = case.sample(rng, batch=B)
    weights = [rng.normal(size=(B,) + v.shape) for v in case.variables]
    _, grads = layer_grads(CvxpyLayer(case.problem, case.parameters, case.variables), values, weights)
    ref = [np.zeros_like(v) for v in values]
    for i in range(B):
        vi = [v[i] if b else v for v, b in zip(values, case.batched)]
        _, gi = diffcp_reference(case, vi, [w[i] for w in weights])
        for k, b in enumerate(case.batched):
            if b:
                ref[k][i] = gi[k]
            else:
                ref[k] += gi[k]
    assert rel_err(grads, ref) < DIFFCP_RTOL
    _, g_scs = layer_grads(CvxpyLayer(case.problem, case.parameters, case.variables, solver="scs"), values, weights)
    assert rel_err(grads, g_scs) < DIFFCP_RTOL


@pytest.mark.parametrize("name", ["QP", "dense-QP", "coupled"])
def test_gradients_of_solutions_and_duals_match_finite_differences(name):
    case = CASES[name]()
    layer = CvxpyLayer(case.problem, case.parameters, case.variables + list(case.problem.constraints))
    values = [torch.tensor(v, requires_grad=True) for v in case.sample(np.random.default_rng(4))]
    # The qp route's solutions are exact to ~1e-14, so small steps are fine.
    ol.testing.check_grad(lambda *p: layer(*p), values, eps=1e-6, rtol=1e-5)


def test_unbatched_call_and_shared_matrices():
    """Parameters entering A shared by the batch (one A[E, R], hence one elimination for all)."""
    case = problems.lp()  # G shared, c and h batched
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    values = case.sample(np.random.default_rng(5), batch=3)
    (x,) = layer(*map(torch.tensor, values))
    for i in range(3):
        (xi,) = layer(*(torch.tensor(v[i] if b else v) for v, b in zip(values, case.batched)))
        assert xi.shape == x.shape[1:]
        torch.testing.assert_close(xi, x[i], atol=1e-10, rtol=0)


def test_forward_mode_matches_reverse_mode():
    case = coupled()
    rng = np.random.default_rng(6)
    L, b, q = (torch.tensor(v) for v in case.sample(rng, batch=3))
    ineq = case.problem.constraints[1]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables + [ineq])
    dL, db, dq = torch.randn_like(L), torch.randn_like(b), torch.randn_like(q)
    with forward_ad.dual_level():
        z, lam = layer(*(forward_ad.make_dual(v, d) for v, d in ((L, dL), (b, db), (q, dq))))
        jz, jl = forward_ad.unpack_dual(z).tangent, forward_ad.unpack_dual(lam).tangent
    uz, ul = torch.randn_like(jz), torch.randn_like(jl)
    ts = [v.clone().requires_grad_() for v in (L, b, q)]
    z2, l2 = layer(*ts)
    ((z2 * uz).sum() + (l2 * ul).sum()).backward()
    lhs = float((uz * jz).sum() + (ul * jl).sum())
    rhs = float(sum((v.grad * d).sum() for v, d in zip(ts, (dL, db, dq))))
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs))


def test_float32_and_both_qp_kernels():
    case = problems.dense_qp(5, 6, 2)
    values = case.sample(np.random.default_rng(7), batch=4)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    (x64,) = layer(*map(torch.tensor, values))
    (xt,) = layer(*map(torch.tensor, values), solver_args={"qp_backend": "torch"})
    torch.testing.assert_close(xt, x64, atol=1e-10, rtol=0)
    (x32,) = layer(*(torch.tensor(v, dtype=torch.float32) for v in values))
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, atol=1e-5, rtol=0)


def _infeasible_case():
    x = cp.Variable(2)
    lo = cp.Parameter(2)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= lo, cp.sum(x) <= 1])
    return prob, lo, x


def test_infeasible_and_unbounded_problems_get_their_status():
    prob, lo, x = _infeasible_case()
    lo_t = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.2, 0.1], [0.7, 0.7]], dtype=torch.float64, requires_grad=True)
    layer = CvxpyLayer(prob, [lo], [x], on_failure="nan", return_solution=True)
    sol = layer(lo_t)
    assert sol.backend == "qp"
    S = ol.Status
    assert sol.status.tolist() == [S.SOLVED, S.PRIMAL_INFEASIBLE, S.SOLVED, S.PRIMAL_INFEASIBLE]
    (xo,) = sol.values
    assert torch.isnan(xo[[1, 3]]).all() and torch.isfinite(xo[[0, 2]]).all()
    torch.testing.assert_close(xo[2], torch.tensor([0.2, 0.1], dtype=torch.float64), atol=1e-9, rtol=0)
    xo[[0, 2]].sum().backward()
    assert torch.isfinite(lo_t.grad).all() and float(lo_t.grad[[1, 3]].abs().max()) == 0.0
    with pytest.raises(ol.SolverError, match="batch index 1: primal infeasible") as info:
        CvxpyLayer(prob, [lo], [x])(lo_t)
    assert info.value.failed == [1, 3]

    y = cp.Variable(2)
    c = cp.Parameter(2)
    lp = cp.Problem(cp.Minimize(c @ y), [y >= 0])
    sol = CvxpyLayer(lp, [c], [y], on_failure="nan", return_solution=True)(
        torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64))
    assert sol.backend == "qp" and sol.status.tolist() == [S.SOLVED, S.DUAL_INFEASIBLE]


def test_iteration_limit_falls_back_to_scs():
    """Problems solve_qp leaves without a certificate (here: an iteration cap of 1) are re-solved
    by SCS, and their gradients come from the SCS route's derivative. (Without the polish: with
    it, one interior-point iteration already identifies these problems' active sets.)"""
    case = problems.qp()
    values = case.sample(np.random.default_rng(8), batch=2)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, return_solution=True)
    ts = [torch.tensor(v, requires_grad=True) for v in values]
    sol = layer(*ts, solver_args={"max_iters": 1, "polish": False})
    assert sol.status.tolist() == [ol.Status.SOLVED] * 2
    assert all(" -> scs: solved" in s for s in sol.solver_status)
    ref = layer(*ts)
    torch.testing.assert_close(sol.values[0], ref.values[0], atol=1e-7, rtol=0)
    g1 = torch.autograd.grad(sol.values[0].sum(), ts)
    g2 = torch.autograd.grad(ref.values[0].sum(), ts)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# Found by fuzzing the qp route: eliminating every variable crashed ("q must have at least one
# entry"), and a program without constraint rows crashed the Clarabel route's refinement and SCS.


@pytest.mark.parametrize("coef", [1.0, 2.0])
def test_every_variable_fixed_by_an_equality(coef):
    x, p, c = cp.Variable(3), cp.Parameter(3), cp.Parameter(3)
    con = coef * x == p
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + c @ x), [con, x <= 5])
    pv, cv = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 0.5])
    p.value, c.value = pv, cv
    problem.solve(solver=cp.CLARABEL)
    for solver in ("auto", "qp"):
        layer = CvxpyLayer(problem, [p, c], [x, con], solver=solver)
        xs, ys = layer(torch.tensor(pv), torch.tensor(cv))
        np.testing.assert_allclose(xs.numpy(), x.value, atol=1e-7)
        np.testing.assert_allclose(ys.numpy(), con.dual_value, atol=1e-6)


def test_program_without_constraint_rows():
    x, S, c = cp.Variable(3), cp.Parameter((3, 3), PSD=True), cp.Parameter(3)
    problem = cp.Problem(cp.Minimize(cp.quad_form(x, S) + c @ x))
    Sv, cv = torch.eye(3, dtype=torch.float64) * 2, torch.ones(3, dtype=torch.float64)
    for solver in ("auto", "qp", "clarabel"):
        (xs,) = CvxpyLayer(problem, [S, c], [x], solver=solver)(Sv, cv)
        torch.testing.assert_close(xs, torch.full((3,), -0.25, dtype=torch.float64), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="no constraint rows"):
        CvxpyLayer(problem, [S, c], [x], solver="scs")(Sv, cv)
