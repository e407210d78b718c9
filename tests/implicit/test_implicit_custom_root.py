"""custom_root / custom_fixed_point: implicit vs. closed form vs. finite differences vs. unrolled.

All gradient tests run in float64. Problems are small and well conditioned so that the inner
solvers converge to ~1e-13 and the comparisons can be tight.
"""

from __future__ import annotations

import functools

import pytest
import torch

import optlayers as ol
from optlayers import linear_solve, optimality, projection
from optlayers.testing import check_grad

D = torch.float64


def t(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=D)


# ---------------------------------------------------------------------------------------------
# Ridge regression: w*(λ) = (XᵀX + λI)⁻¹ Xᵀy, closed-form Jacobian dw/dλ = -(XᵀX + λI)⁻¹ w.
# ---------------------------------------------------------------------------------------------


def ridge_F(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


def ridge_closed(lam, X, y):
    d = X.shape[1]
    return torch.linalg.solve(X.T @ X + lam * torch.eye(d, dtype=X.dtype), X.T @ y)


def make_ridge(solve=None):
    @ol.custom_root(ridge_F, solve=solve)
    def ridge(init, lam, X, y):
        return ridge_closed(lam, X, y)

    return ridge


def ridge_gd_unrolled(lam, X, y, steps=400):
    # Gradient descent with step 1/L, differentiated by backprop through the iterations.
    L = float(torch.linalg.matrix_norm(X, ord=2) ** 2 + lam.detach())
    w = torch.zeros(X.shape[1], dtype=X.dtype)
    for _ in range(steps):
        w = w - ridge_F(w, lam, X, y) / L
    return w


@pytest.mark.parametrize(
    "solve",
    [None, linear_solve.cg, linear_solve.gmres, linear_solve.bicgstab, linear_solve.dense, linear_solve.normal_cg],
    ids=["default", "cg", "gmres", "bicgstab", "dense", "normal_cg"],
)
def test_ridge_implicit_matches_closed_form_fd_unrolled(solve):
    X, y = t(20, 5, seed=1), t(20, seed=2)
    lam = torch.tensor(2.0, dtype=D, requires_grad=True)
    ridge = make_ridge(solve)
    w = ridge(None, lam, X, y)
    (g_impl,) = torch.autograd.grad(w, lam, grad_outputs=torch.ones_like(w))
    w_ref = ridge_closed(lam.detach(), X, y)
    jac_closed = -torch.linalg.solve(X.T @ X + lam.detach() * torch.eye(5, dtype=D), w_ref)
    (g_unrolled,) = torch.autograd.grad(ridge_gd_unrolled(lam, X, y).sum(), lam)
    assert torch.allclose(w, w_ref, atol=1e-12)
    assert torch.allclose(g_impl, jac_closed.sum(), rtol=1e-9, atol=1e-12)
    assert torch.allclose(g_unrolled, jac_closed.sum(), rtol=1e-6)
    # Full Jacobian w.r.t. every argument vs. finite differences.
    Xg, yg = X.clone().requires_grad_(), y.clone().requires_grad_()
    check_grad(lambda l, A, b: ridge(None, l, A, b), (lam, Xg, yg), rtol=1e-6)


def test_ridge_jacobian_all_args_match_closed_form_autograd():
    X, y = t(15, 4, seed=3), t(15, seed=4)
    lam = torch.tensor(0.5, dtype=D)
    ridge = make_ridge(linear_solve.cg)
    for argnum in range(3):
        args = [lam, X, y]
        j_impl = torch.func.jacrev(lambda a: ridge(None, *[a if k == argnum else v for k, v in enumerate(args)]))(args[argnum])
        j_ref = torch.func.jacrev(lambda a: ridge_closed(*[a if k == argnum else v for k, v in enumerate(args)]))(args[argnum])
        assert torch.allclose(j_impl, j_ref, rtol=1e-9, atol=1e-11), argnum


# ---------------------------------------------------------------------------------------------
# Forward mode, VJP/JVP agreement, higher order.
# ---------------------------------------------------------------------------------------------


def test_forward_mode_forward_ad_and_torch_func_jvp():
    X, y = t(20, 5, seed=5), t(20, seed=6)
    ridge = make_ridge(linear_solve.cg)
    lam = torch.tensor(1.3, dtype=D)
    Xdot = t(20, 5, seed=7)
    f = lambda l, A: ridge(None, l, A, y)  # noqa: E731
    f_ref = lambda l, A: ridge_closed(l, A, y)  # noqa: E731
    _, ref = torch.func.jvp(f_ref, (lam, X), (torch.tensor(0.4, dtype=D), Xdot))
    _, jv = torch.func.jvp(f, (lam, X), (torch.tensor(0.4, dtype=D), Xdot))
    assert torch.allclose(jv, ref, rtol=1e-9, atol=1e-12)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = f(fwAD.make_dual(lam, torch.tensor(0.4, dtype=D)), fwAD.make_dual(X, Xdot))
        tangent = fwAD.unpack_dual(out).tangent
    assert torch.allclose(tangent, ref, rtol=1e-9, atol=1e-12)
    assert torch.allclose(torch.func.jacfwd(f, argnums=1)(lam, X), torch.func.jacrev(f_ref, argnums=1)(lam, X), atol=1e-11)


def test_vjp_jvp_adjoint_identity():
    # <u, J v> computed by forward mode equals <Jᵀ u, v> computed by reverse mode.
    X, y = t(12, 6, seed=8), t(12, seed=9)
    ridge = make_ridge(linear_solve.gmres)
    theta = (torch.tensor(0.8, dtype=D), X, y)
    v = (torch.tensor(-0.3, dtype=D), t(12, 6, seed=10), t(12, seed=11))
    u = t(6, seed=12)
    f = lambda *a: ridge(None, *a)  # noqa: E731
    _, Jv = torch.func.jvp(f, theta, v)
    _, vjp_fn = torch.func.vjp(f, *theta)
    JTu = vjp_fn(u)
    lhs = (u * Jv).sum()
    rhs = sum((a * b).sum() for a, b in zip(JTu, v))
    assert torch.allclose(lhs, rhs, rtol=1e-10)


def test_double_backward_hessian_of_bilevel_objective():
    # Hessian of the validation loss w.r.t. per-feature regularization, through implicit diff
    # (create_graph backward) vs. autograd of the closed form.
    X, y = t(30, 4, seed=13), t(30, seed=14)
    Xv, yv = t(10, 4, seed=15), t(10, seed=16)

    def ridge_F2(w, lam, X, y):
        return X.T @ (X @ w - y) + lam * w

    for solve in (linear_solve.cg, linear_solve.dense):
        @ol.custom_root(ridge_F2, solve=solve)
        def ridge(init, lam, X, y):
            return torch.linalg.solve(X.T @ X + torch.diag(lam), X.T @ y)

        val = lambda lam: ((Xv @ ridge(None, lam, X, y) - yv) ** 2).sum()  # noqa: E731
        val_ref = lambda lam: ((Xv @ torch.linalg.solve(X.T @ X + torch.diag(lam), X.T @ y) - yv) ** 2).sum()  # noqa: E731
        lam = torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=D, requires_grad=True)
        (g,) = torch.autograd.grad(val(lam), lam, create_graph=True)
        H = torch.stack([torch.autograd.grad(g[i], lam, retain_graph=True)[0] for i in range(4)])
        H_ref = torch.autograd.functional.hessian(val_ref, lam.detach())
        assert torch.allclose(H, H_ref, rtol=1e-7, atol=1e-10)
        assert torch.allclose(torch.func.hessian(val)(lam.detach()), H_ref, rtol=1e-7, atol=1e-10)
    assert torch.autograd.gradgradcheck(lambda lam: ridge(None, lam, X, y), (lam,))


