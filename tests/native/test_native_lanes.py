"""The batch-interleaved CPU solver (csrc/optlayers/qp_lanes.h) against the serial one.

``OPTLAYERS_CPU_LANES=1`` forces the lane path for every batch with inequalities, ``=0`` turns it
off (the C++ op reads it per call). Both paths must agree to round-off after the polish, with the
same status per problem, also when one block of lanes mixes solved, infeasible and unbounded
problems (a stopped lane is frozen while the others go on), for partial blocks, shared data,
float32 and gradients.
"""

import pytest
import torch

import optlayers as ol
from optlayers._src.native.backend import native_status

from qp_cases import mixed_batch, random_family

ok, why = native_status()
pytestmark = pytest.mark.skipif(not ok, reason=f"native kernel unavailable: {why}")

S = ol.Status


def _solve(lanes: bool, monkeypatch, *args, **kw):
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", "1" if lanes else "0")
    kw.setdefault("on_failure", "nan")
    return ol.solve_qp(*args, backend="native", return_solution=True, **kw)


@pytest.mark.parametrize("B,n,m,p", [(1, 3, 4, 0), (7, 12, 41, 0), (8, 5, 9, 2), (17, 20, 30, 5), (64, 33, 20, 4)])
@pytest.mark.parametrize("shared", [(), ("Q", "G", "A")])
def test_lanes_match_serial_and_planted(B, n, m, p, shared, monkeypatch):
    P = ol.testing.random_qp(B, n, m, p, seed=B + n + m, shared=shared)
    lanes = _solve(True, monkeypatch, *P.data())
    serial = _solve(False, monkeypatch, *P.data())
    assert lanes.status.tolist() == [S.SOLVED] * B
    for a, b, ref in ((lanes.x, serial.x, P.x), (lanes.lam, serial.lam, P.lam), (lanes.nu, serial.nu, P.nu)):
        if a.numel() == 0:  # ν for p = 0
            continue
        assert float((a - ref).abs().max()) < 1e-10
        assert float((a - b).abs().max()) < 1e-10


def test_lanes_lps_and_shared_h(monkeypatch):
    """LPs (Q = 0: vertex solutions, the stall rule's hard case) and h shared by the batch."""
    P = ol.testing.random_qp(24, 10, 25, 0, lp=True, seed=5, shared=("G",))
    Q, q, G, h = P.data()[:4]
    lanes = _solve(True, monkeypatch, Q, q, G, h)
    assert lanes.status.tolist() == [S.SOLVED] * 24
    assert float((lanes.x - P.x).abs().max()) < 1e-9
    h0 = h[0]  # shared h: the same bounds for a batch of different objectives
    lanes = _solve(True, monkeypatch, Q, q, G, h0)
    serial = _solve(False, monkeypatch, Q, q, G, h0)
    assert lanes.status.tolist() == serial.status.tolist()
    ok = lanes.status == S.SOLVED
    assert bool(ok.any())
    assert float((lanes.x[ok] - serial.x[ok]).abs().max()) < 1e-9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lanes_mixed_statuses_in_one_block(dtype, monkeypatch):
    Q, q, G, h = mixed_batch(dtype)
    lanes = _solve(True, monkeypatch, Q, q, G, h)
    serial = _solve(False, monkeypatch, Q, q, G, h)
    want = [S.SOLVED] * 10
    want[3], want[6] = S.PRIMAL_INFEASIBLE, S.DUAL_INFEASIBLE
    assert lanes.status.tolist() == want == serial.status.tolist()
    ok = lanes.status == S.SOLVED
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert float((lanes.x[ok] - serial.x[ok]).abs().max()) < tol
    # Each solved problem equals its own solve: the stopped lanes did not disturb the others.
    for i in torch.nonzero(ok).flatten().tolist():
        alone = _solve(False, monkeypatch, Q[i], q[i], G[i], h[i])
        assert float((lanes.x[i] - alone.x).abs().max()) < tol
    # Without the polish (which would hide a drifting iterate) a lane that stopped early keeps its
    # last iterate: same iterations and the serial iterate to round-off.
    lanes = _solve(True, monkeypatch, Q, q, G, h, polish=False)
    serial = _solve(False, monkeypatch, Q, q, G, h, polish=False)
    assert lanes.status.tolist() == want
    assert lanes.iterations.tolist() == serial.iterations.tolist()
    assert len(set(lanes.iterations[ok].tolist())) > 1  # the lanes did stop at different iterations
    assert float((lanes.x[ok] - serial.x[ok]).abs().max()) < (1e-12 if dtype == torch.float64 else 1e-5)


