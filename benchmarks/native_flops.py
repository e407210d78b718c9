"""Achieved GFLOP/s of the native CPU kernel against this machine's peak (issue #4).

For each size of ``compare_qp.py`` the native forward (interior point + polish) is timed and its
useful floating-point work is counted from a model of the algorithm in ``csrc/optlayers/qp_ipm.h``
(2 flops per multiply-add; padding and refinement overheads are *not* counted, so this is a
lower bound on the work done):

    per factorization   K = Q + G̃ᵀWG̃: m·n(n+1)/2,   Cholesky: n³/6,   Z = L⁻¹Ãᵀ: p·n²/2,
                        S = ZZᵀ: n·p(p+1)/2,          Cholesky of S: p³/6         multiply-adds
    per iteration       one factorization + residuals (n² + 2mn + 2pn) + two Newton steps
                        (2·(2mn + n² + 2pn + p²))
    start               one factorization + one step;  polish: LU of N = n + k + p (k active rows,
                        counted from the solution): N³/3, plus 4 triangular solve pairs (4N²)

Peak: cores × GHz × 2 FMA units × (64 B / 8 B) lanes × 2 flops (AVX-512, float64). The default
2.5 GHz is this machine's nominal clock (``lscpu``); AVX-512 code usually runs slower, so the
fraction reported is, if anything, flattering to the peak. Pass ``--ghz`` / ``--fma-units`` for
another CPU.

Usage:
    python benchmarks/native_flops.py
    python benchmarks/native_flops.py --sizes 128x50x50x10 --repeats 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import optlayers as ol
from optlayers._src.native import ops
from optlayers._src.qp.problem import canonicalize
from optlayers._src.tolerances import tolerances_for

SIZES = ((1, 10, 10, 3), (32, 20, 20, 5), (128, 50, 50, 10), (8, 200, 200, 50), (4800, 12, 41, 0))


def model_flops(n: int, m: int, p: int, iters: torch.Tensor, active: torch.Tensor) -> float:
    """Multiply-adds × 2 for one batch, from the per-problem iteration counts and active-row counts."""
    fac = m * n * (n + 1) / 2 + n**3 / 6 + p * n * n / 2 + n * p * (p + 1) / 2 + p**3 / 6
    step = 2 * m * n + n * n + 2 * p * n + p * p
    resid = n * n + 2 * m * n + 2 * p * n
    per_iter = fac + resid + 2 * step
    start = fac + step
    N = n + active.to(torch.float64) + p
    polish = N**3 / 3 + 4 * N**2
    fma = (iters.to(torch.float64) * per_iter + start + polish).sum().item()
    return 2.0 * fma


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", help="comma-separated BxNxMxP (default: compare_qp's four + grasp 4800x12x41x0)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--ghz", type=float, default=2.5)
    ap.add_argument("--fma-units", type=int, default=2)
    args = ap.parse_args(argv)
    ok, why = ops.ensure_loaded()
    if not ok:
        print(f"native kernel unavailable: {why}")
        return 1
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")] if args.sizes else SIZES
    threads = torch.get_num_threads()
    peak = threads * args.ghz * args.fma_units * 8 * 2
    load = os.getloadavg()
    print(f"native CPU kernel, float64, forward (interior point + polish); torch threads {threads}; "
          f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    print(f"peak {peak:.0f} GFLOP/s = {threads} cores × {args.ghz} GHz × {args.fma_units} FMA units × 8 lanes × 2")
    print(f"{'size':>22} {'iters':>6} {'fwd ms':>8} {'model GFLOP':>12} {'GFLOP/s':>8} {'% peak':>7}")
    tol = tolerances_for(torch.float64).ipm_tol
    for B, n, m, p in sizes:
        P = ol.testing.random_qp(B, n, m, p, seed=0, dtype=torch.float64)
        data = canonicalize(P.Q, P.q, P.G, P.h, P.A, P.b)
        ops.solve(data, tol, 50, True)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            x, lam, nu, status, iters = ops.solve(data, tol, 50, True)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        active = (lam > 0).sum(-1)
        gflop = model_flops(n, m, p, iters, active) / 1e9
        print(f"{f'B={B} n={n} m={m} p={p}':>22} {iters.double().mean().item():6.2f} {t * 1e3:8.2f} "
              f"{gflop:12.4f} {gflop / t:8.2f} {100 * gflop / t / peak:6.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
