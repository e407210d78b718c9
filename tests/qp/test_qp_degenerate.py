"""Degenerate active sets on every dense backend: grasp QPs where a contact carries no force, so
all of its friction facets and its normal-force bound are active on 3 variables (dependent rows).
The polish must still finish them exactly — the native kernel and the PyTorch backend both repair
the wrong-signed multipliers of the dependent rows by NNLS — i.e. every problem satisfies the KKT
conditions to round-off, not just to the interior-point tolerance (without the repair, half of
these problems kept ~1e-9 solutions on the PyTorch backend, x off by up to 4e-4)."""

import os
import sys

import torch

import optlayers as ol

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import grasp_model as gm  # noqa: E402


def _grasp_batch(grasps=64, contacts=4):
    cfg = gm.GraspConfig(contacts=contacts, wrenches=6)
    return (cfg,) + gm.qp_batch(gm.OBJECTS["box"], cfg, grasps, 0)


def test_grasp_qps_with_zero_force_contacts_polish_to_roundoff(backend):
    cfg, Q, q, G, h = _grasp_batch()
    sol = ol.solve_qp(Q, q, G, h, backend=backend, return_solution=True)
    assert bool(sol.ok.all())
    x, lam = sol.x, sol.lam
    B = x.shape[0]
    zero_force = (x.reshape(B, cfg.contacts, 3).abs().amax(-1) < 1e-12).any(-1)
    assert int(zero_force.sum()) > 0  # the degenerate case this test is about is present
    stationarity = (torch.einsum("bij,bj->bi", Q, x) + q + lam @ G).abs().amax(-1) / (1 + q.abs().amax(-1))
    complementarity = (lam * (h - x @ G.T)).abs().amax(-1)
    # Every problem is polished to round-off, the zero-force ones and the rest: one of these 384
    # (index 8) has an active row whose multiplier, 7.7e-6, is below √μ where the interior point
    # stops, which the guess λ_i > s_i misses — the polish's correction recovers it by adding only
    # the violated rows the iterate ranks likeliest (active_set.py::JOIN_RATIO; before, it added
    # two and kept the interior point's solution, x off by 1.6e-5).
    assert float(stationarity.max()) < 1e-12
    assert float(complementarity.max()) < 1e-12
    assert float(lam.min()) >= 0 and float((x @ G.T - h).max()) < 1e-12


def test_backends_agree_on_degenerate_grasp_qps():
    ok, why = ol.native.status()
    if not ok:
        import pytest

        pytest.skip(f"native kernel unavailable: {why}")
    _, Q, q, G, h = _grasp_batch(32)
    xt = ol.solve_qp(Q, q, G, h, backend="torch")
    xn = ol.solve_qp(Q, q, G, h, backend="native")
    assert float((xt - xn).abs().max()) < 1e-10


def _kkt_error_f32(Q, q, G, h, sol):
    """Max over problems of the relative stationarity, complementarity and infeasibility (float64)."""
    x, lam = sol.x.double(), sol.lam.double()
    Qd, qd, Gd, hd = (t.double() for t in (Q, q, G, h))
    stat = (torch.einsum("bij,bj->bi", Qd, x) + qd + lam @ Gd).abs().amax(-1) / (1 + qd.abs().amax(-1))
    slack = hd - x @ Gd.mT
    return max(float(stat.max()), float((lam * slack).abs().max()), float((-slack).max()), float((-lam).max()))