def test_lanes_iteration_limit_without_polish(monkeypatch):
    P = ol.testing.random_qp(11, 10, 12, 0, seed=3)
    sol = _solve(True, monkeypatch, *P.data()[:4], max_iter=1, polish=False)
    assert sol.status.tolist() == [S.MAX_ITER] * 11
    assert bool((sol.iterations == 1).all())
    full = _solve(True, monkeypatch, *P.data()[:4], polish=False)
    ser = _solve(False, monkeypatch, *P.data()[:4], polish=False)
    assert full.status.tolist() == [S.SOLVED] * 11
    # Without polish the lane path is the serial interior point step for step (no early polish
    # on either side here), so the iteration counts agree.
    assert full.iterations.tolist() == ser.iterations.tolist()
    assert float((full.x - ser.x).abs().max()) < 1e-8


def test_lanes_float32(monkeypatch):
    P = ol.testing.random_qp(40, 12, 20, 0, seed=9, dtype=torch.float32, shared=("G",))
    lanes = _solve(True, monkeypatch, *P.data()[:4])
    assert lanes.status.tolist() == [S.SOLVED] * 40
    assert float((lanes.x - P.x).abs().max()) < 1e-4


@pytest.mark.parametrize("p", [0, 3])
@pytest.mark.parametrize("shared", [(), ("G", "A")])
def test_lanes_gradients_match_serial(p, shared, monkeypatch):
    """Through x, λ and ν (all three upstream gradients), w.r.t. all six inputs."""
    P = ol.testing.random_qp(19, 9, 14, p, seed=2, shared=shared)
    gen = torch.Generator().manual_seed(1)
    wx, wl, wn = (torch.randn(19, k, dtype=torch.float64, generator=gen) for k in (9, 14, p))
    grads = []
    for lanes in (True, False):
        monkeypatch.setenv("OPTLAYERS_CPU_LANES", "1" if lanes else "0")
        data = [t.clone().requires_grad_() for t in P.data()]
        sol = ol.solve_qp(*data, backend="native", return_solution=True)
        ((sol.x * wx).sum() + (sol.lam * wl).sum() + (sol.nu * wn).sum()).backward()
        grads.append([t.grad for t in data])
    for a, b in zip(*grads):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_auto_routing_gives_the_planted_solution(monkeypatch):
    """Unset: batches of ≥ 2 blocks with n ≤ 80 and m + p ≤ 128 take the lanes, others (B = 3;
    n = 90) the serial path; either way the planted solution (the choice is invisible but for
    speed)."""
    monkeypatch.delenv("OPTLAYERS_CPU_LANES", raising=False)
    for B, n, p in ((40, 10, 0), (40, 10, 2), (3, 10, 2), (20, 40, 3), (20, 70, 3), (20, 90, 3)):
        P = ol.testing.random_qp(B, n, 12, p, seed=4)
        sol = ol.solve_qp(*P.data(), backend="native", return_solution=True)
        assert float((sol.x - P.x).abs().max()) < 1e-10


