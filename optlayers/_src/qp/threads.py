"""Intra-op threads for the PyTorch QP path on CPU.

torch runs an op on several threads when it judges it large enough (≥ 32768 elements for
elementwise ops), and some batched linear-algebra kernels always fork (the triangle that
``cholesky_ex`` zeroes is cleared by a parallel loop of grain 0; MKL's BLAS/LAPACK inside
batched ``solve_triangular``/``lu_factor`` keep their own threads). For the batches of small
matrices of a QP layer each parallel region costs more than it saves: a fork/join of the thread
pool is microseconds on idle cores and milliseconds when another process holds them. Measured on
a 2-core machine shared with other jobs (torch 2.13 CPU, 2 threads): ``tril`` of one 10×10
matrix 4 ms instead of 2.5 µs, a batched Cholesky of 32 matrices 20×20 4 ms instead of 0.14 ms,
and stalls of up to 0.5 s in a batched triangular solve of 128 matrices 50×50.

So the PyTorch backend (forward, polish, and the backward when it uses that backend's factor)
runs single-threaded below a work threshold and leaves torch's setting alone above it. The
setting is restored on exit; with torch's OpenMP backend it is per calling thread, so other
Python threads are not affected.
"""

from __future__ import annotations

import contextlib

import torch

# Work measure: B·N³ with N = n + m + p, the flops (up to a constant) of the largest batched
# factorization of a solve (the active-set LU of the polish and the backward). Below this the
# batched kernels are too small for intra-op threads to pay for their fork/join.
SINGLE_THREAD_MAX_WORK = 1 << 28


def single_threaded(device: torch.device, B: int, N: int) -> bool:
    """Whether a CPU solve of B problems with N = n + m + p is small enough for one thread."""
    return device.type == "cpu" and B * N ** 3 <= SINGLE_THREAD_MAX_WORK


@contextlib.contextmanager
def intra_op_threads(data):
    """Run the body single-threaded when ``data`` (a QPData) is small (see module docstring)."""
    prev = torch.get_num_threads()
    if prev == 1 or not single_threaded(data.device, data.B, data.n + data.m + data.p):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
