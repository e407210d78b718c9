"""Gradients of ``ol.solve_qp``: finite differences, closed-form references, forward mode,
and a degenerate point."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.autograd import forward_ad as fwAD

import optlayers as ol
from qp_oracles import cvxpy_polished, kkt_reference, mv, rel_err, sym

F64 = torch.float64
# Implicit gradient vs. an independent closed form (autograd through torch.linalg.solve).
ANALYTIC_TOL = 1e-8
# Central finite differences in float64 (ε ≈ 6e-6: truncation and rounding both ~1e-10).
FD_RTOL = 1e-6


def _leaves(P):
    """(S, q, G, h, A, b) leaves requiring grad; Q = sym(S) is the symmetric parametrization."""
    return [t.detach().clone().requires_grad_() for t in P.data()]


def _all_outputs(S, q, G, h, A, b, backend="auto"):
    sol = ol.solve_qp(sym(S), q, G, h, A, b, return_solution=True, backend=backend)
    return sol.x, sol.lam, sol.nu


def _grads(fn, leaves, weights):
    outs = fn(*leaves)
    loss = sum((w * o).sum() for w, o in zip(weights, outs))
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def _weights(outs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]


# ----------------------------------------------------------------------------- finite differences


def test_check_grad_all_six_inputs_through_x_lam_nu_full(backend):
    """Every entry of every input (full mode) — a tiny problem keeps it cheap."""
    all_outputs = partial(_all_outputs, backend=backend)
    P = ol.testing.random_qp(1, 3, 4, 1, active_fraction=0.25, seed=1)
    rep = ol.testing.check_grad(all_outputs, _leaves(P), rtol=FD_RTOL, mode="full")
    assert set(rep.errors) == {0, 1, 2, 3, 4, 5}
    assert rep.ok, str(rep)
    # A meaningful check: the analytic gradients are not all zero.
    assert all(float(g.abs().max()) > 1e-3 for g in rep.analytic.values())


def test_check_grad_directional_batched_through_each_output(backend):
    all_outputs = partial(_all_outputs, backend=backend)
    P = ol.testing.random_qp(2, 6, 8, 2, active_fraction=0.25, seed=2)
    for k in range(3):  # x, lam, nu separately, so no output can hide behind another
        fn = lambda *a, k=k: all_outputs(*a)[k]  # noqa: E731
        rep = ol.testing.check_grad(fn, _leaves(P), rtol=FD_RTOL, mode="directional", num_directions=2, seed=k)
        assert rep.ok, f"output {k}: {rep}"


def test_check_grad_shared_inputs(backend):
    all_outputs = partial(_all_outputs, backend=backend)
    P = ol.testing.random_qp(3, 5, 6, 2, active_fraction=0.34, shared=("Q", "G", "A"), seed=3)
    rep = ol.testing.check_grad(all_outputs, _leaves(P), rtol=FD_RTOL, mode="directional", num_directions=3)
    assert rep.ok, str(rep)


# ----------------------------------------------------------------------------- closed-form references


def test_equality_qp_gradient_matches_closed_form(backend):
    """Equality-constrained QP: x, ν solve one linear KKT system. Autograd through
    torch.linalg.solve is an independent derivative; ours must agree to 1e-8 for all inputs."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(4, 7, 1, 3, seed=4)
    Q, q, A, b = (t.detach().clone().requires_grad_() for t in (P.Q, P.q, P.A, P.b))
    n, p = 7, 3

    def ours(S, q, A, b):
        sol = solve(sym(S), q, A=A, b=b, return_solution=True)
        return sol.x, sol.nu

    def reference(S, q, A, b):
        Qs = sym(S)
        K = torch.cat([torch.cat([Qs, A.mT], -1), torch.cat([A, A.new_zeros(4, p, p)], -1)], -2)
        u = torch.linalg.solve(K, torch.cat([-q, b], -1))
        return u[..., :n], u[..., n:]

    leaves = [Q, q, A, b]
    w = _weights(reference(*leaves), seed=1)
    g_ours = _grads(ours, leaves, w)
    g_ref = _grads(reference, leaves, w)
    for name, a, r in zip("Sqab", g_ours, g_ref):
        assert rel_err(a, r) <= ANALYTIC_TOL, f"d/d{name}: rel err {rel_err(a, r):.2e}"


