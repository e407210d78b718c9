"""The CUDA small-problem kernel (csrc/optlayers/qp_small.h: one thread per problem, n ≤ 16, p = 0),
run on the host.

``OPTLAYERS_CPU_SMALL=1`` makes the CPU op solve eligible batches with that same code (then the
serial path for the problems it leaves, as the CUDA op falls back to its warp kernel), ``=2`` without
the fallback (status −1 marks what it leaves), both stage by stage over the batch (the CUDA kernel's
staged schedule); ``=3`` chains the stages per problem (its default fused schedule), no fallback;
unset: the CPU's own paths. So the GPU's default
kernel for robotics-sized problems is checked here, without a GPU: against the serial path and the
planted solutions, statuses of mixed batches, gradients, the backward KKT solve, and which problems
it finishes itself (all well-posed and all degenerate grasp QPs).
"""

import pytest
import torch

import optlayers as ol
from optlayers._src.native.backend import native_status
from optlayers._src.tolerances import tolerances_for

from qp_cases import grasp_batch, mixed_batch, random_family, raw_qp_solve

ok, why = native_status()
pytestmark = pytest.mark.skipif(not ok, reason=f"native kernel unavailable: {why}")

S = ol.Status
RETRY = -1


def _solve(mode: str, monkeypatch, *args, **kw):
    """mode: "small" (small kernel + serial fallback), "bare" (no fallback), "serial"."""
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", "0")
    monkeypatch.setenv("OPTLAYERS_CPU_SMALL", {"small": "1", "bare": "2", "serial": "0"}[mode])
    kw.setdefault("on_failure", "nan")
    return ol.solve_qp(*args, backend="native", return_solution=True, **kw)


def _raw_status(monkeypatch, Q, q, G, h):
    """x, λ, status, iterations straight from the op without the fallback (−1 survives)."""
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", "0")
    monkeypatch.setenv("OPTLAYERS_CPU_SMALL", "2")
    return raw_qp_solve(Q, q, G, h)


@pytest.mark.parametrize("B,n,m", [(1, 1, 2), (7, 3, 5), (9, 4, 9), (12, 8, 20), (10, 12, 41), (6, 13, 30), (8, 16, 55),
                                   (3, 16, 128)])
@pytest.mark.parametrize("shared", [(), ("Q", "G")])
def test_small_matches_serial_and_planted(B, n, m, shared, monkeypatch):
    P = ol.testing.random_qp(B, n, m, 0, seed=B + n + m, shared=shared)
    small = _solve("small", monkeypatch, *P.data()[:4])
    serial = _solve("serial", monkeypatch, *P.data()[:4])
    assert small.status.tolist() == [S.SOLVED] * B
    for a, b, ref in ((small.x, serial.x, P.x), (small.lam, serial.lam, P.lam)):
        assert float((a - ref).abs().max()) < 1e-10
        assert float((a - b).abs().max()) < 1e-10
    # Finished by the small kernel itself (no fallback), in the serial path's iteration count.
    x, lam, status, iters = _raw_status(monkeypatch, *P.data()[:4])
    assert status.tolist() == [S.SOLVED] * B
    assert iters.tolist() == serial.iterations.tolist()


