"""The native (csrc/) QP kernel: against the PyTorch backend, the planted solution, finite
differences and torch.library.opcheck; every status path; shapes, dtypes and batch sizes."""

import pytest
import torch

import optlayers as ol
from optlayers._src.native.backend import native_status
from optlayers._src.qp.problem import canonicalize
from optlayers._src.tolerances import tolerances_for

ok, why = native_status()
pytestmark = pytest.mark.skipif(not ok, reason=f"native kernel unavailable: {why}")

SIZES = [(1, 10, 10, 3), (32, 20, 20, 5), (16, 50, 50, 10), (2, 120, 150, 30)]


@pytest.mark.parametrize("B,n,m,p", SIZES)
def test_matches_planted_and_torch_backend(B, n, m, p):
    P = ol.testing.random_qp(B, n, m, p, seed=B + n)
    nat = ol.solve_qp(*P.data(), backend="native", return_solution=True)
    tor = ol.solve_qp(*P.data(), backend="torch", return_solution=True)
    assert nat.backend == "native"
    assert bool((nat.status == ol.Status.SOLVED).all())
    for a, ref in ((nat.x, P.x), (nat.lam, P.lam), (nat.nu, P.nu)):
        assert float((a - ref).abs().max()) < 1e-10
    for a, b in ((nat.x, tor.x), (nat.lam, tor.lam), (nat.nu, tor.nu)):
        assert float((a - b).abs().max()) < 1e-10


def test_auto_prefers_native():
    P = ol.testing.random_qp(2, 5, 6, 1, seed=0)
    assert ol.solve_qp(*P.data(), return_solution=True).backend == "native"


@pytest.mark.parametrize("shared", [("G",), ("Q", "G", "A")])
def test_shared_data_and_gradient_sums(shared):
    P = ol.testing.random_qp(6, 8, 10, 2, seed=4, shared=shared)
    Q, q, G, h, A, b = (t.clone().requires_grad_() for t in P.data())
    x = ol.solve_qp(Q, q, G, h, A, b, backend="native")
    w = torch.randn_like(x)
    (x * w).sum().backward()
    assert float((x - P.x).abs().max()) < 1e-10
    # Reference: the torch backend with the same (shared) inputs.
    Q2, q2, G2, h2, A2, b2 = (t.clone().requires_grad_() for t in P.data())
    (ol.solve_qp(Q2, q2, G2, h2, A2, b2, backend="torch") * w).sum().backward()
    for a, c in ((Q, Q2), (q, q2), (G, G2), (h, h2), (A, A2), (b, b2)):
        assert a.grad.shape == a.shape
        assert torch.allclose(a.grad, c.grad, rtol=1e-8, atol=1e-10)


def test_gradients_vs_finite_differences():
    P = ol.testing.random_qp(2, 6, 8, 2, seed=11)
    S = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)
    q, G, h, A, b = (t.clone().requires_grad_() for t in P.data()[1:])

    def f(S, q, G, h, A, b):
        sol = ol.solve_qp(P.Q + 0.01 * (S + S.mT), q, G, h, A, b, backend="native", return_solution=True)
        return sol.x, sol.lam, sol.nu

    report = ol.testing.check_grad(f, (S, q, G, h, A, b), rtol=1e-6)
    assert report.worst < 1e-6


def test_forward_mode_matches_reverse():
    P = ol.testing.random_qp(3, 7, 9, 2, seed=5)
    v = torch.randn_like(P.h)
    u = torch.randn_like(P.x)

    def f(h):
        return ol.solve_qp(P.Q, P.q, P.G, h, P.A, P.b, backend="native")

    _, jv = torch.func.jvp(f, (P.h,), (v,))
    h = P.h.clone().requires_grad_()
    (f(h) * u).sum().backward()
    assert abs(float((u * jv).sum()) - float((h.grad * v).sum())) < 1e-10


