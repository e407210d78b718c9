"""CvxpyLayer backward (and forward-mode) derivatives vs. diffcp, finite differences, each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad

cp = pytest.importorskip("cvxpy")
diffcp = pytest.importorskip("diffcp")

import optlayers as ol
from optlayers._src.conic import problems
from optlayers.conic import CvxpyLayer

# Target of the issue: gradients within 1e-5 relative of diffcp at tight tolerance; we measure
# 1e-12..1e-8 on these problems, so assert a margin below the target.
DIFFCP_RTOL = 1e-6
# Finite differences need solutions well below their step²: SCS at 1e-9 (the default 1e-7 plus
# refinement gives ~1e-8, whose noise over a step of 1e-4 would be ~1e-4).
FD_ARGS = {"eps": 1e-9}


def diffcp_reference(case, values, weights):
    """Solution and parameter gradients of L = Σ_k <W_k, variable_k> by an independent route:
    CVXPY's canonicalization for diffcp (quadratic objectives lifted to second-order cones),
    ``diffcp.solve_and_derivative`` with SCS at eps=1e-12 (dense derivative), and CVXPY's own
    parameter Jacobian (``ParamConeProg.apply_param_jac``)."""
    from cvxpy.reductions.solvers.conic_solvers.scs_conif import dims_to_solver_dict

    for p, v in zip(case.parameters, values):
        p.value = v
    data, chain, _ = case.problem.get_problem_data(solver="DIFFCP")
    prog = data[cp.settings.PARAM_PROB]
    c, _, A, b = prog.apply_parameters()
    x, y, s, _, adjoint = diffcp.solve_and_derivative(
        -A, b, c, dims_to_solver_dict(data["dims"]), eps=1e-12, max_iters=200_000, mode="dense"
    )
    var_map = {k: v[0] for k, v in chain.compose_var_id_map().items()}
    dx = np.zeros_like(x)
    sols = []
    for var, w in zip(case.variables, weights):
        col = prog.var_id_to_col[var_map.get(var.id, var.id)]
        sols.append(x[col:col + var.size].reshape(var.shape, order="F"))
        dx[col:col + var.size] += np.asarray(w).ravel(order="F")
    dA, db, dc = adjoint(dx, np.zeros_like(y), np.zeros_like(s))
    grads = prog.apply_param_jac(dc, -dA, db)
    pmap = {k: v[0] for k, v in chain.compose_param_id_map().items()}
    return sols, [np.asarray(grads[pmap.get(p.id, p.id)]).reshape(p.shape) for p in case.parameters]


def layer_grads(layer, values, weights):
    ts = [torch.tensor(v, requires_grad=True) for v in values]
    outs = layer(*ts)
    sum((o * torch.as_tensor(w)).sum() for o, w in zip(outs, weights)).backward()
    return [o.detach().numpy() for o in outs], [t.grad.numpy() for t in ts]


def rel_err(got: list, ref: list) -> float:
    num = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    return num / max(float(np.abs(r).max()) for r in ref)


@pytest.mark.parametrize("name", sorted(problems.ALL_CLASSES))
def test_gradients_match_diffcp_unbatched_and_batched(name):
    case = problems.ALL_CLASSES[name]()
    rng = np.random.default_rng(10)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)

    values = case.sample(rng)
    weights = [rng.normal(size=v.shape) for v in case.variables]
    (x,), grads = layer_grads(layer, values, weights)
    (x_ref,), grads_ref = diffcp_reference(case, values, weights)
    np.testing.assert_allclose(x, x_ref, atol=1e-7)
    assert rel_err(grads, grads_ref) < DIFFCP_RTOL

    B = 2
    values = case.sample(rng, batch=B)
    weights = [rng.normal(size=(B,) + v.shape) for v in case.variables]
    _, grads = layer_grads(layer, values, weights)
    ref = [np.zeros_like(v) for v in values]
    for i in range(B):
        vi = [v[i] if b else v for v, b in zip(values, case.batched)]
        _, gi = diffcp_reference(case, vi, [w[i] for w in weights])
        for k, b in enumerate(case.batched):
            if b:
                ref[k][i] = gi[k]
            else:
                ref[k] += gi[k]  # a shared parameter's gradient is the sum over the batch
    assert rel_err(grads, ref) < DIFFCP_RTOL


@pytest.mark.parametrize("name", ["LP", "QP", "SOCP", "SDP", "EXP"])
def test_gradients_match_finite_differences(name):
    case = problems.ALL_CLASSES[name]()
    values = [torch.tensor(v, requires_grad=True) for v in case.sample(np.random.default_rng(11))]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    if name == "LP":
        # An LP's vertex solution is locally constant in c: its gradient is exactly zero there
        # (finite differences would only measure solver noise).
        values[0].requires_grad_(False)
        ct = values[0].clone().requires_grad_()
        layer(ct, *values[1:])[0].sum().backward()
        assert float(ct.grad.abs().max()) < 1e-10
    ol.testing.check_grad(lambda *p: layer(*p, solver_args=FD_ARGS), values, eps=1e-4, rtol=1e-4)


def test_sdp_symmetric_variable_gradient_finite_differences():
    k = 3
    X = cp.Variable((k, k), symmetric=True)
    C = cp.Parameter((k, k))
    prob = cp.Problem(cp.Minimize(cp.trace(C @ X) + 0.5 * cp.sum_squares(X)), [X >> 0, cp.trace(X) == 1])
    M = np.random.default_rng(12).normal(size=(k, k))
    Ct = torch.tensor(M + M.T, requires_grad=True)
    layer = CvxpyLayer(prob, [C], [X])
    ol.testing.check_grad(lambda C_: layer(C_, solver_args=FD_ARGS), [Ct], eps=1e-4, rtol=1e-4)


def test_dual_outputs_are_differentiable():
    case = problems.qp()
    x = case.variables[0]
    ineq, eq = case.problem.constraints
    layer = CvxpyLayer(case.problem, case.parameters, [x, ineq, eq])
    values = [torch.tensor(v, requires_grad=True) for v in case.sample(np.random.default_rng(13))]
    outs = layer(*values)
    assert (outs[1] > 1e-3).any() and (outs[1] < 1e-8).any()  # some active, some inactive
    ol.testing.check_grad(lambda *p: layer(*p, solver_args=FD_ARGS)[1:], values, eps=1e-4, rtol=1e-4)

    soc = problems.socp()
    layer = CvxpyLayer(soc.problem, soc.parameters, [soc.problem.constraints[0].dual_variables[1]])
    values = [torch.tensor(v, requires_grad=True) for v in soc.sample(np.random.default_rng(14))]
    ol.testing.check_grad(lambda *p: layer(*p, solver_args=FD_ARGS), values, eps=1e-4, rtol=1e-4)


def test_dense_and_iterative_backward_agree():
    for case in (problems.socp(), problems.sdp(), problems.exp_cone()):
        rng = np.random.default_rng(15)
        values = case.sample(rng, batch=3)
        weights = [rng.normal(size=(3,) + v.shape) for v in case.variables]
        _, gd = layer_grads(CvxpyLayer(case.problem, case.parameters, case.variables, backward="dense"), values, weights)
        _, gi = layer_grads(CvxpyLayer(case.problem, case.parameters, case.variables, backward="iterative"), values, weights)
        assert rel_err(gi, gd) < 1e-7, case.name


def test_forward_mode_matches_reverse_mode():
    case = problems.socp()
    rng = np.random.default_rng(16)
    c, A, b = (torch.tensor(v) for v in case.sample(rng, batch=3))
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    dc, dA, db = torch.randn_like(c), torch.randn_like(A), torch.randn_like(b)
    with forward_ad.dual_level():
        (x,) = layer(forward_ad.make_dual(c, dc), forward_ad.make_dual(A, dA), forward_ad.make_dual(b, db))
        jv = forward_ad.unpack_dual(x).tangent
    u = torch.randn_like(jv)
    ts = [t.clone().requires_grad_() for t in (c, A, b)]
    (x2,) = layer(*ts)
    (x2 * u).sum().backward()
    lhs = float((u * jv).sum())
    rhs = float(sum((t.grad * d).sum() for t, d in zip(ts, (dc, dA, db))))
    # The two products come from two solves, each accurate to ~1e-8..1e-10 (SCS at 1e-7 plus the
    # Newton refinement, see conic/options.py), so they agree to that level, not to round-off: at
    # 1e-8 this failed in about 1 of 5 runs on a loaded 2-core machine (differences 1.4e-8, 2.2e-8).
    assert abs(lhs - rhs) <= 1e-7 * max(1.0, abs(lhs))


def test_clarabel_gradients_match_scs():
    case = problems.exp_cone()
    rng = np.random.default_rng(17)
    values = case.sample(rng, batch=2)
    weights = [rng.normal(size=(2,) + v.shape) for v in case.variables]
    _, gs = layer_grads(CvxpyLayer(case.problem, case.parameters, case.variables), values, weights)
    _, gc = layer_grads(CvxpyLayer(case.problem, case.parameters, case.variables, solver="clarabel"), values, weights)
    assert rel_err(gc, gs) < 1e-6  # Clarabel's point is refined to the same solution


def test_geometric_program_gradients_finite_differences():
    case = problems.geometric()
    values = [torch.tensor(v, requires_grad=True) for v in case.sample(np.random.default_rng(18))]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=True)
    ol.testing.check_grad(lambda *p: layer(*p, solver_args=FD_ARGS), values, eps=1e-4, rtol=1e-4)


def test_parametric_quad_form_gradients_finite_differences():
    n = 3
    x = cp.Variable(n)
    S, q = cp.Parameter((n, n), PSD=True), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, S) + q @ x), [x >= -1, cp.sum(x) == 0.5])
    rng = np.random.default_rng(19)
    M = rng.normal(size=(n, n))
    St = torch.tensor(M @ M.T + np.eye(n), requires_grad=True)
    qt = torch.tensor(rng.normal(size=n), requires_grad=True)
    layer = CvxpyLayer(prob, [S, q], [x])
    # A PSD parameter is read through its upper triangle (as in CVXPY); symmetrizing in torch
    # makes every entry's finite difference a symmetric perturbation.
    ol.testing.check_grad(lambda S_, q_: layer(0.5 * (S_ + S_.T), q_, solver_args=FD_ARGS), [St, qt],
                          eps=1e-4, rtol=1e-4)


def test_degenerate_lp_gives_finite_gradients():
    """Two constraints active with one multiplier zero (degenerate vertex): finite gradients."""
    x = cp.Variable(2)
    c, h = cp.Parameter(2), cp.Parameter(3)
    prob = cp.Problem(cp.Minimize(c @ x), [x[0] <= h[0], x[1] <= h[1], x[0] + x[1] <= h[2], x >= -5])
    layer = CvxpyLayer(prob, [c, h], [x])
    ct = torch.tensor([-1.0, -1.0], dtype=torch.float64, requires_grad=True)
    ht = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)  # all three active
    (xo,) = layer(ct, ht)
    torch.testing.assert_close(xo, torch.tensor([1.0, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)
    xo.sum().backward()
    assert torch.isfinite(ct.grad).all() and torch.isfinite(ht.grad).all()


def test_property_agrees_with_the_dense_qp_layer():
    """Random feasible QPs (hypothesis): the conic layer's SCS route and the dense QP layer (an
    independent interior point + active-set KKT backward) give the same solutions and gradients.
    (solver="scs": the default "auto" would solve these QPs with the dense QP layer itself.)"""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st

    layers = {}

    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(n=st.integers(2, 5), m=st.integers(1, 6), p=st.integers(0, 2), seed=st.integers(0, 10_000))
    def check(n, m, p, seed):
        p = min(p, n - 1)
        key = (n, m, p)
        if key not in layers:
            case = problems.dense_qp(n, m, max(p, 1))
            layers[key] = (case, CvxpyLayer(case.problem, case.parameters, case.variables, solver="scs"))
        case, layer = layers[key]
        vals = case.sample(np.random.default_rng(seed))
        L, q, G, h, A, b = (torch.tensor(v, requires_grad=True) for v in vals)
        (x,) = layer(L, q, G, h, A, b)
        xq = ol.solve_qp(L.T @ L, q, G, h, A, b)
        torch.testing.assert_close(x, xq, atol=1e-6, rtol=0)
        w = torch.tensor(np.random.default_rng(seed + 1).normal(size=n))
        g1 = torch.autograd.grad((x * w).sum(), (L, q, G, h, A, b))
        g2 = torch.autograd.grad((xq * w).sum(), (L, q, G, h, A, b))
        scale = max(float(g.abs().max()) for g in g2)
        assert max(float((a - c).abs().max()) for a, c in zip(g1, g2)) <= 1e-5 * scale

    check()
