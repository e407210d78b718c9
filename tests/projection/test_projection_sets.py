"""Projections: the projection itself (feasibility + variational inequality, and closed forms
or an independent reference), and its Jacobian (closed form and finite differences)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optlayers as ol
from optlayers import projection as P
from optlayers.testing import check_grad

D = torch.float64


def rnd(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def assert_is_projection(x, y, feasible_points, tol=1e-10):
    """y = P_C(x) iff y ∈ C and <x − y, z − y> ≤ 0 for all z ∈ C (checked on samples)."""
    for z in feasible_points:
        assert float(((x - y) * (z - y)).sum(-1).max()) <= tol


def simplex_bisection(x, value=1.0, iters=120):
    # Independent reference: bisection on τ in Σ max(x − τ, 0) = value.
    lo, hi = x.min(-1).values - value, x.max(-1).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        s = torch.relu(x - mid[..., None]).sum(-1)
        lo, hi = torch.where(s > value, mid, lo), torch.where(s > value, hi, mid)
    return torch.relu(x - ((lo + hi) / 2)[..., None])


def random_simplex_points(n, k, value=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.distributions.Dirichlet(torch.ones(n, dtype=D)).sample((k,)) * value
    vertices = torch.eye(n, dtype=D) * value
    return list(pts) + list(vertices)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 10), seed=st.integers(0, 10_000), value=st.floats(0.1, 5.0), scale=st.floats(0.01, 10))
def test_simplex_matches_bisection_and_is_projection(n, seed, value, scale):
    x = rnd(3, n, seed=seed, scale=scale)
    y = P.projection_simplex(x, value)
    assert torch.allclose(y.sum(-1), torch.full((3,), value, dtype=D), atol=1e-10)
    assert (y >= 0).all()
    assert torch.allclose(y, simplex_bisection(x, value), atol=1e-9 * max(1.0, value))
    for i in range(3):
        assert_is_projection(x[i], y[i], random_simplex_points(n, 10, value, seed), tol=1e-9 * (1 + scale))


def test_simplex_jacobian_closed_form_and_fd():
    x = torch.tensor([[0.9, 0.1, -0.5, 0.6, 0.05, 0.4], [2.0, -1.0, 0.3, 0.2, 0.1, 0.0]], dtype=D)
    y = P.projection_simplex(x)
    J = torch.func.vmap(torch.func.jacrev(P.projection_simplex))(x)
    for i in range(2):
        s = (y[i] > 0).to(D)
        assert torch.allclose(J[i], torch.diag(s) - torch.outer(s, s) / s.sum(), atol=1e-12)
    check_grad(P.projection_simplex, (x.clone().requires_grad_(),), rtol=1e-7)
    # Derivative w.r.t. the value: ∂y/∂value = s/|s|.
    v = torch.tensor(1.5, dtype=D, requires_grad=True)
    check_grad(lambda vv: P.projection_simplex(x, vv), (v,), rtol=1e-7)


def test_l1_ball():
    x = rnd(4, 7, seed=1, scale=2.0)
    x[0] = x[0] / x[0].abs().sum() * 0.5  # inside: unchanged
    y = P.projection_l1_ball(x, 1.0)
    assert torch.equal(y[0], x[0])
    assert torch.allclose(y[1:].abs().sum(-1), torch.ones(3, dtype=D))
    # Feasible samples: signed simplex points and the inside of the ball.
    g = torch.Generator().manual_seed(2)
    for i in range(1, 4):
        pts = [torch.sign(torch.randn(7, generator=g, dtype=D)) * p for p in random_simplex_points(7, 20, seed=i)]
        assert_is_projection(x[i], y[i], pts + [0.3 * p for p in pts])
    check_grad(lambda a, r: P.projection_l1_ball(a, r), (x[1:].clone().requires_grad_(), torch.tensor(1.2, dtype=D, requires_grad=True)), rtol=1e-7)


def test_l2_ball_closed_form_jacobian():
    x = torch.stack([rnd(5, seed=3) * 0.01, rnd(5, seed=4) * 3.0])
    y = P.projection_l2_ball(x, 2.0)
    assert torch.equal(y[0], x[0])
    assert torch.allclose(y[1].norm(), torch.tensor(2.0, dtype=D))
    J = torch.func.jacrev(lambda a: P.projection_l2_ball(a, 2.0))(x[1])
    nrm = x[1].norm()
    ref = (2.0 / nrm) * (torch.eye(5, dtype=D) - torch.outer(x[1], x[1]) / nrm**2)
    assert torch.allclose(J, ref, atol=1e-12)
    # Gradient at x = 0 is finite (identity).
    J0 = torch.func.jacrev(lambda a: P.projection_l2_ball(a, 1.0))(torch.zeros(3, dtype=D))
    assert torch.equal(J0, torch.eye(3, dtype=D))
    check_grad(lambda a, r: P.projection_l2_ball(a, r), (x.clone().requires_grad_(), torch.tensor(2.0, dtype=D, requires_grad=True)), rtol=1e-7)


def test_box_and_non_negative():
    x = rnd(3, 6, seed=5, scale=2.0)
    lo, hi = -torch.ones(6, dtype=D), torch.linspace(0.1, 1.5, 6, dtype=D)
    y = P.projection_box(x, lo, hi)
    assert torch.equal(y, torch.minimum(torch.maximum(x, lo), hi))
    J = torch.func.jacrev(lambda a: P.projection_box(a, lo, hi))(x[0])
    assert torch.equal(J, torch.diag(((x[0] > lo) & (x[0] < hi)).to(D)))
    check_grad(lambda a, l, h: P.projection_box(a, l, h), (x.clone().requires_grad_(), lo.clone().requires_grad_(), hi.clone().requires_grad_()), rtol=1e-7)
    assert torch.equal(P.projection_non_negative(x), x.clamp_min(0))
    check_grad(P.projection_non_negative, (x.clone().requires_grad_(),), rtol=1e-7)
    with pytest.raises(ValueError, match="lower must be <= upper"):
        P.projection_box(x, 1.0, 0.0)


def test_hyperplane_halfspace_affine():
    x, a = rnd(4, 5, seed=6), rnd(5, seed=7)
    y = P.projection_hyperplane(x, a, 0.7)
    assert torch.allclose(y @ a, torch.full((4,), 0.7, dtype=D))
    # x − y is normal to the hyperplane.
    assert torch.allclose(torch.linalg.matrix_rank(torch.cat([(x - y), a[None]]), atol=1e-10), torch.tensor(1))
    J = torch.func.jacrev(lambda v: P.projection_hyperplane(v, a, 0.7))(x[0])
    assert torch.allclose(J, torch.eye(5, dtype=D) - torch.outer(a, a) / (a @ a), atol=1e-12)
    h = P.projection_halfspace(x, a, 0.0)
    inside = x @ a <= 0
    assert torch.equal(h[inside], x[inside])
    assert torch.allclose(h[~inside] @ a, torch.zeros(int((~inside).sum()), dtype=D), atol=1e-12)
    A, b = rnd(2, 5, seed=8), rnd(2, seed=9)
    z = P.projection_affine_set(x, A, b)
    assert torch.allclose(z @ A.T, b.expand(4, 2), atol=1e-12)
    ref = x - (torch.linalg.pinv(A) @ (x @ A.T - b).T).T
    assert torch.allclose(z, ref, atol=1e-12)
    check_grad(lambda v, AA, bb: P.projection_affine_set(v, AA, bb), (x.clone().requires_grad_(), A.clone().requires_grad_(), b.clone().requires_grad_()), rtol=1e-7)
    check_grad(lambda v, aa: P.projection_hyperplane(v, aa, 0.7), (x.clone().requires_grad_(), a.clone().requires_grad_()), rtol=1e-7)
    with pytest.raises(ValueError, match="full row rank"):
        P.projection_affine_set(x, torch.ones(2, 5, dtype=D), b)
    with pytest.raises(ValueError, match="A must be"):
        P.projection_affine_set(x, torch.ones(2, 4, dtype=D), b)


def test_prox_operators():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.5, 3.0], dtype=D)
    assert torch.equal(P.prox_lasso(x, 1.0, 0.5), torch.tensor([-1.5, 0.0, 0.0, 0.0, 2.5], dtype=D))
    assert torch.allclose(P.prox_ridge(x, 2.0, 0.5), x / 2)
    assert torch.allclose(P.prox_elastic_net(x, (1.0, 2.0), 0.5), P.prox_lasso(x, 1.0, 0.5) / 2)
    assert P.prox_none(x) is x
    # prox_lasso is argmin_y ½(y − x)² + s·λ|y|: compare with a fine grid.
    grid = torch.linspace(-4, 4, 80001, dtype=D)
    for xi in x:
        obj = 0.5 * (grid - xi) ** 2 + 0.5 * grid.abs()
        assert abs(float(grid[obj.argmin()] - P.prox_lasso(xi[None], 1.0, 0.5)[0])) < 2e-4
    with pytest.raises(ValueError, match="l1reg"):
        P.prox_lasso(x, -1.0)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="value must be > 0"):
        P.projection_simplex(torch.ones(3, dtype=D), 0.0)
    with pytest.raises(ValueError, match="radius must be > 0"):
        P.projection_l2_ball(torch.ones(3, dtype=D), -1.0)
    with pytest.raises(TypeError, match="floating point"):
        P.projection_simplex(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one dimension"):
        P.projection_simplex(torch.tensor(1.0, dtype=D))


@pytest.mark.parametrize("call,match", [
    (lambda x: ol.projection.projection_l2_ball(x, torch.tensor(-1.0, dtype=x.dtype)), "radius must be > 0"),
    (lambda x: ol.projection.projection_simplex(x, torch.tensor([1.0, 0.0], dtype=x.dtype)), "value must be > 0"),
    (lambda x: ol.projection.projection_box(x, torch.ones_like(x), torch.zeros_like(x)), "lower must be <= upper"),
    (lambda x: ol.projection.prox_lasso(x, torch.tensor(-1.0, dtype=x.dtype)), "l1reg must be >= 0"),
    (lambda x: ol.projection.projection_hyperplane(x, torch.zeros_like(x), 1.0), "a must be nonzero"),
    (lambda x: ol.projection.projection_halfspace(x, torch.zeros_like(x), 1.0), "a must be nonzero"),
])
def test_tensor_valued_arguments_are_checked(call, match):
    # Found by fuzzing: only Python-number arguments were checked; a tensor radius of −1 returned
    # a reflected point, lower > upper returned lower, a negative l1reg enlarged |x|, a = 0 gave NaN.
    x = torch.tensor([[0.3, -2.0, 1.0], [1.0, 0.5, -0.2]], dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        call(x)


def test_tensor_arguments_under_vmap_are_not_checked_and_still_work():
    # (no data-dependent check under a transform: these run inside vmapped fixed-point maps)
    x = torch.tensor([0.3, -2.0, 1.0], dtype=torch.float64)
    radii = torch.tensor([1.0, 2.0], dtype=torch.float64)
    got = torch.func.vmap(lambda r: ol.projection.projection_l2_ball(x, r))(radii)
    torch.testing.assert_close(got, torch.stack([ol.projection.projection_l2_ball(x, r) for r in radii]))


@pytest.mark.parametrize("s", [1e19, 1e-25])
def test_l2_ball_in_float32_far_from_one(s):
    # (the float32 sum of squares overflowed beyond ‖x‖ ≈ 1.8e19 — the projection returned 0 — and
    # underflowed below ≈ 1e-23 — x came back unprojected; found by fuzzing)
    x = torch.tensor([3.0, -4.0]) * s
    torch.testing.assert_close(P.projection_l2_ball(x, 2.0 * s), x * 0.4, rtol=1e-6, atol=0)