def test_float32_degenerate_grasp_qps_are_solved_by_the_torch_backend():
    """float32 near a degenerate solution: after reaching the rounding floor the iterates of one of
    these 24 problems drifted (dual residual 1e-7 → 6e-3 while sᵀz kept falling), it stalled and the
    polish — given the last iterate — was rejected (MAX_ITER). The polish now gets the iterate of
    lowest merit. (Scan of 12,288 float32 grasp QPs, benchmarks/grasp_float32.py: 145 unsolved before,
    28 after this rule, 21 with the polish-correction rule too.)"""
    _, Q, q, G, h = (t.float() if torch.is_tensor(t) else t for t in _grasp_batch(4))
    sol = ol.solve_qp(Q, q, G, h, backend="torch", return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [ol.Status.SOLVED] * Q.shape[0]
    assert _kkt_error_f32(Q, q, G, h, sol) < 1e-4


def _failing_factor(monkeypatch, problem: int, from_call: int):
    """Make the interior point's reduced-matrix factorization fail for batch problem `problem` from
    the `from_call`-th factorization on (the first is the initial point's), while the working
    batch is still the whole batch (4 problems; later its indices mean other problems)."""
    from optlayers._src.qp.backends import torch_ipm

    real = torch_ipm._Factor.__init__
    calls = []

    def init(self, K, w):
        real(self, K, w)
        calls.append(K.shape[0])
        if len(calls) > from_call and K.shape[0] == 4:
            ok = torch.ones(4, dtype=torch.bool) if self.ok is None else self.ok.clone()
            ok[problem] = False
            self.ok = ok
            self.L = self.L.clone()
            self.L[problem] = float("nan")  # what a failed factorization leaves behind
            self.Lt = self.L.mT

    monkeypatch.setattr(torch_ipm._Factor, "__init__", init)
    return calls


def test_late_factorization_failure_hands_the_iterate_to_the_polish(monkeypatch):
    """A reduced matrix that cannot be factored late in the iteration stops its problem at the
    current iterate (no NaN step), and the polish finishes it: SOLVED, same x as without the failure."""
    P = ol.testing.random_qp(4, 8, 10, 0, seed=3)
    ref = ol.solve_qp(*P.data(), backend="torch")
    calls = _failing_factor(monkeypatch, problem=1, from_call=3)
    sol = ol.solve_qp(*P.data(), backend="torch", return_solution=True, on_failure="nan")
    assert calls[3:4] == [4]  # the failure was injected (the batch was whole at the 4th factorization)
    assert sol.status.tolist() == [ol.Status.SOLVED] * 4
    assert float((sol.x - ref).abs().max()) < 1e-10


def test_factorization_failure_without_polish_is_a_numerical_error(monkeypatch):
    """Without the polish nothing can vouch for the stopped iterate: NUMERICAL_ERROR (x NaN under
    on_failure="nan", never a silent half-converged point); the rest of the batch is unaffected."""
    P = ol.testing.random_qp(4, 8, 10, 0, seed=3)
    ref = ol.solve_qp(*P.data(), backend="torch", polish=False)
    _failing_factor(monkeypatch, problem=1, from_call=2)
    sol = ol.solve_qp(*P.data(), backend="torch", polish=False, return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [0, int(ol.Status.NUMERICAL_ERROR), 0, 0]
    assert bool(sol.x[1].isnan().all())
    assert float((sol.x[[0, 2, 3]] - ref[[0, 2, 3]]).abs().max()) < 1e-12


def test_polish_correction_ignores_rounding_level_violations():
    """4,800 grasp QPs with K = 5 contacts: in this batch one degenerate problem's second polish
    round put rows whose violation was at rounding level (1e-22) into its active set (the correction
    used `Gx > h`), the third guess was wrong and the problem kept its interior-point x, 3e-5 off
    (complementarity 9e-11). Rows now join only if the acceptance test counts them as violated."""
    _, Q, q, G, h = _grasp_batch(800, contacts=5)
    sol = ol.solve_qp(Q, q, G, h, backend="torch", return_solution=True)
    x, lam = sol.x, sol.lam
    stationarity = (torch.einsum("bij,bj->bi", Q, x) + q + lam @ G).abs().amax(-1) / (1 + q.abs().amax(-1))
    assert float(stationarity.max()) < 1e-12
    assert float((lam * (h - x @ G.T)).abs().max()) < 1e-12
