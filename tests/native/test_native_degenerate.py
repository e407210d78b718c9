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


def test_grasp_qps_with_zero_force_contacts_polish_to_roundoff():
    _native_or_skip()
    cfg = gm.GraspConfig(contacts=4, wrenches=6)
    obj = gm.OBJECTS["box"]
    z = gm.initial_contacts(64, cfg, 0)
    p, nrm = obj.surface(z)
    W = gm.grasp_map(p, nrm, obj.length)
    Q, q = gm.qp_data(W, gm.target_wrenches(6), cfg.eps)
    B = 64 * 6
    Q = Q.expand(-1, 6, -1, -1).reshape(B, cfg.n, cfg.n).contiguous()
    q = q.reshape(B, cfg.n).contiguous()
    G, h = gm.friction_constraints(cfg)
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
    assert float((stationarity / scale).max()) < 1e-12
    assert float(complementarity.max()) < 1e-12
    assert float(lam.min()) >= 0 and float(slack.min()) > -1e-12
