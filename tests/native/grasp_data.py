"""Real contact-force QPs of examples/grasp_model.py for the native-kernel tests (shared G)."""

import os
import sys

import torch


def grasp_batch(grasps: int = 16, device: str = "cpu", dtype=torch.float64):
    """(Q (B,n,n), q (B,n), G (m,n), h (m)) for `grasps` initial grasps × 6 wrenches on a box, K = 4
    contacts (n = 12, m = 41); many have a zero-force contact (dependent active rows)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    import grasp_model as gm

    cfg = gm.GraspConfig(contacts=4, wrenches=6)
    obj = gm.OBJECTS["box"]
    p, nrm = obj.surface(gm.initial_contacts(grasps, cfg, 0))
    Q, q = gm.qp_data(gm.grasp_map(p, nrm, obj.length), gm.target_wrenches(6), cfg.eps)
    B = grasps * 6
    G, h = gm.friction_constraints(cfg)
    out = (Q.expand(-1, 6, -1, -1).reshape(B, cfg.n, cfg.n), q.reshape(B, cfg.n), G, h)
    return tuple(t.detach().to(device=device, dtype=dtype).contiguous() for t in out)
