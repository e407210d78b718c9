"""Where the small CUDA kernel's time goes, and its staged schedule against the fused one (GPU only;
run by benchmarks/gpu_check.sh, output under $OUT/gpu_small_variants.txt).

The small kernel (csrc/optlayers/qp_small.h, one thread per problem) is the default on CUDA for
n ≤ 16, m ≤ 128 without equalities. Its stages (interior point until a polish is wanted, polish,
resume after a failed early polish) run either chained in one thread ("fused", the default) or as
separate launches over the batch ("staged"; csrc/optlayers/qp_cuda.h). This script measures, in
one run:

  * the compiled variants (csrc/optlayers/qp_cuda.h, kSmallVariants; selected with
    OPTLAYERS_CUDA_SMALL_VARIANT): 0 fused (default), 1 staged — forward time of the op alone
    (OPTLAYERS_CUDA_KERNEL=small-bare: no fallback; "left" counts what it would re-solve);
  * diagnostics on the default: the same batch sorted by iteration count (lanes of a warp then do
    equal work), polish off, polish only at the end (no early polish) or from 1e-4 on, and the
    clock64() profile of variants 4 (fused) and 5 (staged): share of each phase in the threads'
    time, polish calls per problem;
  * the iteration statistics: mean, max, and the mean over warps (32 consecutive problems) of the
    warp's largest count — what a warp that waits for its slowest lane pays.

Cases: the real grasp QPs (K = 4: n = 12, m = 41, shared G and h, float64) at B = 4,800 and 48,000,
and at 48,000 in float32 ("grasp48k-f32": where the kept iterate and the multiplier repair matter);
planted grasp-sized QPs (ol.testing.random_qp, shared G) at B = 48,000 (n = 12, m = 41, float64)
and B = 100,000 (n = 16, m = 55, float32). Times: CUDA events, median of --reps after a warm-up.

    python benchmarks/gpu_small_variants.py [--reps 5] [--cases grasp48k,planted100k] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import optlayers as ol  # noqa: E402
from gpu_bench import timed  # noqa: E402  (CUDA events, median after a warm-up)

VARIANTS = {0: "fused (default)", 1: "staged"}
PHASES = ("setup", "residual", "factor", "step", "polish", "fetch")


@contextlib.contextmanager
def env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update({k: str(v) for k, v in kv.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def captured_stderr(fn):
    """Run fn with the process's fd 2 sent to a temporary file (the C++ profile line); its text."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            fn()
            torch.cuda.synchronize()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return f.read().decode(errors="replace")


def cases(which):
    out = {}
    if any(w.startswith("grasp") for w in which):
        import grasp_qp as gq
        for B in (4_800, 48_000):
            name = f"grasp{B // 1000}k" if B % 1000 == 0 else f"grasp{B}"
            name = "grasp4.8k" if B == 4_800 else name
            if name in which:
                Q, q, G, h, _ = gq.grasp_batch(gq.Cell(4, B), 0, "box", "cuda")
                out[name] = (f"real grasp QPs B={B:,} n=12 m=41 f64", Q, q, G, h)
        if "grasp48k-f32" in which:  # float32: the polish fails on ill-determined ones (kept iterate, repair)
            Q, q, G, h, _ = gq.grasp_batch(gq.Cell(4, 48_000), 0, "box", "cuda")
            out["grasp48k-f32"] = ("real grasp QPs B=48,000 n=12 m=41 f32",
                                   *(t.to(torch.float32).contiguous() for t in (Q, q, G, h)))
    if "planted48k" in which:
        P = ol.testing.random_qp(48_000, 12, 41, 0, seed=0, shared=("G",), device="cuda")
        out["planted48k"] = ("planted B=48,000 n=12 m=41 f64 shared G", P.Q, P.q, P.G, P.h)
    if "planted100k" in which:
        P = ol.testing.random_qp(100_000, 16, 55, 0, seed=0, shared=("G",), dtype=torch.float32, device="cuda")
        out["planted100k"] = ("planted B=100,000 n=16 m=55 f32 shared G", P.Q, P.q, P.G, P.h)
    return out


