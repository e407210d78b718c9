"""Where the GPU time goes (torch.profiler, CUDA kernels by total time), for the cases whose
targets are missed: run by benchmarks/gpu_check.sh, output under $OUT/gpu_profile.txt.

  1. B = 10,000, n = 100, m = 200, float64, the PyTorch backend (auto's choice for n > 16 on CUDA);
  2. B = 48,000 grasp-sized, n = 12, m = 41, float64, forward+backward through the native small
     kernel (what is left besides the kernel: the fallback's nonzero, the backward's Python);
  3. ("realgrasp") B = 4,800 real contact-force QPs of benchmarks/grasp_qp.py (n = 12, m = 41,
     degenerate: 13 active rows a problem on average, up to 30 > n), native fwd+bwd w.r.t. Q and q,
     and the backward's K-solve (qp_kkt_solve) alone with each CUDA kernel (H100, 2026-11-28:
     12.8 ms fwd+bwd, the K-solve 0.6 ms; grasp_qp.py's 0.7 s for the same call was its first
     call's CUDA lazy loading).
"""

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import optlayers as ol


def run(label, fn, rows=18):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(f"== {label}", flush=True)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows), flush=True)


def real_grasp():
    import grasp_qp  # (benchmarks/, the script's directory, is on sys.path)
    from _ab import median_ms, restored_env
    from optlayers._src.native import ops
    from optlayers._src.qp import kkt
    from optlayers._src.qp.problem import canonicalize

    Q, q, G, h, c = grasp_qp.grasp_batch(grasp_qp.Cell(contacts=4, B=4800), 0, "box", "cuda")
    Qg, qg = Q.clone().requires_grad_(), q.clone().requires_grad_()

    def fwd():
        return ol.solve_qp(Q, q, G, h, backend="native", return_solution=True)

    def fwd_bwd():
        x = ol.solve_qp(Qg, qg, G, h, backend="native")
        torch.autograd.grad((x * c).sum(), [Qg, qg])

    sol = fwd()
    mask = kkt.classify_active(sol.lam, h - sol.x @ G.T)
    data = canonicalize(Q, q, G, h)
    rhs = torch.cat([c, torch.zeros_like(mask)], -1)
    # Iterations and problems left at the interior point's solution (|λ∘s| > 1e-13, unpolished): the
    # small kernel's host emulation (OPTLAYERS_CPU_LANES=0 OPTLAYERS_CPU_SMALL=2, this batch) gives
    # 5.91 iterations and 0 unpolished on 2026-11-28's code (8.54 iterations before the balanced
    # starting point; the H200 measured 8.6 on 48,000 such QPs before it).
    unpolished = int(((sol.lam * (h - sol.x @ G.T)).abs().amax(-1) > 1e-13).sum())
    print(f"== B=4800 real grasp QPs (box, K=4), f64: solved {int((sol.status == 0).sum())}; active rows a "
          f"problem mean {float(mask.sum(-1).mean()):.1f} max {int(mask.sum(-1).max())}; iterations mean "
          f"{float(sol.iterations.double().mean()):.2f}; unpolished {unpolished}", flush=True)
    print(f"  native fwd {median_ms(fwd, 3, 'cuda')[0]:.2f} ms, fwd+bwd {median_ms(fwd_bwd, 3, 'cuda')[0]:.2f} ms",
          flush=True)
    ref = ops.kkt_solve(data, mask, rhs)
    with restored_env("OPTLAYERS_CUDA_KERNEL"):
        for k in ("", "small", "warp", "thread", "block"):
            os.environ["OPTLAYERS_CUDA_KERNEL"] = k
            ms, u = median_ms(lambda: ops.kkt_solve(data, mask, rhs), 3, "cuda")
            print(f"  qp_kkt_solve alone, kernel {k or 'default'}: {ms:.2f} ms, max|u - default| "
                  f"{float((u - ref).abs().max()):.2e}, max|u| {float(u.abs().max()):.2e}", flush=True)
    run("B=4800 real grasp QPs, native fwd+bwd (by CUDA time)", fwd_bwd)
    fwd_bwd()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fwd_bwd()
        torch.cuda.synchronize()
    print("== the same by CPU time", flush=True)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18), flush=True)


def main():
    which = sys.argv[1:] or ["large", "grasp", "realgrasp"]
    unknown = [w for w in which if w not in ("large", "grasp", "realgrasp")]
    if unknown:  # (--help included: the cases are the only arguments)
        print(__doc__ + "\nusage: python benchmarks/gpu_profile.py [large] [grasp] [realgrasp]   (default: all)")
        sys.exit(0 if unknown in (["-h"], ["--help"]) else 2)
    if "grasp" in which:
        P = ol.testing.random_qp(48_000, 12, 41, 0, seed=0, shared=("G",), device="cuda")
        q = P.q.clone().requires_grad_()

        def grasp():
            ol.solve_qp(P.Q, q, P.G, P.h, backend="native", check_inputs=False).sum().backward()

        run("B=48k n=12 m=41 f64 shared G, native (small kernel), fwd+bwd", grasp)
    if "realgrasp" in which:
        real_grasp()
    if "large" in which:
        P = ol.testing.random_qp(10_000, 100, 200, 0, seed=0, device="cuda")
        run("B=10k n=100 m=200 f64, torch backend, fwd",
            lambda: ol.solve_qp(*P.data(), backend="torch", check_inputs=False))


if __name__ == "__main__":
    main()
