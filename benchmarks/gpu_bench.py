"""GPU benchmark of the QP layers (issue targets), run by benchmarks/gpu_check.sh.

Cases (forward, and forward+backward of Σx w.r.t. q and h), each for the native CUDA kernel and
the PyTorch backend on the same GPU, in the same run:
  1. B = 10,000, n = 100, m = 200, float64 (per-problem data)        target: fwd+bwd within 5× of
     the arithmetic bound (the issue puts the forward's at about 7 ms on an H100);
  2. B = 100,000 grasp-sized, n = 16, m = 55, one G, float32          target: < 1 ms;
  3. B = 48,000 grasp-sized, n = 12, m = 41, one G, float64/float32   target: fwd+bwd < 5 ms;
  4. B = 1,024 and 4,096, n = 20, m = 20, p = 5, float64, and qpth on the same GPU when importable
     (target: ≥ 10× faster than qpth for B ≥ 1,024).
Timings: CUDA events around the whole call (Python included), median of repeats, after one
warm-up. Accuracy: max |x − x*| against the planted solution of ``ol.testing.random_qp``.
Prints one line per row and a summary with ratios; ``--json`` writes all rows.
"""

from __future__ import annotations

import argparse
import json
import os
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


def case(name, B, n, m, p, dtype, shared=(), backend="native", reps=5):
    """One row. ``backend`` is "torch", "native" (the kernel plan_launch picks) or "native-<kernel>"
    (small, thread, warp, block: forced through OPTLAYERS_CUDA_KERNEL)."""
    os.environ.pop("OPTLAYERS_CUDA_KERNEL", None)
    if backend.startswith("native-"):
        os.environ["OPTLAYERS_CUDA_KERNEL"] = backend.split("-", 1)[1]
    try:
        return _case(name, B, n, m, p, dtype, shared, backend, reps)
    finally:
        os.environ.pop("OPTLAYERS_CUDA_KERNEL", None)


def _case(name, B, n, m, p, dtype, shared, label, reps):
    backend = "native" if label.startswith("native") else label
    P = ol.testing.random_qp(B, n, m, p, seed=0, shared=shared, dtype=dtype, device="cuda")
    q = P.q.clone().requires_grad_()
    h = P.h.clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            return ol.solve_qp(P.Q, q, P.G, h, P.A, P.b, backend=backend, check_inputs=False)

    def fwd_bwd():
        x = ol.solve_qp(P.Q, q, P.G, h, P.A, P.b, backend=backend, check_inputs=False)
        x.sum().backward()

    t0 = time.perf_counter()
    sol = ol.solve_qp(P.Q, P.q, P.G, P.h, P.A, P.b, backend=backend, return_solution=True, on_failure="nan")
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    reps = reps if first < 2.0 else 1
    err = float((sol.x - P.x).abs().nan_to_num(float("inf")).max())
    row = {"case": name, "backend": label, "B": B, "n": n, "m": m, "p": p, "dtype": str(dtype).split(".")[-1],
           "fwd_ms": timed(fwd, reps), "fwd_bwd_ms": timed(fwd_bwd, reps), "x_err": err,
           "solved": int((sol.status == 0).sum()), "mean_iters": float(sol.iterations.float().mean())}
    if label == "native-small":
        row.update(small_kernel_details(P, reps))
    print(row, flush=True)
    return row


def small_kernel_details(P, reps):
    """For the small kernel: the op alone (no Python layer: what a CUDA graph or a C++ caller would
    see), and how many problems it leaves to its warp-kernel fallback (OPTLAYERS_CUDA_KERNEL=small-bare
    keeps their status −1)."""
    from optlayers._src.qp.problem import canonicalize
    from optlayers._src.tolerances import tolerances_for

    d = canonicalize(*P.data())
    tl = tolerances_for(d.dtype)
    args = (*d.tensors(), d.B, tl.ipm_tol, tl.infeasibility_tol, tl.kkt_reg, tl.polish_tol, tl.polish_start,
            tl.step_to_boundary, 100, True, False)
    op_ms = timed(lambda: torch.ops.optlayers.qp_solve(*args), reps)
    os.environ["OPTLAYERS_CUDA_KERNEL"] = "small-bare"
    try:
        bare_ms = timed(lambda: torch.ops.optlayers.qp_solve(*args), reps)
        status = torch.ops.optlayers.qp_solve(*args)[3]
    finally:
        os.environ["OPTLAYERS_CUDA_KERNEL"] = "small"
    return {"op_ms": op_ms, "kernel_only_ms": bare_ms, "left_to_fallback": int((status == -1).sum())}


def qpth_case(name, B, n, m, p):
    try:
        from qpth.qp import QPFunction
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        row = {"case": name, "backend": "qpth", "skipped": f"{type(exc).__name__}: {exc}"}
        print(row, flush=True)
        return row
    P = ol.testing.random_qp(B, n, m, p, seed=0, device="cuda")
    q = P.q.clone().requires_grad_()
    fn = QPFunction(verbose=-1, eps=1e-12, maxIter=50)

    def fwd():
        with torch.no_grad():
            return fn(P.Q, q, P.G, P.h, P.A, P.b)

    def fwd_bwd():
        x = fn(P.Q, q, P.G, P.h, P.A, P.b)
        x.sum().backward()

    x = fwd()
    row = {"case": name, "backend": "qpth", "B": B, "n": n, "m": m, "p": p, "dtype": "float64",
           "fwd_ms": timed(fwd, 3), "fwd_bwd_ms": timed(fwd_bwd, 3),
           "x_err": float((x - P.x).abs().nan_to_num(float("inf")).max())}
    print(row, flush=True)
    return row


