"""Linear solvers: accuracy vs. torch.linalg.solve, batches, pytrees, failure reporting,
differentiability, vmap."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optlayers as ol
from optlayers import linear_solve as ls

D = torch.float64
ALL = [ls.cg, ls.normal_cg, ls.gmres, ls.bicgstab, ls.dense]
GENERAL = [ls.normal_cg, ls.gmres, ls.bicgstab, ls.dense]


def spd(B, n, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(B, n, n, generator=g, dtype=D)
    return M @ M.transpose(1, 2) / n + 0.5 * torch.eye(n, dtype=D)


def nonsym(B, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, n, n, generator=g, dtype=D) / n**0.5 + 2.0 * torch.eye(n, dtype=D)


def bmv(A):
    return lambda v: (A @ v[..., None])[..., 0]


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_spd_batched_matches_direct(solver):
    A, b = spd(3, 25, 0), torch.randn(3, 25, dtype=D, generator=torch.Generator().manual_seed(1))
    x, info = solver(bmv(A), b, batch_dims=1, return_info=True)
    assert info.all_converged and info.converged.shape == (3,)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-9)


@pytest.mark.parametrize("solver", GENERAL, ids=lambda f: f.__name__)
def test_nonsymmetric_matches_direct(solver):
    A, b = nonsym(2, 30, 2), torch.randn(2, 30, dtype=D, generator=torch.Generator().manual_seed(3))
    x = solver(bmv(A), b, batch_dims=1)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-9)


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_pytree_rhs_and_ridge(solver):
    A = spd(1, 7, 4)[0]

    def mv(t):
        y = A @ torch.cat([t["u"], t["v"].flatten()])
        return {"u": y[:3], "v": y[3:].reshape(2, 2)}

    b = {"u": torch.arange(3, dtype=D), "v": torch.ones(2, 2, dtype=D)}
    x = solver(mv, b, ridge=0.3)
    ref = torch.linalg.solve(A + 0.3 * torch.eye(7, dtype=D), torch.cat([b["u"], b["v"].flatten()]))
    assert torch.allclose(torch.cat([x["u"], x["v"].flatten()]), ref, atol=1e-9)


def test_batch_problems_converge_independently():
    # Problem 0 is trivially conditioned, problem 1 is not: each gets its own step sizes.
    A = torch.stack([torch.eye(20, dtype=D), torch.diag(torch.logspace(0, 3, 20, dtype=D))])
    b = torch.ones(2, 20, dtype=D)
    x, info = ls.cg(bmv(A), b, batch_dims=1, return_info=True)
    assert info.all_converged
    assert torch.allclose(x, torch.linalg.solve(A, b), rtol=1e-9)


@pytest.mark.parametrize("solver", [ls.cg, ls.gmres, ls.bicgstab, ls.normal_cg], ids=lambda f: f.__name__)
def test_non_convergence_warns_or_raises_with_residual(solver):
    A, b = spd(2, 40, 5), torch.ones(2, 40, dtype=D)
    A = A @ torch.diag(torch.logspace(0, 4, 40, dtype=D)) @ A  # ill-conditioned SPD
    with pytest.warns(ls.LinearSolveWarning, match="did not converge.*relative residual"):
        x, info = solver(bmv(A), b, batch_dims=1, maxiter=3, return_info=True)
    assert not info.all_converged and torch.isfinite(x).all()
    with pytest.raises(ls.LinearSolveError, match="did not converge") as e:
        solver(bmv(A), b, batch_dims=1, maxiter=3, on_failure="raise")
    assert e.value.info.residual_norm.shape == (2,)


def test_nan_matvec_always_raises():
    with pytest.raises(ls.LinearSolveError, match="non-finite"):
        ls.gmres(lambda v: v * float("nan"), torch.ones(4, dtype=D))


def test_dense_singular_raises_and_near_singular_warns():
    A = torch.zeros(2, 4, 4, dtype=D)
    A[0] = torch.eye(4, dtype=D)
    with pytest.raises(ls.LinearSolveError, match="singular"):
        ls.dense(bmv(A), torch.ones(2, 4, dtype=D), batch_dims=1)
    # A numerically singular system: LU is backward stable (small residual) but the solution
    # is garbage; the condition-number check reports it.
    B = torch.tensor([[1.0, 1.0], [1.0, 1.0 + 1e-15]], dtype=D)
    with pytest.warns(ls.LinearSolveWarning, match="numerically singular"):
        ls.dense(lambda v: B @ v, torch.tensor([1.0, -1.0], dtype=D))
    with pytest.raises(ls.LinearSolveError, match="numerically singular"):
        ls.dense(lambda v: B @ v, torch.tensor([1.0, -1.0], dtype=D), on_failure="raise")


def test_argument_errors_name_the_argument():
    b = torch.ones(3, dtype=D)
    with pytest.raises(ValueError, match="on_failure"):
        ls.cg(lambda v: v, b, on_failure="ignore")
    with pytest.raises(ValueError, match="maxiter"):
        ls.cg(lambda v: v, b, maxiter=-1)
    with pytest.raises(TypeError, match="matvec must be callable"):
        ls.gmres(3, b)
    with pytest.raises(ValueError, match="output of matvec"):
        ls.cg(lambda v: v[:2], b)
    with pytest.raises(ValueError, match="init"):
        ls.cg(lambda v: v, b, init=torch.ones(4, dtype=D))
    with pytest.raises(ValueError, match="batch shape"):
        ls.cg(lambda v: v, (torch.ones(2, 3, dtype=D), torch.ones(3, 3, dtype=D)), batch_dims=1)
    with pytest.raises(TypeError, match="floating point"):
        ls.cg(lambda v: v, torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="restart"):
        ls.gmres(lambda v: v, b, restart=0)


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_solves_are_differentiable(solver):
    # x(A, b) = A⁻¹b with A = (M + Mᵀ)/2 symmetric (cg only solves symmetric systems):
    # gradients through the iterations match those of torch.linalg.solve.
    A0 = spd(1, 6, 6)[0]
    b0 = torch.linspace(-1, 1, 6, dtype=D)
    M, b = A0.clone().requires_grad_(), b0.clone().requires_grad_()
    x = solver(lambda v: (M + M.T) @ v / 2, b)
    g = torch.autograd.grad((x**2).sum(), [M, b])
    M2, b2 = A0.clone().requires_grad_(), b0.clone().requires_grad_()
    g_ref = torch.autograd.grad((torch.linalg.solve((M2 + M2.T) / 2, b2) ** 2).sum(), [M2, b2])
    for u, v in zip(g, g_ref):
        assert torch.allclose(u, v, atol=1e-7)


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_under_vmap(solver):
    A = spd(3, 5, 7)
    b = torch.ones(3, 5, dtype=D)
    x = torch.func.vmap(lambda M, r: solver(lambda v: M @ v, r, maxiter=60))(A, b)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-9)


def test_float32_default_tolerance():
    A, b = spd(1, 10, 8)[0].float(), torch.ones(10)
    x, info = ls.cg(lambda v: A @ v, b, return_info=True)
    assert x.dtype == torch.float32 and info.all_converged
    # What the float32 default tolerance (1e-5) promises, checked in float64: the true residual
    # within 2·tol·‖b‖ (the recurrence's residual drifts from it by rounding, ~n·eps·‖A‖‖x‖), and
    # so a relative forward error within cond(A)·2·tol. (An elementwise rtol would fail on small
    # components: CG's rounding differs with the BLAS's summation order.)
    A64, b64, x64 = A.double(), b.double(), x.double()
    x_star = torch.linalg.solve(A64, b64)
    assert torch.linalg.norm(b64 - A64 @ x64) <= 2e-5 * torch.linalg.norm(b64)
    cond = torch.linalg.cond(A64)
    assert torch.linalg.norm(x64 - x_star) <= cond * 2e-5 * torch.linalg.norm(x_star)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000), use_init=st.booleans())
def test_property_cg_gmres_solve_random_spd(n, seed, use_init):
    A = spd(1, n, seed)[0]
    b = torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(seed + 1))
    init = torch.ones(n, dtype=D) if use_init else None
    ref = torch.linalg.solve(A, b)
    # GMRES(2) converges slowly (κ up to ~15 here): give it a larger budget than the default.
    for solver in (ls.cg, ls.gmres, functools.partial(ls.gmres, restart=2, maxiter=2000), ls.bicgstab):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ls.LinearSolveWarning)
            x = solver(lambda v: A @ v, b, init=init)
        assert torch.allclose(x, ref, atol=1e-8 * (1 + float(ref.abs().max())))


def test_materialize():
    A = nonsym(2, 4, 9)
    M = ls.materialize(bmv(A), torch.zeros(2, 4, dtype=D), batch_dims=1)
    assert torch.equal(M, A)
    M2 = ls.materialize(bmv(A), torch.zeros(2, 4, dtype=D), batch_dims=1, vectorize=False)
    assert torch.equal(M2, A)


# GMRES breakdowns (found by fuzzing custom_fixed_point's jacfwd): when a problem's Krylov space
# is exhausted inside a restart cycle — its residual below the threshold, or the next Arnoldi vector
# rounding noise — the cycle's later columns were built from that noise (under vmap, and in a batch
# whose other problems go on) and y = R⁻¹g exploded: gmres(2I, [1, 1, 0, …]) was −1.3e30 under vmap.


def test_gmres_happy_breakdown_under_vmap():
    b = torch.tensor([[1.0, 1.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 3.0, 0, 0, 0]], dtype=torch.float64)
    x = torch.func.vmap(lambda bb: ol.linear_solve.gmres(lambda v: 2 * v, bb))(b)
    torch.testing.assert_close(x, b / 2, rtol=0, atol=1e-14)


def test_gmres_batch_with_one_problem_converging_early():
    torch.manual_seed(0)
    M = torch.randn(7, 7, dtype=torch.float64) + 4 * torch.eye(7, dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, 1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    A = torch.stack([2 * torch.eye(7, dtype=torch.float64), M])
    x = ol.linear_solve.gmres(lambda v: (A @ v[..., None])[..., 0], b, batch_dims=1)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=0, atol=1e-10)


def test_gmres_zero_rhs_gives_zero_whatever_the_guess():
    x = ol.linear_solve.gmres(lambda v: 2 * v, torch.zeros(3, dtype=torch.float64),
                              init=torch.ones(3, dtype=torch.float64))
    assert bool((x == 0).all())


def test_jacfwd_of_a_projected_gradient_fixed_point_with_gmres():
    P, O = ol.projection, ol.optimality
    torch.manual_seed(1)
    theta = 3 * torch.randn(7, dtype=torch.float64)
    T = O.projected_gradient_fixed_point(lambda x, th: 0.5 * ((x - th) ** 2).sum(), P.projection_simplex,
                                         step_size=1.0)

    @ol.custom_fixed_point(T)  # default solve: gmres
    def proj(init, th, v):
        return P.projection_simplex(th, v)

    v = torch.tensor(1.0, dtype=torch.float64)
    ref = torch.func.jacfwd(P.projection_simplex)(theta)
    for jac in (torch.func.jacfwd, torch.func.jacrev):
        torch.testing.assert_close(jac(lambda t: proj(None, t, v))(theta), ref, rtol=0, atol=1e-12)
