"""``backend="native"``: the csrc/ kernel behind the QP backend registry."""

from __future__ import annotations

from optlayers._src.qp.backends import RawSolution
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import QPData

# CUDA: the native kernels take problems up to n + m + p = CUDA_MAX_KKT_SIZE (each problem's KKT
# workspace, (n+m+p)² scalars per resident thread group, lives in global memory). "auto" uses them
# up to n = CUDA_AUTO_MAX_N and the PyTorch backend (batched cuBLAS/cuSOLVER) above. Measured on an
# H100 (benchmarks/results/gpu_h100.txt, fwd+bwd, float64): B=1,024, n=50 (block kernel, K in
# shared memory) native 22.8 ms vs torch 47.7 ms; B=10,000, n=100, m=200 (K in global memory)
# native 3,240 ms vs torch 400 ms. The block kernel has since been rewritten (K in opt-in shared
# memory up to n = 170 in float64, coalesced loops: csrc/optlayers/qp_ipm.h); on an H100
# (2026-11-28, results/gpu_h100_2026-11-28.txt, each pair in one run): n = 50, B = 1,024 native 18.5 vs torch
# 116.6 ms; n = 100, m = 200: B = 1,024 197 vs 188, B = 10,000 1,866 vs 404 (the native backward
# refactors K; the torch one reuses its forward factor). So the limit stays between the two.
CUDA_MAX_KKT_SIZE = 512
CUDA_AUTO_MAX_N = 64
# On CPU the native kernel solves one problem per thread with SIMD loops over padded rows. Measured
# (fwd+bwd, float64, same run, 2 cores): native 122 ms vs torch 286 ms at B=8, n=200, m=200, p=50 and
# 166 vs 287 ms at B=4, n=300. Beyond the measured range the PyTorch backend's multi-threaded
# BLAS-3 may win for a few large problems, so "auto" stops here (explicit backend="native" works at
# any size).
CPU_AUTO_MAX_N = 300


class NativeBackend:
    name = Backend.NATIVE

    def availability(self) -> tuple[bool, str]:
        from optlayers._src.native import ops

        return ops.ensure_loaded()

    def supports(self, data: QPData) -> bool:
        if data.device.type == "cpu":
            return True
        if data.device.type == "cuda":
            from optlayers._src.native import ops

            return ops.cuda_available() and data.n + data.m + data.p <= CUDA_MAX_KKT_SIZE
        return False

    def auto_eligible(self, data: QPData) -> bool:
        return data.n <= (CPU_AUTO_MAX_N if data.device.type == "cpu" else CUDA_AUTO_MAX_N)

    def solve(self, data: QPData, options: QPOptions) -> RawSolution:
        from optlayers._src.native import ops

        x, lam, nu, status, iters = ops.solve(data, options.tol_for(data.dtype), options.max_iter, options.polish)
        return RawSolution(x=x, lam=lam, nu=nu, status=status, iterations=iters, kkt_solver="native")

    def solve_keeping(self, data: QPData, options: QPOptions) -> RawSolution:
        """:meth:`solve` that also keeps the polish LUs for the backward where that pays (CPU; the
        warm start's cold part, whose backward runs outside the op's own autograd)."""
        from optlayers._src.native import ops

        if data.device.type != "cpu":
            return self.solve(data, options)
        x, lam, nu, status, iters, factor = ops.solve_keeping(
            data, options.tol_for(data.dtype), options.max_iter, options.polish
        )
        return RawSolution(x=x, lam=lam, nu=nu, status=status, iterations=iters, kkt_solver="native",
                           native_factor=factor if factor.numel() else None)

    def solve_differentiable(self, data: QPData, options: QPOptions) -> RawSolution:
        # Same op on the data as given, differentiated by the op's backward (ops.py).
        from optlayers._src.native import ops

        x, lam, nu, status, iters = ops.solve(
            data, options.tol_for(data.dtype), options.max_iter, options.polish, differentiable=True
        )
        return RawSolution(x=x, lam=lam, nu=nu, status=status, iterations=iters, kkt_solver="native")


def native_status() -> tuple[bool, str]:
    """Whether the native kernel is usable here and, if not, why (builds it on first call)."""
    from optlayers._src.native import ops

    return ops.ensure_loaded(warn=False)


__all__ = ["NativeBackend", "native_status"]