def test_float32():
    P = ol.testing.random_qp(64, 12, 20, 3, seed=2, dtype=torch.float32)
    sol = ol.solve_qp(*P.data(), backend="native", return_solution=True)
    assert sol.x.dtype == torch.float32
    assert bool((sol.status == ol.Status.SOLVED).all())
    assert float((sol.x - P.x).abs().max()) < 1e-3


@pytest.mark.parametrize("B", [1, 7, 1000, 10_000])
def test_batch_sizes(B):
    P = ol.testing.random_qp(B, 4, 6, 1, seed=B, shared=("G", "A"))
    x = ol.solve_qp(*P.data(), backend="native")
    assert x.shape == (B, 4)
    assert float((x - P.x).abs().max()) < 1e-9


def test_equality_only_and_unconstrained():
    P = ol.testing.random_qp(3, 6, 0, 2, seed=1)
    x = ol.solve_qp(P.Q, P.q, A=P.A, b=P.b, backend="native")
    assert float((x - P.x).abs().max()) < 1e-12
    x = ol.solve_qp(P.Q, P.q, backend="native")
    ref = -torch.linalg.solve(P.Q, P.q.unsqueeze(-1)).squeeze(-1)
    assert float((x - ref).abs().max()) < 1e-12


def _infeasible_and_unbounded():
    d = torch.float64
    # problem 0: x ≤ −1 and x ≥ 1 (primal infeasible); problem 1: feasible box.
    G = torch.tensor([[1.0], [-1.0]], dtype=d)
    h = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=d)
    return torch.eye(1, dtype=d), torch.zeros(2, 1, dtype=d), G, h


def test_status_paths_raise_and_nan():
    Q, q, G, h = _infeasible_and_unbounded()
    with pytest.raises(ol.SolverError, match="batch index 0"):
        ol.solve_qp(Q, q, G, h, backend="native")
    sol = ol.solve_qp(Q, q, G, h, backend="native", on_failure="nan", return_solution=True)
    assert sol.status.tolist() == [ol.Status.PRIMAL_INFEASIBLE, ol.Status.SOLVED]
    assert bool(torch.isnan(sol.x[0]).all()) and bool(torch.isfinite(sol.x[1]).all())
    # Unbounded LP: min −x s.t. −x ≤ 0.
    d = torch.float64
    sol = ol.solve_qp(None, -torch.ones(1, dtype=d), -torch.ones(1, 1, dtype=d), torch.zeros(1, dtype=d),
                      backend="native", on_failure="nan", return_solution=True)
    assert int(sol.status) == ol.Status.DUAL_INFEASIBLE
    # Iteration limit without polish.
    P = ol.testing.random_qp(2, 10, 12, 2, seed=3)
    sol = ol.solve_qp(*P.data(), backend="native", max_iter=1, polish=False, on_failure="nan", return_solution=True)
    assert sol.status.tolist() == [ol.Status.MAX_ITER] * 2


def test_failed_problem_gives_zero_gradient_to_shared_inputs():
    Q, q, G, h = _infeasible_and_unbounded()
    h = h.clone().requires_grad_()
    q = q.clone().requires_grad_()
    sol = ol.solve_qp(Q, q, G, h, backend="native", on_failure="nan", return_solution=True)
    sol.x[1].sum().backward()
    assert bool(torch.isfinite(q.grad).all()) and bool(torch.isfinite(h.grad).all())
    assert float(q.grad[0].abs().max()) == 0.0


@pytest.mark.parametrize("keep_factor", [False, True])
def test_opcheck_qp_solve_and_kkt_solve(keep_factor):
    tl = tolerances_for(torch.float64)
    P = ol.testing.random_qp(3, 5, 6, 2, seed=9, shared=("G",))
    d = canonicalize(*P.data())
    args = (*(t.clone().requires_grad_() for t in d.tensors()), d.B, 1e-9, tl.infeasibility_tol, tl.kkt_reg,
            tl.polish_tol, tl.polish_start, tl.step_to_boundary, 50, True, keep_factor)
    torch.library.opcheck(torch.ops.optlayers.qp_solve.default, args)
    N = d.n + d.m + d.p
    mask = (P.active.to(torch.float64))
    rhs = torch.randn(3, N, dtype=torch.float64)
    torch.library.opcheck(torch.ops.optlayers.qp_kkt_solve.default,
                          (d.Q, d.G, d.A, mask, rhs, tl.kkt_reg), test_utils=("test_schema", "test_faketensor"))