# ---------------------------------------------------------------------------------------------
# Lasso through the proximal-gradient fixed point.
# ---------------------------------------------------------------------------------------------


def lasso_problem():
    X, w_true = t(40, 8, seed=20), torch.tensor([2.0, -3.0, 0, 0, 1.5, 0, 0, 0], dtype=D)
    y = X @ w_true + 0.1 * t(40, seed=21)
    return X, y


def lasso_f(w, data):
    X, y = data
    return 0.5 * ((X @ w - y) ** 2).sum()


def ista(l1reg, X, y, steps):
    L = float(torch.linalg.matrix_norm(X, ord=2) ** 2)
    w = torch.zeros(X.shape[1], dtype=X.dtype)
    for _ in range(steps):
        w = projection.prox_lasso(w - X.T @ (X @ w - y) / L, l1reg, 1.0 / L)
    return w


def test_lasso_prox_grad_fixed_point_vs_closed_form_fd_unrolled():
    X, y = lasso_problem()
    L = float(torch.linalg.matrix_norm(X, ord=2) ** 2)
    T = optimality.prox_grad_fixed_point(lasso_f, projection.prox_lasso, step_size=1.0 / L)

    @ol.custom_fixed_point(T, solve=linear_solve.gmres)
    def lasso(init, data, l1reg):
        return ista(l1reg, *data, steps=3000)

    l1reg = torch.tensor(5.0, dtype=D, requires_grad=True)
    w = lasso(None, (X, y), l1reg)
    support = w.detach() != 0
    assert 0 < int(support.sum()) < 8  # a genuinely sparse solution
    # Closed form on the support S: w_S = (X_Sᵀ X_S)⁻¹ (X_Sᵀ y − λ sign(w_S)), so
    # dw_S/dλ = −(X_Sᵀ X_S)⁻¹ sign(w_S), dw/dy = X_S (X_SᵀX_S)⁻¹ on S, 0 off S.
    XS = X[:, support]
    G = XS.T @ XS
    dw_dlam = torch.zeros(8, dtype=D)
    dw_dlam[support] = -torch.linalg.solve(G, torch.sign(w.detach()[support]))
    (g,) = torch.autograd.grad(w, l1reg, grad_outputs=torch.ones_like(w))
    assert torch.allclose(g, dw_dlam.sum(), rtol=1e-8)
    jac_y = torch.func.jacrev(lambda yy: lasso(None, (X, yy), l1reg.detach()))(y)
    ref_y = torch.zeros(8, 40, dtype=D)
    ref_y[support] = torch.linalg.solve(G, XS.T)
    assert torch.allclose(jac_y, ref_y, atol=1e-9)
    # Unrolled ISTA (backprop through 3000 iterations) agrees.
    (g_unr,) = torch.autograd.grad(ista(l1reg, X, y, steps=3000).sum(), l1reg)
    assert torch.allclose(g_unr, dw_dlam.sum(), rtol=1e-6)
    # Finite differences (the support is stable under small perturbations).
    check_grad(lambda lam: lasso(None, (X, y), lam), (l1reg,), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# ℓ2-regularized logistic regression (no closed form: FD and unrolled Newton are the references).
# ---------------------------------------------------------------------------------------------


def logreg_obj(w, params):
    lam, X, yb = params
    z = X @ w
    return torch.nn.functional.softplus(z).sum() - (yb * z).sum() + 0.5 * (lam * w * w).sum()


def newton(lam, X, yb, steps=25):
    w = torch.zeros(X.shape[1], dtype=X.dtype)
    for _ in range(steps):
        p = torch.sigmoid(X @ w)
        g = X.T @ (p - yb) + lam * w
        H = X.T @ ((p * (1 - p))[:, None] * X) + torch.diag(lam * torch.ones_like(w))
        w = w - torch.linalg.solve(H, g)
    return w


def test_logistic_regression_implicit_vs_fd_and_unrolled():
    X = t(50, 6, seed=30)
    yb = (X @ t(6, seed=31) + 0.5 * t(50, seed=32) > 0).to(D)
    F = optimality.gradient_optimality(logreg_obj)

    @ol.custom_root(F, solve=linear_solve.cg)
    def fit(init, params):
        lam, X, yb = params
        return newton(lam, X, yb)

    lam = torch.full((6,), 0.7, dtype=D, requires_grad=True)
    Xg = X.clone().requires_grad_()
    w = fit(None, (lam, Xg, yb))
    assert float(F(w.detach(), (lam.detach(), X, yb)).abs().max()) < 1e-12
    g_impl = torch.autograd.grad(w.sum(), [lam, Xg])
    g_unr = torch.autograd.grad(newton(lam, Xg, yb).sum(), [lam, Xg])  # unrolled Newton
    for a, b in zip(g_impl, g_unr):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-11)
    check_grad(lambda l, A: fit(None, (l, A, yb)), (lam, Xg), mode="directional", rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Projection onto the simplex (sparsemax) through KKT and through the projected-gradient fixed
# point; closed-form Jacobian diag(s) − s sᵀ/|s| (Martins & Astudillo 2016).
# ---------------------------------------------------------------------------------------------


def sparsemax_jacobian(y):
    s = (y > 0).to(y.dtype)
    return torch.diag(s) - torch.outer(s, s) / s.sum()


def test_sparsemax_kkt_and_projected_gradient_vs_closed_form():
    theta = torch.tensor([0.9, 0.1, -0.5, 0.6, 0.05, 0.4], dtype=D)
    F = optimality.kkt_optimality(
        lambda x, th: 0.5 * ((x - th) ** 2).sum(),
        eq_fun=lambda x, _: x.sum(dim=-1, keepdim=True) - 1.0,
        ineq_fun=lambda x, _: -x,
    )

    @ol.custom_root(F, solve=linear_solve.dense)
    def kkt_solver(init, params_obj, params_eq, params_ineq):
        x = projection.projection_simplex(params_obj)
        tau = (params_obj - x)[x > 0][0]  # x = max(θ − τ, 0): ν = τ, λ = max(τ − θ, 0)
        return (x, tau.reshape(1), torch.relu(tau - params_obj))

    T = optimality.projected_gradient_fixed_point(
        lambda x, th: 0.5 * ((x - th) ** 2).sum(), lambda v, _: projection.projection_simplex(v), step_size=0.5
    )

    @ol.custom_fixed_point(T, solve=linear_solve.gmres)
    def pg_solver(init, params_fun, params_proj):
        return projection.projection_simplex(params_fun)

    y = projection.projection_simplex(theta)
    J_ref = sparsemax_jacobian(y)
    J_kkt = torch.func.jacrev(lambda th: kkt_solver(None, th, None, None)[0])(theta)
    J_pg = torch.func.jacrev(lambda th: pg_solver(None, th, None))(theta)
    J_direct = torch.func.jacrev(projection.projection_simplex)(theta)  # autograd through the sort
    J_fwd = torch.func.jacfwd(lambda th: kkt_solver(None, th, None, None)[0])(theta)
    for J in (J_kkt, J_pg, J_direct, J_fwd):
        assert torch.allclose(J, J_ref, atol=1e-10)
    check_grad(lambda th: kkt_solver(None, th, None, None)[0], (theta.clone().requires_grad_(),), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Pytrees, batches, non-tensor arguments, aux, functional helpers.
# ---------------------------------------------------------------------------------------------


def test_pytree_solution_and_parameters():
    # x = {"a": (2,), "b": (3,)}; F(x, params) with params a dict of a tuple and a tensor.
    def F(x, params, mode):
        assert mode == "affine"
        (A, c), s = params["pair"], params["scale"]
        return {"a": A @ x["a"] - c, "b": s * x["b"] - x["a"].sum()}

    def solver(init, params, mode):
        (A, c), s = params["pair"], params["scale"]
        a = torch.linalg.solve(A, c)
        return {"a": a, "b": a.sum() / s * torch.ones_like(s)}

    A = torch.tensor([[3.0, 1.0], [0.5, 2.0]], dtype=D, requires_grad=True)
    c = torch.tensor([1.0, -1.0], dtype=D, requires_grad=True)
    s = torch.tensor([1.0, 2.0, 4.0], dtype=D, requires_grad=True)
    wrapped = ol.custom_root(F)(solver)
    out = wrapped(None, {"pair": (A, c), "scale": s}, "affine")
    assert set(out) == {"a", "b"}
    ref = solver(None, {"pair": (A, c), "scale": s}, "affine")  # autograd through the closed form
    g_impl = torch.autograd.grad(out["a"].sum() + (out["b"] ** 2).sum(), [A, c, s])
    g_ref = torch.autograd.grad(ref["a"].sum() + (ref["b"] ** 2).sum(), [A, c, s])
    for a, b in zip(g_impl, g_ref):
        assert torch.allclose(a, b, atol=1e-12)


def test_batched_problems_with_batch_dims_solver():
    # A batch of 4 ridge problems, F acts per problem; cg with batch_dims=1.
    X, y = t(4, 15, 3, seed=40), t(4, 15, seed=41)

    def F(w, lam, X, y):
        return (X.transpose(1, 2) @ (X @ w[..., None] - y[..., None]))[..., 0] + lam[:, None] * w

    def closed(lam, X, y):
        A = X.transpose(1, 2) @ X + lam[:, None, None] * torch.eye(3, dtype=D)
        return torch.linalg.solve(A, (X.transpose(1, 2) @ y[..., None])[..., 0])

    for solve in (functools.partial(linear_solve.cg, batch_dims=1), linear_solve.gmres,
                  functools.partial(linear_solve.dense, batch_dims=1)):
        batched = ol.custom_root(F, solve=solve)(lambda init, lam, X, y: closed(lam, X, y))
        lam = torch.tensor([0.1, 1.0, 3.0, 10.0], dtype=D, requires_grad=True)
        w = batched(None, lam, X, y)
        assert w.shape == (4, 3)
        J = torch.func.jacrev(lambda l: batched(None, l, X, y))(lam.detach())
        J_ref = torch.func.jacrev(lambda l: closed(l, X, y))(lam.detach())
        assert torch.allclose(J, J_ref, atol=1e-11)


def test_vmap_over_decorated_solver_and_jacrev():
    X, y = t(10, 3, seed=50), t(10, seed=51)
    ridge = make_ridge(linear_solve.dense)
    lams = torch.tensor([0.5, 1.0, 2.0], dtype=D)
    grads = torch.func.vmap(torch.func.grad(lambda l: ridge(None, l, X, y).sum()))(lams)
    ref = torch.stack([torch.func.grad(lambda l: ridge_closed(l, X, y).sum())(l) for l in lams])
    assert torch.allclose(grads, ref, atol=1e-12)


def test_non_tensor_and_integer_arguments_pass_through():
    seen = {}

    def F(x, theta, k, name="n", idx=None):
        return x - theta * k

    @ol.custom_root(F, solve=linear_solve.cg)
    def solver(init, theta, k, name="n", idx=None):
        seen["args"] = (k, name, idx.dtype)
        return theta * k

    theta = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
    x = solver(None, theta, 3, name="abc", idx=torch.tensor([0, 1]))
    assert seen["args"] == (3, "abc", torch.int64)
    (g,) = torch.autograd.grad(x.sum(), theta)
    assert torch.allclose(g, torch.full((2,), 3.0, dtype=D))


def test_has_aux_and_solver_runs_without_graph():
    def F(x, theta):
        return x - theta**2

    @ol.custom_root(F, has_aux=True, solve=linear_solve.cg)
    def solver(init, theta):
        assert not theta.requires_grad  # the solver sees detached data
        return theta**2, {"iters": 7}

    theta = torch.tensor([1.5, -2.0], dtype=D, requires_grad=True)
    x, aux = solver(torch.zeros(2, dtype=D), theta)
    assert aux == {"iters": 7}
    (g,) = torch.autograd.grad(x.sum(), theta)
    assert torch.allclose(g, 2 * theta.detach())


def test_root_vjp_and_root_jvp_functional():
    X, y = t(20, 4, seed=60), t(20, seed=61)
    lam = torch.tensor(0.9, dtype=D)
    w = ridge_closed(lam, X, y)
    v = t(4, seed=62)
    g_lam, g_X, g_y = ol.root_vjp(ridge_F, w, (lam, X, y), v, solve=linear_solve.cg)
    _, vjp_ref = torch.func.vjp(ridge_closed, lam, X, y)
    for a, b in zip((g_lam, g_X, g_y), vjp_ref(v)):
        assert torch.allclose(a, b, atol=1e-12)
    jv = ol.root_jvp(ridge_F, w, (lam, X, y), (torch.tensor(1.0, dtype=D), None, None))
    _, jv_ref = torch.func.jvp(lambda l: ridge_closed(l, X, y), (lam,), (torch.tensor(1.0, dtype=D),))
    assert torch.allclose(jv, jv_ref, atol=1e-12)
    # Non-float leaves give None.
    out = ol.root_vjp(lambda x, th, k: x - th * k, torch.ones(2, dtype=D), (torch.ones(2, dtype=D), 2), torch.ones(2, dtype=D))
    assert out[1] is None and torch.allclose(out[0], torch.full((2,), 2.0, dtype=D))


# ---------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------


def test_signature_mismatch_is_a_clear_error():
    def F(x, lam, X):
        return x

    with pytest.raises(TypeError, match="signatures of optimality_fun and the solver do not match"):
        ol.custom_root(F)(lambda init, lam, X, y: init)
    with pytest.raises(TypeError, match="first positional argument"):
        ol.custom_root(lambda: 0)(lambda init, lam: init)

    # Call-time check (solver with *args): F cannot take the extra argument.
    wrapped = ol.custom_root(F)(lambda init, *args: init)
    x = torch.zeros(2, dtype=D)
    with pytest.raises(TypeError, match="cannot be called with the solver's arguments"):
        wrapped(x, x, x, x)


def test_wrong_optimality_output_structure_and_nan_are_reported():
    @ol.custom_root(lambda x, th: (x - th, x), solve=linear_solve.cg)
    def solver(init, th):
        return th.clone()

    th = torch.ones(3, dtype=D, requires_grad=True)
    with pytest.raises(ValueError, match="same structure and shapes as the solution"):
        solver(None, th).sum().backward()

    @ol.custom_root(lambda x, th: x - th * float("nan"), solve=linear_solve.cg)
    def solver2(init, th):
        return th.clone()

    with pytest.raises(ValueError, match="non-finite"):
        solver2(None, th).sum().backward()

    with pytest.raises(TypeError, match="floating-point tensor"):
        ol.custom_root(lambda x, th: x)(lambda init, th: [1, 2])(None, th)


def test_singular_jacobian_is_not_silent():
    # F(x, θ) = 0·x − θ has a singular ∂F/∂x: the linear solve must raise, not return garbage.
    @ol.custom_root(lambda x, th: 0 * x + (x.detach() - th), solve=linear_solve.dense)
    def solver(init, th):
        return th.clone()

    th = torch.ones(3, dtype=D, requires_grad=True)
    with pytest.raises(linear_solve.LinearSolveError, match="singular"):
        solver(None, th).sum().backward()


# Found by fuzzing the implicit-differentiation module: a solver that leaves torch failed under
# torch.func with "Cannot access data pointer of Tensor that doesn't have storage", and a solver
# updating its initial guess in place changed the caller's tensor.


def _ridge_numpy():
    import numpy as np

    def F(w, lam, X, y):
        return X.T @ (X @ w - y) + lam * w

    @ol.custom_root(F, solve=linear_solve.cg)
    def ridge(init, lam, X, y):  # numpy: runs on plain tensors outside the torch.func transforms
        Xn, yn = X.numpy(), y.numpy()
        w = np.linalg.solve(Xn.T @ Xn + float(lam) * np.eye(Xn.shape[1]), Xn.T @ yn)
        return torch.from_numpy(w + 0 * init.numpy())

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 4, generator=g, dtype=D), torch.randn(20, generator=g, dtype=D)

    def closed(lam):
        return torch.linalg.solve(X.T @ X + lam * torch.eye(4, dtype=D), X.T @ y)

    return ridge, closed, X, y


def test_a_numpy_solver_works_under_grad_jvp_and_jacrev():
    ridge, closed, X, y = _ridge_numpy()
    init, lam = torch.zeros(4, dtype=D), torch.tensor(1.3, dtype=D)
    f = lambda l: ridge(init, l, X, y)  # noqa: E731
    torch.testing.assert_close(torch.func.grad(lambda l: f(l).sum())(lam),
                               torch.func.grad(lambda l: closed(l).sum())(lam))
    torch.testing.assert_close(torch.func.jvp(f, (lam,), (torch.ones((), dtype=D),))[1],
                               torch.func.jvp(closed, (lam,), (torch.ones((), dtype=D),))[1])
    torch.testing.assert_close(torch.func.jacrev(f)(lam), torch.func.jacrev(closed)(lam))
    with pytest.raises(RuntimeError, match="under torch.func.vmap"):
        torch.func.vmap(f)(torch.tensor([1.0, 2.0], dtype=D))


def test_the_callers_initial_guess_is_not_modified():
    @ol.custom_root(lambda x, th: x - th, solve=linear_solve.cg)
    def solver(init, th):
        init.add_(th)  # an in-place update of the guess
        return init

    init, th = torch.ones(3, dtype=D), torch.tensor([1.0, 3.0, 5.0], dtype=D)
    solver(init, th)
    assert init.tolist() == [1.0, 1.0, 1.0]