def test_lanes_lp_gradients_take_the_serial_fallback(monkeypatch):
    """Q = 0: a lane whose active rows do not span the variables has a singular KKT matrix (H's
    pivots fall to δ), so its polish and backward fall back to the serial LU; the others use the
    lanes' KKT solve. Either way results equal the serial path's."""
    P = ol.testing.random_qp(20, 8, 16, 0, lp=True, seed=7, shared=("G",))
    w = torch.randn(20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = []
    for lanes in (True, False):
        monkeypatch.setenv("OPTLAYERS_CPU_LANES", "1" if lanes else "0")
        q, h = (t.clone().requires_grad_() for t in (P.q, P.h))
        x = ol.solve_qp(P.Q, q, P.G, h, backend="native")
        (x * w).sum().backward()
        out.append((x.detach(), q.grad, h.grad))
    assert float((out[0][0] - P.x).abs().max()) < 1e-9
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_lanes_ill_conditioned_vertex_refactors_at_the_small_delta(monkeypatch):
    """Problem 80 of this batch has cond(K) ≈ 4e8 at its solution (nearly dependent active rows):
    at the lanes' δ = √ε·scale the refinement does not contract (δ‖K⁻¹‖ ≈ 2), so kkt_refined
    factors that lane again at δ = kkt_reg·scale. Without the second try its polish was rejected
    and x stayed 5e-5 off (SOLVED by the interior point's tolerance only)."""
    P = ol.testing.random_qp(256, 30, 60, 5, seed=0)
    sol = _solve(True, monkeypatch, *P.data())
    assert sol.status.tolist() == [S.SOLVED] * 256
    assert float((sol.x - P.x).abs().max()) < 1e-10


def test_lanes_inconsistent_equalities_in_a_block(monkeypatch):
    """Equalities x₀ = 1 and x₀ = −1 in one problem of a block: PRIMAL_INFEASIBLE there, the
    others solved as by the serial path."""
    P = ol.testing.random_qp(12, 6, 8, 2, seed=8)
    Q, q, G, h, A, b = (t.clone() for t in P.data())
    A[5] = 0
    A[5, 0, 0] = A[5, 1, 0] = 1.0
    b[5] = torch.tensor([1.0, -1.0], dtype=b.dtype)
    lanes = _solve(True, monkeypatch, Q, q, G, h, A, b)
    serial = _solve(False, monkeypatch, Q, q, G, h, A, b)
    want = [S.SOLVED] * 12
    want[5] = S.PRIMAL_INFEASIBLE
    assert lanes.status.tolist() == want == serial.status.tolist()
    ok = lanes.status == S.SOLVED
    assert float((lanes.x[ok] - P.x[ok]).abs().max()) < 1e-10


@pytest.mark.parametrize("kind", range(6))
def test_lanes_agree_with_serial_on_random_families(kind, monkeypatch):
    """Same status per problem, and the same x where solved (a scan of 300 such batches, float64,
    found no difference; float32 statuses of borderline infeasible/unbounded problems can differ
    by rounding, which is why this runs in float64)."""
    for seed in range(kind, 60, 6):
        n = 2 + seed % 23
        data = random_family(kind, seed, n, seed % max(1, n // 3))
        a = _solve(True, monkeypatch, *data)
        b = _solve(False, monkeypatch, *data)
        assert a.status.tolist() == b.status.tolist(), (kind, seed)
        ok = a.status == S.SOLVED
        if bool(ok.any()):
            assert float((a.x[ok] - b.x[ok]).abs().max()) <= 1e-6 * (1 + float(b.x[ok].abs().max())), (kind, seed)


@pytest.mark.parametrize("bad", [None, 0, 27, 39])
def test_value_checks_of_many_small_q(bad):
    """The C++ input check runs its PSD test of many small Q in lanes: it must flag exactly the
    indefinite one (anywhere in a block, including the last, partial one) and pass the others."""
    from optlayers._src.native import ops

    P = ol.testing.random_qp(40, 9, 5, 0, seed=1)
    Q = P.Q.clone()
    if bad is not None:  # shift its spectrum so that λ_min = −1e-2 (far beyond psd_tol)
        Q[bad] -= (float(torch.linalg.eigvalsh(Q[bad]).min()) + 1e-2) * torch.eye(9, dtype=Q.dtype)
    nonfinite, asym, first, _ = ops.check_values(Q, P.q, P.G, P.h, P.A, P.b, 1e-10)
    assert not any(nonfinite) and asym < 1e-12
    assert first == (-1 if bad is None else bad)
    if bad is not None:
        with pytest.raises(ValueError, match="positive semidefinite"):
            ol.solve_qp(Q, P.q, P.G, P.h, backend="native")
