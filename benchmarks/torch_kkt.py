"""The PyTorch backend's two active-set KKT factorizations in the same run: LU vs. reduced Cholesky.

The polish and the backward of ``backend="torch"`` solve the active-set KKT system K_δ
(``optlayers/_src/qp/kkt.py``): either by the LU of the (n+m+p)² matrix, or — the float64 default
— by an n×n Cholesky of H = Q + δI + (GᵀMG + AᵀA)/δ with refinement and an LU fallback for the
problems it cannot solve to round-off. ``OPTLAYERS_TORCH_KKT=lu`` forces the LU. This script times
``ol.solve_qp(..., backend="torch")`` forward and forward+backward (gradients w.r.t. all inputs)
under both settings for each size, float64, and prints the ratios LU / Cholesky (> 1: Cholesky
faster) and each run's max |x − x*| against the planted solution (grasp rows: against the native
backend, or the LU row without it).

Usage:
    python benchmarks/torch_kkt.py                    # all sizes, CPU
    python benchmarks/torch_kkt.py --device cuda      # on a GPU (adds B = 10,000, n = 100, m = 200)
    python benchmarks/torch_kkt.py --quick            # CI smoke: two small sizes, few repeats
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import optlayers as ol  # noqa: E402
from _ab import median_solve_ms, restored_env  # noqa: E402
from native_lanes import grasp_data  # noqa: E402

SIZES = [  # (B, n, m, p)
    (32, 20, 20, 5),
    (128, 50, 50, 10),
    (64, 100, 200, 10),
    (8, 200, 200, 50),
]
GPU_SIZES = [(1024, 20, 20, 5), (1024, 50, 50, 10), (10_000, 100, 200, 0)]


def time_run(data, factor: str, reps: int, backward: bool) -> tuple[float, torch.Tensor]:
    """Median ms of one solve (+ backward) with ``OPTLAYERS_TORCH_KKT=factor``, and its x."""
    os.environ["OPTLAYERS_TORCH_KKT"] = factor
    return median_solve_ms(data, "torch", reps, backward)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    sizes = SIZES[:2] if args.quick else SIZES + (GPU_SIZES if device.type == "cuda" else [])
    reps = 1 if args.quick else args.reps
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, torch threads {torch.get_num_threads()}"
    print(f"torch backend, KKT factor LU vs reduced Cholesky, float64, {name}, load average {load}")
    print(f"{'size':>28}  {'fwd LU':>8}  {'fwd chol':>8}  {'ratio':>6}  {'f+b LU':>8}  {'f+b chol':>8}  {'ratio':>6}"
          f"  {'x err LU':>8}  {'x err chol':>10}")
    cases = []
    for B, n, m, p in sizes:
        P = ol.testing.random_qp(B, n, m, p, seed=0, device=device)
        cases.append((f"B={B} n={n} m={m} p={p}", P.data(), P.x))
    if not args.quick:
        data = tuple(t.to(device) for t in grasp_data(4800))
        ok, _ = ol.native.status()
        ref = ol.solve_qp(*data, backend="native") if ok and device.type == "cpu" else None
        cases.append(("grasp B=4800 n=12 m=41 p=0", data, ref))
    with restored_env("OPTLAYERS_TORCH_KKT"):
        for label, data, x_ref in cases:
            f_lu, x_lu = time_run(data, "lu", reps, False)
            f_ch, x_ch = time_run(data, "auto", reps, False)
            b_lu, _ = time_run(data, "lu", reps, True)
            b_ch, _ = time_run(data, "auto", reps, True)
            ref = x_lu if x_ref is None else x_ref
            e_lu, e_ch = (float((x - ref).abs().max()) for x in (x_lu, x_ch))
            print(f"{label:>28}  {f_lu:8.1f}  {f_ch:8.1f}  {f_lu / f_ch:6.2f}  {b_lu:8.1f}  {b_ch:8.1f}  "
                  f"{b_lu / b_ch:6.2f}  {e_lu:8.1e}  {e_ch:10.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
