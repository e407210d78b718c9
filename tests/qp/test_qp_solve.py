"""Forward accuracy of ``ol.solve_qp``: planted solutions, CVXPY + Clarabel, problem classes."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import optlayers as ol
from qp_oracles import cvxpy_solve_batch, kkt_reference, kkt_residuals, mv

F64 = torch.float64
# float64 target (issue #2): solution error ≤ 1e-10 against the planted solution.
PLANTED_TOL = 1e-10
# Agreement with Clarabel run at 1e-10 tolerances (its own error is ~1e-10 on these problems).
CVXPY_TOL = 1e-8


def _solve(solve, P, **kw):
    return solve(*P.data(), return_solution=True, **kw)


def _assert_planted(sol, P, tol=PLANTED_TOL):
    assert bool((sol.status == ol.Status.SOLVED).all()), sol.status
    for name in ("x", "lam", "nu"):
        err = float((getattr(sol, name) - getattr(P, name)).abs().max()) if getattr(P, name).numel() else 0.0
        assert err <= tol, f"{name}: max error {err:.3e} vs planted > {tol:.0e}"


@pytest.mark.parametrize(
    "B,n,m,p",
    [(1, 10, 10, 3), (32, 20, 20, 5), (128, 50, 50, 10), (8, 200, 200, 50)],
    ids=["tiny", "small", "medium", "large"],
)
def test_benchmark_sizes_match_planted(backend, B, n, m, p):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(B, n, m, p, seed=B + n)
    sol = _solve(solve, P)
    assert sol.x.shape == (B, n) and sol.lam.shape == (B, m) and sol.nu.shape == (B, p)
    assert sol.x.dtype == F64 and sol.status.shape == (B,)
    _assert_planted(sol, P)


def test_ill_conditioned_q_still_accurate(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(8, 30, 30, 5, cond=1e6, seed=3)
    sol = _solve(solve, P)
    assert bool((sol.status == ol.Status.SOLVED).all())
    # x = Q⁻¹(...) may amplify rounding by up to cond(Q) ‖x‖ u ≈ 1e6·1e-16 — still far below 1e-10.
    _assert_planted(sol, P)


def test_matches_cvxpy_clarabel_on_random_problems(backend):
    """Problems that are *not* planted (random data, feasible by construction, bounded by a box),
    so the only reference is an independent solver."""
    solve = partial(ol.solve_qp, backend=backend)
    g = torch.Generator().manual_seed(11)
    B, n, m, p = 3, 8, 6, 2
    M = torch.randn(B, n, n, generator=g, dtype=F64)
    Q = M @ M.mT / n + 0.1 * torch.eye(n, dtype=F64)
    Q = 0.5 * (Q + Q.mT)
    q = 3 * torch.randn(B, n, generator=g, dtype=F64)
    G0 = torch.randn(B, m, n, generator=g, dtype=F64)
    box = torch.cat([torch.eye(n, dtype=F64), -torch.eye(n, dtype=F64)]).expand(B, -1, -1)
    G = torch.cat([G0, box], dim=-2)
    x0 = 0.3 * torch.randn(B, n, generator=g, dtype=F64)
    h = mv(G, x0) + torch.rand(B, m + 2 * n, generator=g, dtype=F64) * 0.5
    A = torch.randn(B, p, n, generator=g, dtype=F64)
    b = mv(A, x0)
    sol = solve(Q, q, G, h, A, b, return_solution=True)
    x_ref, lam_ref, nu_ref = cvxpy_solve_batch(Q, q, G, h, A, b)
    assert int((lam_ref > 1e-6).sum()) >= B  # the constraints really bind somewhere
    for name, ours, ref in (("x", sol.x, x_ref), ("lam", sol.lam, lam_ref), ("nu", sol.nu, nu_ref)):
        err = float((ours - ref).abs().max())
        assert err <= CVXPY_TOL * (1 + float(ref.abs().max())), f"{name} differs from Clarabel by {err:.3e}"


def test_cvxpy_dual_sign_convention_matches_planted(backend):
    """Our Lagrangian is ½xᵀQx+qᵀx+λᵀ(Gx−h)+νᵀ(Ax−b): CVXPY's duals (same convention) and ours
    must both equal the planted (λ*, ν*) — including the sign of ν."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(2, 6, 7, 3, seed=5)
    sol = _solve(solve, P)
    x_ref, lam_ref, nu_ref = cvxpy_solve_batch(*P.data())
    assert float((nu_ref - P.nu).abs().max()) <= 1e-8
    assert float((lam_ref - P.lam).abs().max()) <= 1e-8
    assert float((sol.nu - nu_ref).abs().max()) <= 1e-8
    assert float((sol.lam - lam_ref).abs().max()) <= 1e-8
    res = kkt_residuals(*P.data(), sol.x, sol.lam, sol.nu)
    assert max(res.values()) <= 1e-12, res