def test_backward_with_kept_polish_factor_equals_refactoring():
    """qp_backward given the forward's polish LU (keep_factor) returns the same gradients as when it
    refactors the active-set KKT matrix itself (empty factor)."""
    tl = tolerances_for(torch.float64)
    P = ol.testing.random_qp(6, 30, 40, 5, seed=4, shared=("G",))
    d = canonicalize(*P.data())
    out = torch.ops.optlayers.qp_solve(*d.tensors(), d.B, 1e-9, tl.infeasibility_tol, tl.kkt_reg, tl.polish_tol,
                                       tl.polish_start, tl.step_to_boundary, 50, True, True)
    x, lam, nu, status, _, factor = out
    assert factor.shape == (6, (30 + 40 + 5) ** 2 + (30 + 40 + 5) + 40 + 1)
    assert bool((factor[:, -1] >= 0).all())  # every problem polished and kept its factor
    g = torch.Generator().manual_seed(0)
    gx, glam, gnu = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (x, lam, nu))
    kept = torch.ops.optlayers.qp_backward(*d.tensors(), x, lam, nu, status, factor, gx, glam, gnu, tl.kkt_reg)
    fresh = torch.ops.optlayers.qp_backward(*d.tensors(), x, lam, nu, status, factor.new_empty(0), gx, glam, gnu,
                                            tl.kkt_reg)
    for a, b in zip(kept, fresh):
        assert float((a - b).abs().max()) <= 1e-10 * (1 + float(b.abs().max()))


def test_auto_routing_limits_by_device():
    """"auto" sends CPU problems up to n = 300 and CUDA problems up to n = 64 to the native kernel
    (measured crossovers: optlayers/_src/native/backend.py), larger ones to the PyTorch backend."""
    from types import SimpleNamespace

    from optlayers._src.native.backend import CPU_AUTO_MAX_N, CUDA_AUTO_MAX_N, NativeBackend

    be = NativeBackend()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert be.auto_eligible(SimpleNamespace(n=CPU_AUTO_MAX_N, device=cpu))
    assert not be.auto_eligible(SimpleNamespace(n=CPU_AUTO_MAX_N + 1, device=cpu))
    assert be.auto_eligible(SimpleNamespace(n=50, device=cuda))
    assert not be.auto_eligible(SimpleNamespace(n=100, device=cuda))
    assert CUDA_AUTO_MAX_N < CPU_AUTO_MAX_N


def test_ops_take_an_empty_batch():
    """The raw op and its backward with batch 0 (no Python-side short cut): empty outputs, no crash
    (the op once divided by the batch size: SIGFPE)."""
    from optlayers._src.native import ops

    ok, why = native_status()
    if not ok:
        pytest.skip(why)
    P = ol.testing.random_qp(1, 4, 3, 1, dtype=torch.float64, seed=0)
    data = canonicalize(*(t[:0].clone().requires_grad_() for t in P.data()))
    x, lam, nu, status, iters = ops.solve(data, 1e-9, 50, True, differentiable=True)
    assert x.shape == (0, 4) and lam.shape == (0, 3) and nu.shape == (0, 1) and status.shape == (0,)
    x.sum().backward()
    assert data.q.grad is None or data.q.grad.shape == (0, 4)
    raw = torch.ops.optlayers.qp_solve(*ops._solve_args(data.detach(), 1e-9, 50, True, False))
    assert raw[0].shape == (0, 4)