def test_inequality_qp_gradient_matches_active_set_closed_form(backend):
    """At a strictly complementary planted solution the active set is locally constant, so the
    solution map equals the equality-constrained QP on that set (closed form in qp_oracles)."""
    all_outputs = partial(_all_outputs, backend=backend)
    P = ol.testing.random_qp(5, 8, 10, 2, active_fraction=0.4, seed=5)
    leaves = _leaves(P)
    active = P.active[0]
    assert bool((P.active == active).all())

    def reference(S, q, G, h, A, b):
        return kkt_reference(sym(S), q, G, h, A, b, active)

    w = _weights(reference(*leaves), seed=2)
    g_ours = _grads(all_outputs, leaves, w)
    g_ref = _grads(reference, leaves, w)
    for name, a, r in zip(("S", "q", "G", "h", "A", "b"), g_ours, g_ref):
        assert a is not None and torch.isfinite(a).all()
        assert rel_err(a, r) <= ANALYTIC_TOL, f"d/d{name}: rel err {rel_err(a, r):.2e}"


def test_q_gradient_is_symmetric_part(backend):
    """Q enters only through its symmetric part: dL/dQ is symmetric and equals the sym-
    parametrization gradient (the gradient w.r.t. S of Q = ½(S + Sᵀ) is sym(dL/dQ))."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(2, 5, 6, 1, seed=6)
    Q = P.Q.clone().requires_grad_()
    S = P.Q.clone().requires_grad_()
    w = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    gQ, = torch.autograd.grad((w * solve(Q, *P.data()[1:])).sum(), Q)
    gS, = torch.autograd.grad((w * solve(sym(S), *P.data()[1:])).sum(), S)
    assert float((gQ - gQ.mT).abs().max()) <= 1e-14 * (1 + float(gQ.abs().max()))
    assert rel_err(gQ, gS) <= 1e-12


def test_lp_gradient_matches_vertex_closed_form(backend):
    """LP at a non-degenerate vertex: x = [G_𝒜; A]⁻¹[h_𝒜; b]; dx/dq = 0."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(3, 5, 8, 1, lp=True, seed=7)
    q, G, h, A, b = (t.detach().clone().requires_grad_() for t in (P.q, P.G, P.h, P.A, P.b))
    active = P.active[0]

    def ours(q, G, h, A, b):
        sol = solve(None, q, G, h, A, b, return_solution=True)
        return sol.x, sol.lam, sol.nu

    def reference(q, G, h, A, b):
        return kkt_reference(torch.zeros(5, 5, dtype=F64), q, G, h, A, b, active)

    leaves = [q, G, h, A, b]
    w = _weights(reference(*leaves), seed=3)
    g_ours = _grads(ours, leaves, w)
    g_ref = _grads(reference, leaves, w)
    for name, a, r in zip("qGhAb", g_ours, g_ref):
        assert rel_err(a, r) <= ANALYTIC_TOL, f"d/d{name}: rel err {rel_err(a, r):.2e}"