class Sol:
    """The op's outputs that this script reads."""

    def __init__(self, out):
        self.x, self.status, self.iterations = out[0], out[3], out[4]


def solve(Q, q, G, h, polish=True, polish_start=None):
    """The qp_solve op alone (what the layer calls; no Python checks), as the layer's defaults set it
    (polish_start: None = the default early-polish threshold, 0 = polish only at the end)."""
    from optlayers._src.native import ops
    from optlayers._src.qp.problem import canonicalize
    from optlayers._src.tolerances import tolerances_for

    ok, why = ops.ensure_loaded()
    if not ok:
        raise RuntimeError(f"native build unavailable: {why}")
    d = canonicalize(Q, q, G, h)
    tl = tolerances_for(d.dtype)
    with torch.no_grad():
        return Sol(torch.ops.optlayers.qp_solve(*d.tensors(), d.B, tl.ipm_tol, tl.infeasibility_tol, tl.kkt_reg,
                                                tl.polish_tol, tl.polish_start if polish_start is None else polish_start,
                                                tl.step_to_boundary, 50, polish,
                                                False))


def profile_line(text):
    m = re.search(r"optlayers small profile: (.*)", text)
    if not m:
        return None
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", m.group(1))}


def run_case(key, label, Q, q, G, h, reps):
    rows = []
    print(f"== {label}", flush=True)
    with env(OPTLAYERS_CUDA_KERNEL="small-bare"):
        ref = solve(Q, q, G, h)
        it = ref.iterations.float()
        B = it.numel()
        pad = (-B) % 32
        warp_max = torch.cat([it, it.new_zeros(pad)]).view(-1, 32).amax(1).mean().item()
        print(f"  iterations: mean {it.mean():.2f}, max {int(it.max())}, mean of the warps' max {warp_max:.2f}; "
              f"left to the fallback {int((ref.status == -1).sum())}", flush=True)
        for v, name in VARIANTS.items():
            with env(OPTLAYERS_CUDA_SMALL_VARIANT=v):
                sol = solve(Q, q, G, h)
                ms = timed(lambda: solve(Q, q, G, h), reps)
            dx = float((sol.x - ref.x).abs().nan_to_num(float("inf")).max())
            row = {"case": key, "what": f"variant {v} ({name})", "fwd_ms": ms, "left": int((sol.status == -1).sum()),
                   "x_diff_vs_default": dx}
            rows.append(row)
            print(f"  {row['what']:<32} {ms:9.3f} ms   left {row['left']:>5}   |x - x_default| {dx:.1e}", flush=True)
        # Diagnostics on the default variant.
        order = torch.argsort(ref.iterations, stable=True)
        Qs = Q[order] if Q.dim() == 3 else Q
        qs = q[order]
        hs = h[order] if h.dim() == 2 else h
        ms = timed(lambda: solve(Qs, qs, G, hs), reps)
        rows.append({"case": key, "what": "default, batch sorted by iterations", "fwd_ms": ms})
        print(f"  {'default, sorted by iterations':<32} {ms:9.3f} ms", flush=True)
        nop = solve(Q, q, G, h, polish=False)
        ms = timed(lambda: solve(Q, q, G, h, polish=False), reps)
        rows.append({"case": key, "what": "default, polish off", "fwd_ms": ms,
                     "mean_iters": float(nop.iterations.float().mean()), "left": int((nop.status == -1).sum())})
        print(f"  {'default, polish off':<32} {ms:9.3f} ms   mean iterations {rows[-1]['mean_iters']:.2f} "
              f"left {rows[-1]['left']}", flush=True)
        # The early polish's threshold: a failed early polish costs a polish call, on the GPU ~10
        # interior-point iterations of a thread's time (H200 run 2's profile); 0 = no early polish,
        # one polish a problem after convergence; 1e-4 = later, fewer failed attempts (qp_small.h
        # on the host, 6,144 real grasp QPs, float64: polish calls 1.72 → 1.29 a problem, iterations
        # 10.4 → 10.5; planted n = 12: iterations 6.3 → 7.4, one polish either way).
        for ps, what in ((0.0, "default, polish only at the end"), (1e-4, "default, polish_start 1e-4")):
            fin = solve(Q, q, G, h, polish_start=ps)
            ms = timed(lambda: solve(Q, q, G, h, polish_start=ps), reps)
            rows.append({"case": key, "what": what, "fwd_ms": ms, "mean_iters": float(fin.iterations.float().mean()),
                         "left": int((fin.status == -1).sum())})
            print(f"  {what:<32} {ms:9.3f} ms   mean iterations {rows[-1]['mean_iters']:.2f} "
                  f"left {rows[-1]['left']}", flush=True)
        for v in (4, 5):
            with env(OPTLAYERS_CUDA_SMALL_VARIANT=v):
                solve(Q, q, G, h)
                text = captured_stderr(lambda: solve(Q, q, G, h))
            prof = profile_line(text)
            if prof is None:
                print(f"  profile variant {v}: no profile line in stderr: {text[-300:]!r}", flush=True)
                continue
            total = max(prof.get("total", 1), 1)
            shares = {p: prof.get(p, 0) / total for p in PHASES}
            n = max(prof.get("problems", 1), 1)
            rows.append({"case": key, "what": f"profile variant {v}", **prof})
            print(f"  profile ({VARIANTS[v - 4]}): " + ", ".join(f"{p} {s:.1%}" for p, s in shares.items())
                  + f"; polish calls/problem {prof.get('polish_calls', 0) / n:.2f}, iterations/problem "
                  f"{prof.get('iterations', 0) / n:.2f}, cycles/problem/thread {total / n:,.0f}", flush=True)
    return rows