# ----------------------------------------------------------------------------- problem classes


@pytest.mark.parametrize("n,m,p", [(5, 10, 0), (8, 12, 3), (10, 10, 2)], ids=["p0", "p3", "m=n"])
@pytest.mark.parametrize("q_zero", ["none", "zeros"])
def test_lp_matches_planted_vertex(backend, n, m, p, q_zero):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(4, n, m, p, lp=True, seed=n + m + p)
    Q = None if q_zero == "none" else torch.zeros(n, n, dtype=F64)
    sol = solve(Q, P.q, P.G, P.h, P.A, P.b, return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [ol.Status.SOLVED] * 4, f"LP statuses {sol.status.tolist()}"
    _assert_planted(sol, P)


def test_lp_matches_cvxpy(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(2, 6, 9, 2, lp=True, seed=21)
    sol = solve(None, P.q, P.G, P.h, P.A, P.b, return_solution=True, on_failure="nan")
    x_ref, lam_ref, nu_ref = cvxpy_solve_batch(torch.zeros(6, 6, dtype=F64), P.q, P.G, P.h, P.A, P.b)
    assert sol.status.tolist() == [0, 0]
    assert float((sol.x - x_ref).abs().max()) <= CVXPY_TOL * (1 + float(x_ref.abs().max()))
    assert float((sol.lam - lam_ref).abs().max()) <= CVXPY_TOL * (1 + float(lam_ref.abs().max()))


def test_equality_only_closed_form(backend):
    solve = partial(ol.solve_qp, backend=backend)
    B, n, p = 5, 7, 3
    P = ol.testing.random_qp(B, n, 1, p, seed=4)
    Q, q, A, b = P.Q, P.q, P.A, P.b
    sol = solve(Q, q, A=A, b=b, return_solution=True)
    K = torch.cat([torch.cat([Q, A.mT], -1), torch.cat([A, torch.zeros(B, p, p, dtype=F64)], -1)], -2)
    ref = torch.linalg.solve(K, torch.cat([-q, b], -1))
    assert sol.lam.shape == (B, 0)
    assert float((sol.x - ref[:, :n]).abs().max()) <= 1e-12
    assert float((sol.nu - ref[:, n:]).abs().max()) <= 1e-12
    assert sol.status.tolist() == [0] * B


def test_inequality_only_matches_planted(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(6, 12, 15, 0, active_fraction=0.6, seed=8)
    sol = solve(P.Q, P.q, P.G, P.h, return_solution=True)
    assert sol.nu.shape == (6, 0)
    _assert_planted(sol, P)


def test_unconstrained_strictly_convex_closed_form(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp((2, 3), 6, 1, 0, cond=100.0, seed=9)
    sol = solve(P.Q, P.q, return_solution=True)
    ref = -torch.linalg.solve(P.Q, P.q)
    assert sol.x.shape == (2, 3, 6) and sol.lam.shape == (2, 3, 0) and sol.nu.shape == (2, 3, 0)
    assert float((sol.x - ref).abs().max()) <= 1e-12
    assert bool((sol.status == 0).all())


def test_psd_singular_q_with_bounded_solution(backend):
    """Q has a 3-dimensional null space; the constraints bound the problem. The planted point is
    still the unique solution (the active constraints fix the null-space directions), so it must
    be matched — and the KKT conditions must hold."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(4, 8, 10, 2, active_fraction=0.6, seed=12)
    ev, U = torch.linalg.eigh(P.Q)
    ev[..., :3] = 0.0
    Qs = (U * ev.unsqueeze(-2)) @ U.mT
    Qs = 0.5 * (Qs + Qs.mT)
    q = -(mv(Qs, P.x) + mv(P.G.mT, P.lam) + mv(P.A.mT, P.nu))
    sol = solve(Qs, q, P.G, P.h, P.A, P.b, return_solution=True)
    assert bool((sol.status == 0).all())
    res = kkt_residuals(Qs, q, P.G, P.h, P.A, P.b, sol.x, sol.lam, sol.nu)
    assert max(res.values()) <= 1e-10, res
    # n − p = 6 ≥ 6 active rows make x* unique despite the null space of Q.
    assert float((sol.x - P.x).abs().max()) <= 1e-9


def test_psd_singular_q_matches_cvxpy(backend):
    solve = partial(ol.solve_qp, backend=backend)
    g = torch.Generator().manual_seed(13)
    n = 5
    M = torch.randn(n, 2, generator=g, dtype=F64)
    Q = M @ M.T  # rank 2
    q = torch.randn(n, generator=g, dtype=F64)
    G = torch.cat([torch.eye(n, dtype=F64), -torch.eye(n, dtype=F64)])  # box |x_i| ≤ 1
    h = torch.ones(2 * n, dtype=F64)
    sol = solve(Q, q, G, h, return_solution=True)
    x_ref, lam_ref, _ = cvxpy_solve_batch(Q, q, G, h, torch.zeros(0, n, dtype=F64), torch.zeros(0, dtype=F64))
    assert int(sol.status) == 0
    obj = lambda x: float(0.5 * x @ Q @ x + q @ x)  # noqa: E731
    assert abs(obj(sol.x) - obj(x_ref)) <= 1e-9 * (1 + abs(obj(x_ref)))
    assert float((sol.x - x_ref).abs().max()) <= 1e-7


def test_max_iter_polish_rescue_is_correct(backend):
    """With max_iter=1 the active-set polish may still certify some problems as SOLVED; every
    problem it marks SOLVED must really be solved."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(16, 8, 8, 2, seed=14)
    sol = _solve(solve, P, max_iter=1, on_failure="nan")
    ok = sol.status == ol.Status.SOLVED
    assert bool(((sol.status == ol.Status.MAX_ITER) | ok).all())
    if bool(ok.any()):
        assert float((sol.x[ok] - P.x[ok]).abs().max()) <= PLANTED_TOL


# ----------------------------------------------------------------------------- float32


@pytest.mark.parametrize("B,n,m,p", [(1, 10, 10, 3), (16, 20, 20, 5), (8, 20, 20, 0)])
def test_float32_solves_with_documented_tolerance(backend, B, n, m, p):
    """float32: every problem SOLVED, output float32, and x, λ, ν within 1e-3·(1 + ‖·‖_∞) of the
    planted solution (the IPM stops at relative residual 1e-5; the polish refines further, so
    1e-3 leaves room for cond(K)·1e-7 amplification on these well-conditioned problems)."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(B, n, m, p, seed=n + p, dtype=torch.float32)
    sol = _solve(solve, P, on_failure="nan")
    assert sol.x.dtype == torch.float32 and sol.lam.dtype == torch.float32
    assert sol.status.tolist() == [0] * B, f"float32 statuses {sol.status.tolist()}"
    for name in ("x", "lam", "nu"):
        ref = getattr(P, name)
        if ref.numel():
            err = float((getattr(sol, name) - ref).abs().max())
            assert err <= 1e-3 * (1 + float(ref.abs().max())), f"float32 {name} error {err:.2e}"


def test_float32_lp(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(4, 6, 10, 0, lp=True, seed=3, dtype=torch.float32)
    sol = solve(None, P.q, P.G, P.h, return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [0] * 4
    assert float((sol.x - P.x).abs().max()) <= 1e-3 * (1 + float(P.x.abs().max()))


def test_no_grad_inputs_give_plain_tensors_and_iterations(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(3, 6, 6, 2, seed=1)
    sol = _solve(solve, P)
    assert not sol.x.requires_grad
    assert sol.iterations.shape == (3,) and bool((sol.iterations >= 1).all())
    assert sol.backend == backend
    assert bool(sol.ok.all())
    x = solve(*P.data())
    assert torch.equal(x, sol.x)


# ----------------------------------------------------------------------------- (near-)degenerate


@pytest.mark.parametrize("shift", [0.0, 1e-6, -1e-6, 1e-4, -1e-4])
def test_degenerate_and_near_degenerate_problems_solve(backend, shift):
    """Vertex solutions (n − p active rows) where row 0 is weakly active (λ₀ = 0, slack₀ = 0),
    then h₀ moved by ``shift``. Loosening (shift > 0) keeps x*; tightening makes row 0 strictly
    active with the other rows unchanged, so the fixed-active-set closed form is exact. All are
    ordinary, well-posed QPs (cond(Q) = 10) and must be SOLVED to 1e-9."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(12, 6, 8, 2, seed=31)
    lam = P.lam.clone()
    lam[:, 0] = 0.0
    q = -(mv(P.Q, P.x) + mv(P.G.mT, lam) + mv(P.A.mT, P.nu))
    h = P.h.clone()
    h[:, 0] += shift
    sol = solve(P.Q, q, P.G, h, P.A, P.b, return_solution=True, on_failure="nan")
    if shift >= 0:
        x_ref = P.x
    else:
        x_ref, lam_ref, _ = kkt_reference(P.Q, q, P.G, h, P.A, P.b, P.active[0])
        assert bool((lam_ref >= -1e-12).all())
    err = (sol.x - x_ref).abs().amax(-1)
    bad = torch.nonzero((sol.status != 0) | ~(err <= 1e-9)).flatten().tolist()
    assert not bad, (
        f"problems {bad}: status {sol.status[bad].tolist()}, "
        f"x error {[f'{e:.1e}' for e in err[bad].tolist()]}"
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vertex_solutions_are_not_mistaken_for_a_stall(backend, dtype):
    """Planted problems whose solution is a vertex (here n = 50 active rows of m = 100) where the
    gap term of the merit, relative to 1 + |f(x)|, rises for several iterations while f(x) moves
    towards a small optimum although sᵀz falls geometrically. Before the stall rule also counted
    progress in sᵀz, problems 6 and 214 of this batch (float64) and more in float32 stopped as
    MAX_ITER after 5 iterations on both backends."""
    P = ol.testing.random_qp(256, 50, 100, 0, seed=0, dtype=dtype)
    sol = ol.solve_qp(*P.data(), backend=backend, return_solution=True, on_failure="nan")
    assert int((sol.status != ol.Status.SOLVED).sum()) == 0, (sol.status != 0).nonzero().flatten().tolist()
    tol = 1e-8 if dtype == torch.float64 else 5e-3
    assert float((sol.x - P.x).abs().max()) <= tol


def test_torch_backend_early_polish_saves_iterations_and_rescues_lps():
    """The PyTorch backend tries the polish once a problem's merit is below polish_start (as the
    native kernel does): fewer interior-point iterations at unchanged accuracy, and the LPs with
    equalities whose interior point stalls near 1e-7 (220 of these 256 without any polish) are
    finished exactly — before the early attempt one of them ended as MAX_ITER."""
    P = ol.testing.random_qp(256, 30, 60, 5, lp=True, seed=2)
    sol = ol.solve_qp(*P.data(), backend="torch", return_solution=True, on_failure="nan")
    assert bool((sol.status == ol.Status.SOLVED).all())
    assert float((sol.x - P.x).abs().max()) <= 1e-9
    Pq = ol.testing.random_qp(64, 20, 40, 0, seed=1)
    early = ol.solve_qp(*Pq.data(), backend="torch", return_solution=True)
    plain = ol.solve_qp(*Pq.data(), backend="torch", return_solution=True, polish=False, on_failure="nan")
    assert float(early.iterations.float().mean()) < float(plain.iterations.float().mean()) - 1.0
    assert float((early.x - Pq.x).abs().max()) <= PLANTED_TOL
