"""Warm start (``solve_qp(..., warm_start=...)``) against the cold solve, same run, same data.

Two parts:

1. **Perturbed batches**: solve a batch, perturb q by a relative 1e-3 (a nearby problem, as
   between two steps of a bilevel loop or MPC), then time fwd+bwd of the new batch cold and
   warm-started from the old solution, per backend; prints the ratio, the fraction of problems the
   warm start finished (0 iterations) and max |x_warm − x_cold|.
2. **Grasp loop**: ``examples/grasp_model.optimize`` (Adam on N grasps × 6 wrenches, K = 4) with and
   without warm start; ms per step (mean over the steps after the first), fraction warm-finished,
   and the largest difference of the final contacts.

No peer is timed: none of qpth, proxsuite's QPLayer or moreau's layer takes a warm start.

    python benchmarks/warm_start.py                 # both parts, CPU
    python benchmarks/warm_start.py --quick         # CI smoke: tiny sizes
    python benchmarks/warm_start.py --device cuda --no-grasp
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import optlayers as ol

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
import grasp_model as gm  # noqa: E402
from _ab import median_ms  # noqa: E402

SIZES = ((32, 20, 20, 5), (128, 50, 50, 10), (8, 200, 200, 0), (1024, 100, 200, 0))
QUICK_SIZES = ((8, 10, 12, 2),)


def fwd_bwd(data, backend, warm_start):
    Q, q, G, h, A, b = data
    qq = q.clone().requires_grad_()
    sol = ol.solve_qp(Q, qq, G, h, A, b, backend=backend, return_solution=True, warm_start=warm_start)
    sol.x.sum().backward()
    return sol


def perturbed(sizes, backends, device, reps: int) -> None:
    print("== perturbed batches (q ← q + 1e-3·|q|·N(0,1)), float64, fwd+bwd ms ==")
    print(f"{'case':26s} {'backend':8s} {'cold':>9s} {'warm':>9s} {'ratio':>7s} {'warm-finished':>14s} {'max|dx|':>9s}")
    for B, n, m, p in sizes:
        P = ol.testing.random_qp((B,), n=n, m=m, p=p, active_fraction=0.5, seed=1, dtype=torch.float64)
        A, b = (P.A, P.b) if p else (None, None)
        data0 = tuple(None if t is None else t.to(device) for t in (P.Q, P.q, P.G, P.h, A, b))
        g = torch.Generator().manual_seed(0)
        noise = 1e-3 * torch.randn(P.q.shape, generator=g, dtype=P.q.dtype) * P.q.abs().mean()
        data = (data0[0], data0[1] + noise.to(device)) + data0[2:]
        for be in backends:
            old = ol.solve_qp(*data0, backend=be, return_solution=True)
            tc, cold = median_ms(lambda: fwd_bwd(data, be, None), reps, device)
            tw, w = median_ms(lambda: fwd_bwd(data, be, old), reps, device)
            fin = float((w.iterations == 0).float().mean())
            dx = float((w.x - cold.x).detach().abs().max())
            print(f"{f'B={B} n={n} m={m} p={p}':26s} {be:8s} {tc:9.2f} {tw:9.2f} {tc / tw:6.2f}x {fin:14.2f} {dx:9.1e}")


def grasp_loop(grasps: int, steps: int, backends, device) -> None:
    cfg = gm.GraspConfig(contacts=4, wrenches=6)
    obj = gm.OBJECTS["box"]
    z0 = gm.initial_contacts(grasps, cfg, 0).to(device)
    print(f"\n== grasp loop: {grasps} grasps × 6 wrenches = {grasps * 6} QPs (n=12, m=41), {steps} Adam steps, "
          f"ms per step (mean of steps 1..{steps}) ==")
    print(f"{'backend':8s} {'cold':>9s} {'warm':>9s} {'ratio':>7s} {'warm-finished':>14s} {'max|z_warm - z_cold|':>21s}")
    for be in backends:
        row = {}
        for use in (False, True):
            log = []
            z = gm.optimize(z0, obj, cfg, steps=steps, backend=be, warm_start=use,
                            callback=lambda s, ev, dt: log.append((dt, ev.warm, ev.qps)))
            per = sum(t for t, _, _ in log[1:]) / max(1, len(log) - 1) * 1e3
            fin = sum(w for _, w, _ in log[1:]) / max(1, sum(k for _, _, k in log[1:]))
            row[use] = (per, fin, z)
        dz = float((row[True][2] - row[False][2]).abs().max())
        print(f"{be:8s} {row[False][0]:9.1f} {row[True][0]:9.1f} {row[False][0] / row[True][0]:6.2f}x "
              f"{row[True][1]:14.2f} {dz:21.1e}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", default="native,torch")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--grasps", type=int, default=800)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-grasp", action="store_true", help="skip the grasp loop")
    ap.add_argument("--quick", action="store_true", help="CI smoke run: tiny sizes, few steps")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    ok, why = ol.native.status()
    if "native" in backends and not ok:
        print(f"native backend unavailable ({why}): skipped")
        backends.remove("native")
    sizes = QUICK_SIZES if args.quick else SIZES
    reps = 1 if args.quick else args.reps
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    perturbed(sizes, backends, args.device, reps)
    if not args.no_grasp:
        grasp_loop(8 if args.quick else args.grasps, 2 if args.quick else args.steps, backends, args.device)


if __name__ == "__main__":
    main()