def test_unconstrained_gradient_closed_form(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(3, 4, 1, 0, seed=8)
    S, q = P.Q.clone().requires_grad_(), P.q.clone().requires_grad_()
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    g = torch.autograd.grad((w * solve(sym(S), q)).sum(), (S, q))
    S2, q2 = P.Q.clone().requires_grad_(), P.q.clone().requires_grad_()
    r = torch.autograd.grad((w * -torch.linalg.solve(sym(S2), q2)).sum(), (S2, q2))
    assert rel_err(g[0], r[0]) <= ANALYTIC_TOL and rel_err(g[1], r[1]) <= ANALYTIC_TOL


def test_only_requested_inputs_get_gradients(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(2, 4, 5, 1, seed=9)
    Q, q, G, h, A, b = P.data()
    h = h.clone().requires_grad_()
    x = solve(Q, q, G, h, A, b)
    assert x.requires_grad
    g, = torch.autograd.grad(x.sum(), h)
    assert g.shape == h.shape and torch.isfinite(g).all()
    # Inactive rows of h cannot move x.
    assert float(g[~P.active].abs().max()) == 0.0


# ----------------------------------------------------------------------------- forward mode


def _directions(data, seed):
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in data]
    vs[0] = sym(vs[0])
    return vs


def _fn(*d, backend="auto"):
    sol = ol.solve_qp(*d, return_solution=True, backend=backend)
    return sol.x, sol.lam, sol.nu


@pytest.mark.parametrize("shared", [(), ("Q", "G", "A")], ids=["batched", "shared"])
def test_forward_mode_matches_reverse_mode(backend, shared):
    """<u, J v> computed with torch.func.jvp, with torch.autograd.forward_ad and with reverse
    mode must agree (all six inputs perturbed at once; outputs x, λ, ν)."""
    fn_all = partial(_fn, backend=backend)
    P = ol.testing.random_qp(3, 6, 8, 2, active_fraction=0.25, shared=shared, seed=10)
    data = P.data()
    vs = _directions(data, seed=1)
    _, t_func = torch.func.jvp(fn_all, tuple(data), tuple(vs))
    with fwAD.dual_level():
        outs = fn_all(*(fwAD.make_dual(t, v) for t, v in zip(data, vs)))
        t_fwad = [fwAD.unpack_dual(o).tangent for o in outs]
    us = _weights(t_func, seed=2)
    leaves = [t.clone().requires_grad_() for t in data]
    grads = _grads(fn_all, leaves, us)
    rev = sum(float((g * v).sum()) for g, v in zip(grads, vs))
    fwd = sum(float((u * t).sum()) for u, t in zip(us, t_func))
    fwd2 = sum(float((u * t).sum()) for u, t in zip(us, t_fwad))
    assert abs(fwd - rev) <= 1e-10 * max(abs(rev), 1.0), (fwd, rev)
    assert abs(fwd2 - rev) <= 1e-10 * max(abs(rev), 1.0), (fwd2, rev)
    for a, b in zip(t_func, t_fwad):
        assert float((a - b).abs().max()) <= 1e-12


def test_forward_mode_matches_finite_difference_single_input(backend):
    """A tangent on q alone (others constant) vs. a central difference of the solution."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(2, 5, 6, 1, seed=11)
    Q, q, G, h, A, b = P.data()
    v = torch.randn(q.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    _, tx = torch.func.jvp(lambda q_: solve(Q, q_, G, h, A, b), (q,), (v,))
    eps = 1e-6
    fd = (solve(Q, q + eps * v, G, h, A, b) - solve(Q, q - eps * v, G, h, A, b)) / (2 * eps)
    assert rel_err(tx, fd) <= 1e-7


# ----------------------------------------------------------------------------- degenerate point


def _degenerate_problem(seed):
    """random_qp with the first active row made degenerate: λ₀ = 0 and slack₀ = 0."""
    P = ol.testing.random_qp((), 6, 8, 1, active_fraction=0.375, seed=seed)
    lam = P.lam.clone()
    lam[0] = 0.0
    q = -(mv(P.Q, P.x) + mv(P.G.mT, lam) + mv(P.A.mT, P.nu))
    return P, q, lam


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_degenerate_point_gradient_is_a_one_sided_derivative(backend, seed):
    """At a weakly active constraint (λ₀ = 0 and h₀ − G₀x = 0) the solution map is piecewise
    linear in h and not differentiable. Documented behaviour (backward.py): the gradient is that
    of the QP with the solver's active-set classification held fixed. So it must be finite and:

    - d/dh₀ equals the *right* one-sided difference (h₀ ↑: row 0 inactive) when the solver
      classified row 0 inactive, or the *left* one (h₀ ↓: row 0 active) when it classified it
      active — we assert it equals one of the two, and that the full gradient w.r.t. (q, h, b)
      equals the closed-form derivative of the matching fixed-active-set QP.

    The map is affine in (q, h, b) on each piece, so one-sided differences are exact up to the
    solution error with a large step (ε = 1e-3; every other row has margin ≥ 0.5, so no other
    breakpoint is reached). They are computed with CVXPY + Clarabel followed by an exact solve on
    the active set Clarabel identifies (``cvxpy_polished``), independently of the layer's forward
    accuracy near degeneracy."""
    solve = partial(ol.solve_qp, backend=backend)
    P, q0, lam = _degenerate_problem(seed)
    Q, G, A = P.Q, P.G, P.A
    w = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=F64)
    q, h, b = (t.clone().requires_grad_() for t in (q0, P.h, P.b))
    sol = solve(Q, q, G, h, A, b, return_solution=True)
    assert int(sol.status) == 0
    assert float((sol.x - P.x).abs().max().detach()) <= 1e-10
    gq, gh, gb = torch.autograd.grad((w * sol.x).sum(), (q, h, b))
    assert all(bool(torch.isfinite(g).all()) for g in (gq, gh, gb))

    def L(hh):
        x, _, _ = cvxpy_polished(Q, q0, G, hh, A, P.b)
        return float((w * x).sum())

    eps = 1e-3
    e0 = torch.zeros(8, dtype=F64)
    e0[0] = eps
    right = (L(P.h + e0) - float((w * P.x).sum())) / eps
    left = (float((w * P.x).sum()) - L(P.h - e0)) / eps
    assert abs(right - left) > 1e-3, "test problem is not actually degenerate in h₀"
    g0 = float(gh[0])
    matches = [abs(g0 - d) <= 1e-8 * (1 + abs(d)) for d in (right, left)]
    assert any(matches), f"dL/dh₀ = {g0} is neither one-sided derivative ({right}, {left})"

    # The whole gradient is the derivative of the fixed-active-set QP the solver picked.
    active = P.active.clone()
    active[0] = matches[1]  # left derivative ⇔ row 0 held active
    q2, h2, b2 = (t.clone().requires_grad_() for t in (q0, P.h, P.b))
    xr, _, _ = kkt_reference(Q, q2, G, h2, A, b2, active)
    rq, rh, rb = torch.autograd.grad((w * xr).sum(), (q2, h2, b2))
    for name, a, r in (("q", gq, rq), ("h", gh, rh), ("b", gb, rb)):
        assert rel_err(a, r) <= ANALYTIC_TOL, f"d/d{name}: rel err {rel_err(a, r):.2e}"


# ----------------------------------------------------------------------------- float32


def test_float32_gradient_close_to_float64(backend):
    """float32 gradients: finite, float32, and within 1e-3 (relative, normwise) of float64."""
    solve = partial(ol.solve_qp, backend=backend)
    P64 = ol.testing.random_qp(2, 6, 6, 2, seed=12)
    P32 = ol.testing.random_qp(2, 6, 6, 2, seed=12, dtype=torch.float32)
    w = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = {}
    for key, P in (("64", P64), ("32", P32)):
        leaves = _leaves(P)
        sol = solve(sym(leaves[0]), *leaves[1:], return_solution=True, on_failure="nan")
        assert sol.status.tolist() == [0, 0], f"float{key} statuses {sol.status.tolist()}"
        g[key] = torch.autograd.grad((w.to(sol.x.dtype) * sol.x).sum(), leaves)
    for a, b in zip(g["32"], g["64"]):
        assert a.dtype == torch.float32
        assert rel_err(a.double(), b) <= 1e-3


@pytest.mark.parametrize("shift", [1e-4, -1e-4])
def test_near_degenerate_gradient_uses_the_true_active_set(backend, shift):
    """Row 0 weakly active, then h₀ moved by ``shift``: the solution is strictly complementary
    again (margin 1e-4: slack₀ = 1e-4 when loosened, λ₀ = O(1e-4) when tightened), so the map is
    differentiable and its derivative is that of the QP with the *true* active set: planted
    rows minus row 0 (shift > 0) or the planted rows (shift < 0)."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(12, 6, 8, 2, seed=31)
    lam = P.lam.clone()
    lam[:, 0] = 0.0
    q0 = -(mv(P.Q, P.x) + mv(P.G.mT, lam) + mv(P.A.mT, P.nu))
    h0 = P.h.clone()
    h0[:, 0] += shift
    active = P.active[0].clone()
    active[0] = shift < 0
    w = torch.randn(12, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    q, h, b = (t.clone().requires_grad_() for t in (q0, h0, P.b))
    x = solve(P.Q, q, P.G, h, P.A, b)
    g = torch.autograd.grad((w * x).sum(), (q, h, b))
    q2, h2, b2 = (t.clone().requires_grad_() for t in (q0, h0, P.b))
    xr, lr, _ = kkt_reference(P.Q, q2, P.G, h2, P.A, b2, active)
    assert bool((lr >= -1e-12).all()) and bool((h0 - mv(P.G, xr.detach()) >= -1e-12).all())  # right set
    r = torch.autograd.grad((w * xr).sum(), (q2, h2, b2))
    scale = max(float(t.abs().max()) for t in r)
    for name, a, ref in zip("qhb", g, r):
        per_problem = (a - ref).flatten(1).abs().amax(1)
        bad = torch.nonzero(per_problem > ANALYTIC_TOL * scale).flatten().tolist()
        assert not bad, f"d/d{name} wrong for problems {bad}: errors {per_problem[bad].tolist()}"