def test_small_float32(monkeypatch):
    P = ol.testing.random_qp(40, 12, 20, 0, seed=9, dtype=torch.float32, shared=("G",))
    small = _solve("small", monkeypatch, *P.data()[:4])
    serial = _solve("serial", monkeypatch, *P.data()[:4])
    assert small.status.tolist() == [S.SOLVED] * 40
    assert float((small.x - P.x).abs().max()) < 1e-4
    assert float((small.x - serial.x).abs().max()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_leaves_infeasible_and_unbounded_to_the_fallback(dtype, monkeypatch):
    Q, q, G, h = mixed_batch(dtype)
    _, _, status, _ = _raw_status(monkeypatch, Q, q, G, h)
    want = [S.SOLVED] * 10
    want[3] = want[6] = RETRY
    assert status.tolist() == want
    small = _solve("small", monkeypatch, Q, q, G, h)
    serial = _solve("serial", monkeypatch, Q, q, G, h)
    want[3], want[6] = S.PRIMAL_INFEASIBLE, S.DUAL_INFEASIBLE
    assert small.status.tolist() == want == serial.status.tolist()
    ok = small.status == S.SOLVED
    assert float((small.x[ok] - serial.x[ok]).abs().max()) < (1e-10 if dtype == torch.float64 else 1e-5)


def test_small_iteration_limit_and_no_polish(monkeypatch):
    P = ol.testing.random_qp(11, 10, 12, 0, seed=3)
    sol = _solve("small", monkeypatch, *P.data()[:4], max_iter=1, polish=False)
    assert sol.status.tolist() == [S.MAX_ITER] * 11  # left to the fallback, which reports the limit
    full = _solve("small", monkeypatch, *P.data()[:4], polish=False)
    ser = _solve("serial", monkeypatch, *P.data()[:4], polish=False)
    assert full.status.tolist() == [S.SOLVED] * 11
    assert full.iterations.tolist() == ser.iterations.tolist()
    assert float((full.x - ser.x).abs().max()) < 1e-8


@pytest.mark.parametrize("kind", range(6))
def test_small_agrees_with_serial_on_random_families(kind, monkeypatch):
    for seed in range(kind, 60, 6):
        data = random_family(kind, seed, 1 + seed % 16, 0)  # the small kernel's sizes: n ≤ 16, p = 0
        a = _solve("small", monkeypatch, *data)
        b = _solve("serial", monkeypatch, *data)
        assert a.status.tolist() == b.status.tolist(), (kind, seed)
        ok = a.status == S.SOLVED
        if bool(ok.any()):
            assert float((a.x[ok] - b.x[ok]).abs().max()) <= 1e-6 * (1 + float(b.x[ok].abs().max())), (kind, seed)


def test_small_finishes_grasp_qps_itself(monkeypatch):
    """Real contact-force QPs (shared G, many with zero-force contacts: dependent active rows, where
    the multiplier-shifted polish solve is needed): every one is finished by the small kernel,
    and equals the serial path's x."""
    Q, q, G, h = grasp_batch()
    x, lam, status, _ = _raw_status(monkeypatch, Q, q, G, h)
    assert status.tolist() == [S.SOLVED] * Q.shape[0]
    serial = _solve("serial", monkeypatch, Q, q, G, h)
    assert float((x - serial.x).abs().max()) < 1e-10
    # λ may differ where the active rows are dependent; both must satisfy the KKT conditions.
    for lam_ in (lam, serial.lam):
        st = torch.einsum("bij,bj->bi", Q, x) + q + lam_ @ G
        assert float(st.abs().max()) < 1e-9
        assert float(lam_.min()) >= 0
        assert float((lam_ * (h - x @ G.mT)).abs().max()) < 1e-9


def _kkt_errors(Q, q, G, h, x, lam):
    """Stationarity ‖Qx + q + Gᵀλ‖∞, min λ, max violation and max |λ ∘ slack| (float64)."""
    Q, q, G, h, x, lam = (t.double() for t in (Q, q, G, h, x, lam))
    slack = h - x @ G.mT
    st = torch.einsum("bij,bj->bi", Q, x) + q + lam @ G
    return float(st.abs().max()), float(lam.min()), float((-slack).max()), float((lam * slack).abs().max())


def test_small_repairs_multipliers_of_degenerate_grasp_qps(monkeypatch):
    """K = 5 contacts (n = 15, m = 51), float64: a few QPs have dependent active rows where both
    polish solves give wrong-signed multipliers; the small kernel's NNLS repair (qp_ipm.h's
    repair_multipliers, in qp_small.h) finishes them itself (problem 442 of this batch went to the
    fallback before it existed), with the serial path's x and valid multipliers."""
    Q, q, G, h = grasp_batch(128, contacts=5)
    x, lam, status, _ = _raw_status(monkeypatch, Q, q, G, h)
    assert status.tolist() == [S.SOLVED] * Q.shape[0]
    serial = _solve("serial", monkeypatch, Q, q, G, h)
    assert float((x - serial.x).abs().max()) < 1e-9
    stat, lmin, viol, comp = _kkt_errors(Q, q, G, h, x, lam)
    assert stat < 1e-9 and lmin >= 0 and viol < 1e-9 and comp < 1e-9


def test_small_finishes_float32_grasp_qps_itself(monkeypatch):
    """float32 grasp QPs: the interior point converges to 1e-5, and on ill-determined ones (a wrench
    the grasp can barely resist: all forces ~1e-3) the polish's active-set guess is wrong and its
    corrections do not recover it. The serial path then keeps the converged iterate (SOLVED), and so
    does the small kernel now (it used to leave 15% of such a batch to the fallback, 30% at K = 5);
    what it leaves are the few stalled ones. Finished problems: objective within 1e-4 (relative) of
    the float64 solution, feasible to 1e-4, and x where the serial float32 path polished the same."""
    for contacts in (4, 5):
        Q, q, G, h = grasp_batch(64, dtype=torch.float32, contacts=contacts)
        B = Q.shape[0]
        x, lam, status, _ = _raw_status(monkeypatch, Q, q, G, h)
        done = status == S.SOLVED
        assert int((status == RETRY).sum()) <= 0.02 * B and bool((done | (status == RETRY)).all())
        ref = _solve("serial", monkeypatch, *(t.double() for t in (Q, q, G, h)))
        Qd, qd = Q.double(), q.double()

        def f(x_):
            x_ = x_.double()
            return 0.5 * torch.einsum("bi,bij,bj->b", x_, Qd, x_) + (qd * x_).sum(-1)

        gap = (f(x) - f(ref.x)).abs() / (1 + f(ref.x).abs())
        assert float(gap[done].max()) < 1e-4
        assert float((x[done].double() @ G.double().mT - h.double()).max()) < 1e-4
        small = _solve("small", monkeypatch, Q, q, G, h)
        serial = _solve("serial", monkeypatch, Q, q, G, h)
        assert small.status.tolist() == serial.status.tolist() == [S.SOLVED] * B


@pytest.mark.parametrize("shared", [(), ("G",)])
def test_small_backward_kkt_solve_matches_serial(shared, monkeypatch):
    """ops.kkt_solve (the CUDA backward's solve) with the small kernel's double-precision
    primal-regularized Cholesky and refinement = the serial LU's solution."""
    P = ol.testing.random_qp(24, 10, 25, 0, seed=11, shared=shared)
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", "0")
    monkeypatch.setenv("OPTLAYERS_CPU_SMALL", "0")
    sol = ol.solve_qp(*P.data()[:4], backend="native", return_solution=True)
    Gx = torch.einsum("...ij,...j->...i", P.G, sol.x)
    mask = (sol.lam > P.h - Gx).to(torch.float64)
    rhs = torch.randn(24, 10 + 25, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A = torch.zeros(0, 10, dtype=torch.float64)
    reg = tolerances_for(torch.float64).kkt_reg
    u_serial = torch.ops.optlayers.qp_kkt_solve(P.Q, P.G, A, mask, rhs, reg)
    monkeypatch.setenv("OPTLAYERS_CPU_SMALL", "1")
    u_small = torch.ops.optlayers.qp_kkt_solve(P.Q, P.G, A, mask, rhs, reg)
    assert torch.allclose(u_small, u_serial, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("shared", [(), ("G",)])
def test_small_gradients_match_serial(shared, monkeypatch):
    """Forward through the small kernel; gradients (the fused CPU backward) equal the serial path's,
    i.e. the small kernel's solution and active set are the serial ones."""
    P = ol.testing.random_qp(19, 9, 14, 0, seed=2, shared=shared)
    gen = torch.Generator().manual_seed(1)
    wx, wl = (torch.randn(19, k, dtype=torch.float64, generator=gen) for k in (9, 14))
    grads = []
    for mode in ("1", "0"):
        monkeypatch.setenv("OPTLAYERS_CPU_LANES", "0")
        monkeypatch.setenv("OPTLAYERS_CPU_SMALL", mode)
        data = [t.clone().requires_grad_() for t in P.data()[:4]]
        sol = ol.solve_qp(*data, backend="native", return_solution=True)
        ((sol.x * wx).sum() + (sol.lam * wl).sum()).backward()
        grads.append([t.grad for t in data])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_small_is_not_used_outside_its_scope(monkeypatch):
    """p > 0 or n > 16: the ordinary paths (the hook changes nothing, no −1 status)."""
    for B, n, m, p in ((5, 8, 10, 2), (5, 17, 10, 0)):
        P = ol.testing.random_qp(B, n, m, p, seed=1)
        sol = _solve("bare", monkeypatch, *P.data())
        assert sol.status.tolist() == [S.SOLVED] * B
        assert float((sol.x - P.x).abs().max()) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_fused_schedule_equals_staged(dtype, monkeypatch):
    """The two schedules of the small kernel's stages (chained per problem, as the CUDA default
    runs them, or stage by stage over the batch with saved iterates and resumed interior points)
    give the same x, λ, status and iterations: real grasp QPs (1.7 polish calls a problem, so early
    polishes fail and resume) and a mixed batch with every status. Bit for bit in float64. In
    float32 the host compiler contracts multiply-adds differently in the two inlined copies of the
    same code, and degenerate float32 grasp QPs amplify that: 5 of 240 ended differently (with
    -ffp-contract=off all 240 agree bit for bit; on the H200 the CUDA schedules agreed bit for bit
    in both precisions). So float32 checks the statuses of ≥ 95% and x where both finished."""
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", "0")
    for data in (grasp_batch(40, dtype=dtype), mixed_batch(dtype)[:4]):
        outs = {}
        for mode in ("2", "3"):
            monkeypatch.setenv("OPTLAYERS_CPU_SMALL", mode)
            outs[mode] = raw_qp_solve(*data)
        x2, l2, s2, i2 = outs["2"]
        x3, l3, s3, i3 = outs["3"]
        ok = (s2 == 0) & (s3 == 0)  # x and λ of a problem left to the fallback are unspecified
        assert bool(ok.any())
        if dtype == torch.float64:
            assert torch.equal(s2, s3) and torch.equal(i2, i3)
            assert torch.equal(x2[ok], x3[ok]) and torch.equal(l2[ok], l3[ok])
        else:
            assert float((s2 == s3).double().mean()) >= 0.95
            assert float((x2[ok] - x3[ok]).abs().max()) < 1e-3


def test_small_kkt_solve_falls_back_when_its_refinement_does_not_converge():
    # Found by fuzzing the conic layer's qp route: with Q of condition ~1e7 on the null space of the
    # active row (after the objective scaling), Q + δI + G_𝒜ᵀG_𝒜/δ is too ill conditioned for the
    # small KKT solve's refinement, which returned a u 3× off — forward mode 2.2× off while reverse
    # mode (the fused backward) was right. It now reports non-convergence and the serial LU solves.
    from torch.autograd import forward_ad

    g = torch.Generator().manual_seed(15)
    n, m, scale = 3, 5, 1e6
    Mq = torch.randn(n, n, generator=g, dtype=torch.float64)
    u = torch.randn(n, 1, generator=g, dtype=torch.float64)
    Q = Mq @ Mq.T / n + 0.3 * torch.eye(n, dtype=torch.float64) + scale * u @ u.T
    q = torch.randn(n, generator=g, dtype=torch.float64) * scale ** 0.5
    G, h = torch.randn(m, n, generator=g, dtype=torch.float64), torch.rand(m, generator=g, dtype=torch.float64)
    dq = torch.randn(n, generator=g, dtype=torch.float64)
    with forward_ad.dual_level():
        jvp = forward_ad.unpack_dual(ol.solve_qp(Q, forward_ad.make_dual(q, dq), G, h, backend="native")).tangent
    J = torch.autograd.functional.jacobian(lambda q: ol.solve_qp(Q, q, G, h, backend="native"), q)
    torch.testing.assert_close(jvp, J @ dq, rtol=1e-6, atol=1e-9)