def flops_ipm(n, m, p, iters):
    """Multiply-adds × 2 of the interior point's dense work per problem: per iteration GᵀWG (n²m),
    Cholesky (n³/3), two solves with G products (8nm + 4n²) — the arithmetic bound counts these."""
    return 2 * iters * (n * n * m + n ** 3 / 3 + 8 * n * m + 4 * n * n + p * n * n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--skip-torch", action="store_true", help="native rows only")
    ap.add_argument("--budget-s", type=float, default=150.0, help="start no new row after this many seconds")
    ap.add_argument("--cases", help="comma-separated substrings: run only the cases whose name contains one")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    props = torch.cuda.get_device_properties(0)
    print("GPU:", torch.cuda.get_device_name(), f"({props.multi_processor_count} SMs)", "| torch", torch.__version__,
          "| native:", ol.native.status(), flush=True)
    # Cheap and most informative rows first (a --budget-s cut loses the slow ones at the end).
    # The small kernel (default for n ≤ 16, m ≤ 128, p = 0) against the warp kernel it replaced
    # there; the thread kernel lost every case before (results/gpu_h100.txt) and is not rerun.
    torch_row = [] if args.skip_torch else ["torch"]
    small = ["native-small", "native-warp"] + torch_row
    group = ["native-warp"] + torch_row
    specs = [
        ("B=48k grasp n=12 m=41 f64 shared G", 48_000, 12, 41, 0, torch.float64, ("G",), small),
        ("B=100k grasp n=16 m=55 f32 shared G", 100_000, 16, 55, 0, torch.float32, ("G",), small),
        ("B=4800 grasp n=12 m=41 f64 shared G", 4_800, 12, 41, 0, torch.float64, ("G",), small),
        ("B=48k grasp n=15 m=51 f64 shared G", 48_000, 15, 51, 0, torch.float64, ("G",), ["native-small"]),
        # The block kernel rewritten in the ninth session (K in opt-in shared memory, coalesced loops,
        # warp-blocked triangular solves); first run on an H100 on 2026-11-28: B=10k 1,866 ms against
        # the torch backend's 404 (results/gpu_h100_2026-11-28.txt). Early, so a budget cut keeps it.
        ("B=1024 n=100 m=200 f64", 1024, 100, 200, 0, torch.float64, (), ["native-block", "torch"]),
        ("B=10k n=100 m=200 f64", 10_000, 100, 200, 0, torch.float64, (), ["native-block", "torch"]),
        ("B=1024 n=16 m=32 f64", 1024, 16, 32, 0, torch.float64, (), ["native-small", "native-warp", "qpth"]),
        ("B=1024 n=20 m=20 p=5 f64", 1024, 20, 20, 5, torch.float64, (), group + ["qpth"]),
        ("B=4096 n=20 m=20 p=5 f64", 4096, 20, 20, 5, torch.float64, (), group + ["qpth"]),
        ("B=128 n=20 m=20 p=5 f64", 128, 20, 20, 5, torch.float64, (), group),
        ("B=48k grasp n=12 m=41 f32 shared G", 48_000, 12, 41, 0, torch.float32, ("G",), small),
        ("B=1024 n=50 m=50 p=10 f64", 1024, 50, 50, 10, torch.float64, (), ["native-block", "torch"]),
    ]
    if args.cases:
        keys = [k.strip() for k in args.cases.split(",") if k.strip()]
        specs = [sp for sp in specs if any(k in sp[0] for k in keys)]
    rows = []
    t_start = time.perf_counter()
    for name, B, n, m, p, dtype, shared, variants in specs:
        for be in variants:
            if time.perf_counter() - t_start > args.budget_s:
                rows.append({"case": name, "backend": be, "skipped": f"over --budget-s {args.budget_s:g}"})
                print(rows[-1], flush=True)
                continue
            try:
                if be == "qpth":
                    rows.append(qpth_case(name, B, n, m, p))
                else:
                    rows.append(case(name, B, n, m, p, dtype, shared=shared, backend=be))
            except Exception as exc:  # noqa: BLE001 - report and go on: one broken row must not lose the rest
                rows.append({"case": name, "backend": be, "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(rows[-1], flush=True)

    print("\nSummary (fwd+bwd ms; ratio = other / the first native row of the case):")
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["backend"]] = r
    for name, rs in by_case.items():
        first = next((be for be in rs if be.startswith("native")), "native")
        nat = rs.get(first, {})
        line = f"  {name:36s} {first} {nat.get('fwd_bwd_ms', float('nan')):9.3f}"
        for be, r in rs.items():
            if be != first and "fwd_bwd_ms" in r and "fwd_bwd_ms" in nat:
                line += f" | {be} {r['fwd_bwd_ms']:9.3f} ({r['fwd_bwd_ms'] / nat['fwd_bwd_ms']:.1f}x)"
        if "fwd_ms" in nat:
            fl = flops_ipm(nat["n"], nat["m"], nat["p"], nat["mean_iters"]) * nat["B"]
            line += f" | native fwd {nat['fwd_ms']:.3f} ms = {fl / nat['fwd_ms'] / 1e6:.0f} GFLOP/s (IPM count)"
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "time": time.ctime(),
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