def preflight() -> int:
    """Fused (default) vs staged schedule on 4,800 real grasp QPs and 10,000 planted ones: status,
    iterations, x and λ must be equal bit for bit (what tests/native/test_native_cuda.py checks)."""
    import grasp_qp as gq

    Q, q, G, h, _ = gq.grasp_batch(gq.Cell(4, 4_800), 0, "box", "cuda")
    P = ol.testing.random_qp(10_000, 12, 41, 0, seed=0, shared=("G",), device="cuda")
    ok_all = True
    for label, data in (("grasp", (Q, q, G, h)), ("planted", (P.Q, P.q, P.G, P.h))):
        with env(OPTLAYERS_CUDA_KERNEL="small-bare"):
            with env(OPTLAYERS_CUDA_SMALL_VARIANT=0):
                a = solve(*data)
            with env(OPTLAYERS_CUDA_SMALL_VARIANT=1):
                b = solve(*data)
        ok = a.status == 0
        same = (torch.equal(a.status, b.status) and torch.equal(a.iterations, b.iterations)
                and torch.equal(a.x[ok], b.x[ok]))
        print(f"preflight {label}: fused == staged: {same}; solved {int(ok.sum())} of {ok.numel()}", flush=True)
        ok_all &= same
    return 0 if ok_all else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cases", default="grasp48k,grasp48k-f32,grasp4.8k,planted48k,planted100k")
    ap.add_argument("--json")
    ap.add_argument("--ncu", action="store_true", help="one solve per case only (for Nsight Compute)")
    ap.add_argument("--preflight", action="store_true",
                    help="exit 1 unless the two schedules give the same results (gpu_check.sh)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    if args.preflight:
        return preflight()
    if args.ncu:
        for key, (label, Q, q, G, h) in cases(args.cases.split(",")).items():
            solve(Q, q, G, h)
            torch.cuda.synchronize()
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows = []
    for key, (label, Q, q, G, h) in cases(args.cases.split(",")).items():
        try:
            rows += run_case(key, label, Q, q, G, h, args.reps)
        except Exception as e:  # report and go on with the next case
            print(f"  {key}: {type(e).__name__}: {e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
