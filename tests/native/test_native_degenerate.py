"""Degenerate active sets on the native kernel: grasp QPs where a contact carries no force, so all
of its friction facets and its normal-force bound are active on 3 variables (dependent rows).
The polish must still finish them exactly (multiplier repair by NNLS in csrc/optlayers/qp_ipm.h),
i.e. every problem satisfies the KKT conditions to round-off, not just to the interior-point
tolerance (before the repair about a quarter of these problems kept ~1e-9 solutions, x off by 1e-4)."""

import os
import sys

import pytest
import torch

import optlayers as ol

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import grasp_model as gm  # noqa: E402


def _native_or_skip():
    ok, why = ol.native.status()
    if not ok:
        pytest.skip(f"native kernel unavailable: {why}")


def _grasp_batch(grasps=64):
    cfg = gm.GraspConfig(contacts=4, wrenches=6)
    return (cfg, grasps * 6) + gm.qp_batch(gm.OBJECTS["box"], cfg, grasps, 0)


@pytest.mark.parametrize("lanes", ["1", "0"], ids=["lanes", "serial"])
def test_grasp_qps_with_zero_force_contacts_polish_to_roundoff(lanes, monkeypatch):
    """Both CPU paths: the batch-interleaved one (qp_lanes.h: block KKT solve, then the
    serial repair) and the serial one (LU, repair)."""
    _native_or_skip()
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", lanes)
    cfg, B, Q, q, G, h = _grasp_batch()
    sol = ol.solve_qp(Q, q, G, h, backend="native", return_solution=True)
    assert bool(sol.ok.all())
    x, lam = sol.x, sol.lam
    slack = h - x @ G.T
    stationarity = (torch.einsum("bij,bj->bi", Q, x) + q + lam @ G).abs().amax(-1)
    complementarity = (lam * slack).abs().amax(-1)
    scale = 1 + q.abs().amax(-1)
    # Zero-force contacts exist in this batch (the degenerate case this test is about).
    zero_force = (x.reshape(B, cfg.contacts, 3).abs().amax(-1) < 1e-12).any(-1)
    assert int(zero_force.sum()) > 0
    # Every problem at round-off, including index 8, whose active row with multiplier 7.7e-6 < √μ
    # the polish's correction has to add alone (qp_ipm.h::kJoinRatio; tests/qp/test_qp_degenerate.py).
    assert float((stationarity / scale).max()) < 1e-12
    assert float(complementarity.max()) < 1e-12
    assert float(lam.min()) >= 0 and float(slack.min()) > -1e-12


def test_grasp_lanes_and_serial_agree_where_the_answer_is_unique(monkeypatch):
    """x and the gradients that depend on it only (∇q = −u_x, ∇Q) are unique and agree to
    round-off between the two CPU paths. The multipliers of a zero-force contact (dependent active
    rows) are not unique: each path returns a valid nonnegative set (previous test), not
    necessarily the same one, and so ∇G, ∇h may differ between them."""
    _native_or_skip()
    cfg, B, Q, q, G, h = _grasp_batch(32)
    c = torch.randn(B, cfg.n, dtype=Q.dtype, generator=torch.Generator().manual_seed(3))
    out = {}
    for lanes in ("1", "0"):
        monkeypatch.setenv("OPTLAYERS_CPU_LANES", lanes)
        Qr, qr = Q.clone().requires_grad_(), q.clone().requires_grad_()
        x = ol.solve_qp(Qr, qr, G, h, backend="native")
        (x * c).sum().backward()
        out[lanes] = (x.detach(), qr.grad, Qr.grad)
    for a, b in zip(out["1"], out["0"]):
        assert float((a - b).abs().max()) <= 1e-11 * (1 + float(b.abs().max()))


def test_float32_late_factorization_failure_is_polished(monkeypatch):
    """float32 degenerate grasp QPs (zero-force contacts): near the solution K's condition number
    grows like 1/μ and its Cholesky can fail for good; the serial path then polishes the last iterate
    (as an iteration-limited one) instead of returning NUMERICAL_ERROR. On this batch problem 9 took
    that route (NUMERICAL_ERROR before the polish was allowed there); every problem must be SOLVED
    with its KKT conditions met to float32 accuracy."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__)))
    from qp_cases import grasp_batch

    monkeypatch.setenv("OPTLAYERS_CPU_LANES", "0")
    monkeypatch.setenv("OPTLAYERS_CPU_SMALL", "0")
    Q, q, G, h = grasp_batch(4, dtype=torch.float32)
    sol = ol.solve_qp(Q, q, G, h, backend="native", return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [ol.Status.SOLVED] * Q.shape[0]
    x, lam = sol.x.double(), sol.lam.double()
    Qd, qd, Gd, hd = (t.double() for t in (Q, q, G, h))
    stat = (torch.einsum("bij,bj->bi", Qd, x) + qd + lam @ Gd).abs().amax(-1) / (1 + qd.abs().amax(-1))
    assert float(stat.max()) < 1e-4
    assert float(lam.min()) >= 0 and float((x @ Gd.mT - hd).max()) < 1e-4


@pytest.mark.parametrize("lanes", ["1", "0"], ids=["lanes", "serial"])
def test_float32_grasp_batch_polishes_from_the_lowest_merit_iterate(lanes, monkeypatch):
    """768 float32 grasp QPs (box, seed 0; many degenerate): after reaching the rounding floor the
    iterates of some drift away (residuals climb back while sᵀz falls) until they stall; polished
    from their last iterate they stayed MAX_ITER (2 on the lanes path, 10 serially), polished from
    their lowest-merit iterate (qp_ipm.h / qp_lanes.h, as the PyTorch backend) all are SOLVED."""
    _native_or_skip()
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", lanes)
    monkeypatch.setenv("OPTLAYERS_CPU_SMALL", "0")
    _, _, Q, q, G, h = _grasp_batch(128)
    Q, q, G, h = (t.float() for t in (Q, q, G, h))
    sol = ol.solve_qp(Q, q, G, h, backend="native", return_solution=True, on_failure="nan")
    assert (sol.status != 0).nonzero().flatten().tolist() == []
    x, lam = sol.x.double(), sol.lam.double()
    Qd, qd, Gd, hd = (t.double() for t in (Q, q, G, h))
    stat = (torch.einsum("bij,bj->bi", Qd, x) + qd + lam @ Gd).abs().amax(-1) / (1 + qd.abs().amax(-1))
    assert float(stat.max()) < 1e-4
    assert float(lam.min()) >= 0 and float((x @ Gd.mT - hd).max()) < 1e-4
