"""GPU benchmark of the native QP kernel (issue targets), run by benchmarks/gpu_check.sh.

Cases (forward, and forward+backward w.r.t. q and h):
  1. B = 10,000, n = 100, m = 200, float64 (per-problem data)          target: fwd within 5× of the
     arithmetic bound (~7 ms on an H100);
  2. B = 100,000 grasp-sized, n = 16, m = 55, shared G, float32         target: < 1 ms;
  3. B = 1,024 and 4,096, n = 20, m = 20, p = 5, float64, vs. qpth on the same GPU (if installed).
Prints a table and optionally writes JSON. Timings use CUDA events, median of repeats.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import optlayers as ol


def timed(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        ts.append(start.elapsed_time(end))
    ts.sort()
    return ts[len(ts) // 2]


def case(name, B, n, m, p, dtype, shared=(), backend="native"):
    P = ol.testing.random_qp(B, n, m, p, seed=0, shared=shared, dtype=dtype, device="cuda")
    q = P.q.clone().requires_grad_()
    h = P.h.clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            return ol.solve_qp(P.Q, q, P.G, h, P.A, P.b, backend=backend, check_inputs=False)

    def fwd_bwd():
        x = ol.solve_qp(P.Q, q, P.G, h, P.A, P.b, backend=backend, check_inputs=False)
        x.sum().backward()

    sol = ol.solve_qp(P.Q, P.q, P.G, P.h, P.A, P.b, backend=backend, return_solution=True, on_failure="nan")
    err = float((sol.x - P.x).abs().nan_to_num(float("inf")).max())
    return {"case": name, "backend": backend, "B": B, "n": n, "m": m, "p": p, "dtype": str(dtype),
            "fwd_ms": timed(fwd), "fwd_bwd_ms": timed(fwd_bwd), "x_err": err,
            "solved": int((sol.status == 0).sum())}


def qpth_case(B, n, m, p):
    try:
        from qpth.qp import QPFunction
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        return {"case": f"qpth B={B}", "skipped": str(exc)}
    P = ol.testing.random_qp(B, n, m, p, seed=0, device="cuda")
    q = P.q.clone().requires_grad_()

    def fwd_bwd():
        x = QPFunction(verbose=-1, eps=1e-12, maxIter=50)(P.Q, q, P.G, P.h, P.A, P.b)
        x.sum().backward()

    return {"case": f"qpth B={B}", "fwd_bwd_ms": timed(fwd_bwd, reps=3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print("GPU:", torch.cuda.get_device_name(), "| native:", ol.native.status())
    rows = [
        case("B=10k n=100 m=200 f64", 10_000, 100, 200, 0, torch.float64),
        case("B=100k grasp n=16 m=55 f32 shared G", 100_000, 16, 55, 0, torch.float32, shared=("G",)),
        case("B=100k grasp (torch backend)", 100_000, 16, 55, 0, torch.float32, shared=("G",), backend="torch"),
    ]
    for B in (1024, 4096):
        rows.append(case(f"B={B} n=20 m=20 p=5 f64", B, 20, 20, 5, torch.float64))
        rows.append(qpth_case(B, 20, 20, 5))
    for r in rows:
        print(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "time": time.ctime(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
