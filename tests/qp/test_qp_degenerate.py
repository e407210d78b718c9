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


def _grasp_batch(grasps=64):
    cfg = gm.GraspConfig(contacts=4, wrenches=6)
    obj = gm.OBJECTS["box"]
    p, nrm = obj.surface(gm.initial_contacts(grasps, cfg, 0))
    Q, q = gm.qp_data(gm.grasp_map(p, nrm, obj.length), gm.target_wrenches(6), cfg.eps)
    B = grasps * 6
    Q = Q.expand(-1, 6, -1, -1).reshape(B, cfg.n, cfg.n).contiguous()
    q = q.reshape(B, cfg.n).contiguous()
    G, h = gm.friction_constraints(cfg)
    return cfg, Q, q, G, h


def test_grasp_qps_with_zero_force_contacts_polish_to_roundoff(backend):
    cfg, Q, q, G, h = _grasp_batch()
    sol = ol.solve_qp(Q, q, G, h, backend=backend, return_solution=True)
    assert bool(sol.ok.all())
    x, lam = sol.x, sol.lam
    B = x.shape[0]
    zero_force = (x.reshape(B, cfg.contacts, 3).abs().amax(-1) < 1e-12).any(-1)
    assert int(zero_force.sum()) > 0  # the degenerate case this test is about is present
    stationarity = (torch.einsum("bij,bj->bi", Q, x) + q + lam @ G).abs().amax(-1) / (1 + q.abs().amax(-1))
    assert float(stationarity.max()) < 1e-12
    assert float((lam * (h - x @ G.T)).abs().max()) < 1e-12
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
