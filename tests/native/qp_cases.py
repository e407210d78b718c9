"""Problem batches shared by the native-kernel tests: real contact-force QPs of examples/grasp_model.py
(shared G), and a batch mixing solved, infeasible and unbounded problems."""

import os
import sys

import torch


def grasp_batch(grasps: int = 16, device: str = "cpu", dtype=torch.float64, contacts: int = 4):
    """(Q (B,n,n), q (B,n), G (m,n), h (m)) for `grasps` initial grasps × 6 wrenches on a box, K = 4
    contacts (n = 12, m = 41; K = 5: n = 15, m = 51); many have a zero-force contact (dependent
    active rows)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    import grasp_model as gm

    out = gm.qp_batch(gm.OBJECTS["box"], gm.GraspConfig(contacts=contacts, wrenches=6), grasps, 0)
    return tuple(t.detach().to(device=device, dtype=dtype).contiguous() for t in out)


def mixed_batch(dtype=torch.float64):
    """Ten 2-variable problems (one block of lanes, one warp's worth): feasible ones, a primal
    infeasible one (index 3: x₀ ≥ 1, x₀ ≤ −1) and an unbounded LP (index 6: min −x₀ − x₁ s.t. −x ≤ 0)."""
    g = torch.Generator().manual_seed(0)
    B, n = 10, 2
    Q = torch.eye(n, dtype=dtype).repeat(B, 1, 1)
    q = torch.randn(B, n, generator=g, dtype=dtype)
    G = torch.cat([torch.eye(n, dtype=dtype), -torch.eye(n, dtype=dtype)]).repeat(B, 1, 1)
    h = torch.ones(B, 2 * n, dtype=dtype)
    G[3] = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=dtype)
    h[3] = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=dtype)
    Q[6] = 0
    q[6] = -1
    G[6] = torch.cat([-torch.eye(n, dtype=dtype), -torch.eye(n, dtype=dtype)])
    h[6] = 0
    return Q, q, G, h


def random_family(kind: int, seed: int, n: int, p: int):
    """A random float64 batch of one of six kinds (n variables, p equalities, B and m from the seed):
    0 planted QPs, 1 planted LPs, 2 random data (often infeasible), 3 random LPs (often unbounded),
    4 box QPs with singular Q, 5 planted QPs with duplicated constraint rows. Returns the solve_qp
    arguments (Q, q, G, h[, A, b])."""
    import optlayers as ol

    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    B, m = 3 + seed % 29, 1 + seed % 37
    if kind == 0:
        return ol.testing.random_qp(B, n, m, p, seed=seed).data()
    if kind == 1:
        return ol.testing.random_qp(B, n, max(m, n), p, lp=True, seed=seed).data()
    if kind == 2:
        Q = torch.randn(B, n, n, generator=g, dtype=d)
        return (Q @ Q.mT / n, torch.randn(B, n, generator=g, dtype=d), torch.randn(B, m, n, generator=g, dtype=d),
                torch.randn(B, m, generator=g, dtype=d), torch.randn(B, p, n, generator=g, dtype=d),
                torch.randn(B, p, generator=g, dtype=d))
    if kind == 3:
        return (None, torch.randn(B, n, generator=g, dtype=d), torch.randn(B, m, n, generator=g, dtype=d),
                torch.rand(B, m, generator=g, dtype=d))
    if kind == 4:
        L = torch.randn(B, n, max(1, n // 2), generator=g, dtype=d)
        G = torch.cat([torch.eye(n, dtype=d), -torch.eye(n, dtype=d)]).expand(B, -1, -1)
        return L @ L.mT, torch.randn(B, n, generator=g, dtype=d), G, torch.ones(B, 2 * n, dtype=d)
    Q, q, G, h = ol.testing.random_qp(B, n, m, 0, seed=seed).data()[:4]
    k = min(3, m)
    return Q, q, torch.cat([G, G[:, :k]], 1), torch.cat([h, h[:, :k]], 1)


def raw_qp_solve(Q, q, G, h):
    """optlayers::qp_solve called directly with the default tolerances (no Python layer, so a status
    −1 of the small kernel without its fallback survives): x, λ, status, iterations."""
    from optlayers._src.tolerances import tolerances_for

    t = tolerances_for(q.dtype)
    n, B = q.shape[-1], q.shape[0]
    e = torch.zeros(0, n, dtype=q.dtype, device=q.device)
    out = torch.ops.optlayers.qp_solve(Q, q, G, h, e, torch.zeros(0, dtype=q.dtype, device=q.device), B, t.ipm_tol,
                                       t.infeasibility_tol, t.kkt_reg, t.polish_tol, t.polish_start,
                                       t.step_to_boundary, 100, True, False)
    return out[0], out[1], out[3], out[4]
