"""The native CPU kernel's two paths in the same run: batch-interleaved lanes vs. one problem per thread.

``csrc/optlayers/qp_lanes.h`` solves W problems per SIMD vector; ``OPTLAYERS_CPU_LANES=1`` forces
it, ``=0`` forces the serial path (``qp_ipm.h``), unset lets the op choose (n ≤ 80, m + p ≤ 128,
B ≥ two blocks). This script times forward+backward (gradients w.r.t. all inputs) of
``ol.solve_qp(..., backend="native")`` under both settings for each size, float64, and prints the
ratio serial / lanes (> 1: lanes faster) plus the max |x_lanes − x_serial|. The sizes cover the
auto-routing limits (``kLanesMaxN`` in csrc/qp_cpu_common.h was set from these numbers) and the grasp
QPs of ``grasp_qp.py`` (n = 12, m = 41, shared G).

Usage:
    python benchmarks/native_lanes.py            # all sizes
    python benchmarks/native_lanes.py --quick    # CI smoke: two small sizes, few repeats
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import optlayers as ol  # noqa: E402
from _ab import median_solve_ms, restored_env  # noqa: E402

SIZES = [  # (B, n, m, p)
    (32, 20, 20, 5),
    (256, 30, 60, 5),
    (64, 40, 100, 0),
    (16, 50, 50, 10),
    (128, 50, 50, 10),
    (128, 64, 64, 10),
    (128, 80, 80, 10),
    (64, 100, 100, 10),
    (8, 200, 200, 50),
]


def grasp_data(B: int):
    import grasp_model as gm
    return gm.qp_batch(gm.OBJECTS["box"], gm.GraspConfig(contacts=4, wrenches=6), B // 6, 0)


def time_fwd_bwd(data, lanes: str, reps: int) -> tuple[float, torch.Tensor]:
    os.environ["OPTLAYERS_CPU_LANES"] = lanes
    return median_solve_ms(data, "native", reps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    ok, why = ol.native.status()
    if not ok:
        print(f"native kernel unavailable: {why}")
        return 0
    sizes = SIZES[:2] if args.quick else SIZES
    reps = 2 if args.quick else args.reps
    print(f"native CPU kernel, lanes vs serial, fwd+bwd float64, torch threads {torch.get_num_threads()}, "
          f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'size':>28}  {'lanes ms':>9}  {'serial ms':>9}  {'serial/lanes':>12}  {'max |dx|':>9}")
    cases = [(f"B={B} n={n} m={m} p={p}", ol.testing.random_qp(B, n, m, p, seed=0).data()) for B, n, m, p in sizes]
    if not args.quick:
        cases.append(("grasp B=4800 n=12 m=41 p=0", grasp_data(4800)))
    with restored_env("OPTLAYERS_CPU_LANES"):
        for name, data in cases:
            t_l, x_l = time_fwd_bwd(data, "1", reps)
            t_s, x_s = time_fwd_bwd(data, "0", reps)
            print(f"{name:>28}  {t_l:9.2f}  {t_s:9.2f}  {t_s / t_l:12.2f}  {float((x_l - x_s).abs().max()):9.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
