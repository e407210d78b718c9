"""The OSQP route's solver reuse across calls (``optlayers/_src/sparse/solver.py``): the same batch
solved several times in a row, with one ``SolverCache`` kept across the calls (cached solvers,
warm starts) against a fresh cache per call (set-up every time), in the same run.

Default data: ``ol.testing.hard_qps("pinned_vertex")`` in float32 — vertices pinned by rows of both
signs that are equal only up to rounding, where a reused solver's carried state (iterate, adapted
ρ) makes its warm-started solve fail and the problem goes to a fresh solver. Printed per call:
solved problems, mean / max ADMM iterations a problem (the failed reused attempt's included),
OSQP set-ups so far, and the call's time. Not a peer comparison: no peer keeps solvers across calls.

    python benchmarks/sparse_reuse.py [--family pinned_vertex] [--B 64] [--calls 3] [--float64]
"""

from __future__ import annotations

import argparse
import time

import torch

import optlayers as ol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="pinned_vertex", choices=ol.testing.FAMILIES)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--float64", action="store_true", help="float64 data (default float32)")
    args = ap.parse_args()
    dtype = torch.float64 if args.float64 else torch.float32
    H = ol.testing.hard_qps(args.family, args.B, seed=args.seed, dtype=dtype)
    print(f"family={args.family} B={args.B} dtype={dtype} seed={args.seed}; OSQP route defaults")
    for label, keep in (("reused cache", True), ("fresh cache", False)):
        cache = ol.sparse.SolverCache()
        for k in range(args.calls):
            if not keep:
                cache = ol.sparse.SolverCache()
            t = time.perf_counter()
            sol = ol.solve_sparse_qp(H.Q, H.q, H.G, None, H.h, return_solution=True, on_failure="nan", cache=cache)
            ms = 1e3 * (time.perf_counter() - t)
            it = sol.iterations.double()
            print(f"{label:13s} call {k}: solved {int(sol.ok.sum()):4d}/{args.B}  ADMM iterations mean "
                  f"{float(it.mean()):8.1f} max {int(it.max()):6d}  set-ups so far {cache.stats.setups:5d}  {ms:8.1f} ms")


if __name__ == "__main__":
    main()
