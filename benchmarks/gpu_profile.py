"""Where the GPU time goes (torch.profiler, CUDA kernels by total time), for the cases whose
targets are missed: run by benchmarks/gpu_check.sh, output under $OUT/gpu_profile.txt.

  1. B = 10,000, n = 100, m = 200, float64, the PyTorch backend (auto's choice for n > 16 on CUDA);
  2. B = 48,000 grasp-sized, n = 12, m = 41, float64, forward+backward through the native small
     kernel (what is left besides the kernel: the fallback's nonzero, the backward's Python).
"""

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


def main():
    which = sys.argv[1:] or ["large", "grasp"]
    unknown = [w for w in which if w not in ("large", "grasp")]
    if unknown:  # (--help included: the cases are the only arguments)
        print(__doc__ + "\nusage: python benchmarks/gpu_profile.py [large] [grasp]   (default: both)")
        sys.exit(0 if unknown in (["-h"], ["--help"]) else 2)
    if "grasp" in which:
        P = ol.testing.random_qp(48_000, 12, 41, 0, seed=0, shared=("G",), device="cuda")
        q = P.q.clone().requires_grad_()

        def grasp():
            ol.solve_qp(P.Q, q, P.G, P.h, backend="native", check_inputs=False).sum().backward()

        run("B=48k n=12 m=41 f64 shared G, native (small kernel), fwd+bwd", grasp)
    if "large" in which:
        P = ol.testing.random_qp(10_000, 100, 200, 0, seed=0, device="cuda")
        run("B=10k n=100 m=200 f64, torch backend, fwd",
            lambda: ol.solve_qp(*P.data(), backend="torch", check_inputs=False))


if __name__ == "__main__":
    main()
