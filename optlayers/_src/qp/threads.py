"""Intra-op threads for the PyTorch QP path on CPU.

torch runs an op on several threads when it judges it large enough (≥ 32768 elements for
elementwise ops), and some batched linear-algebra kernels always fork (the triangle that
``cholesky_ex`` zeroes is cleared by a parallel loop of grain 0; MKL's BLAS/LAPACK inside
batched ``solve_triangular``/``lu_factor`` run on the same OpenMP threads). For the batches of
small matrices of a QP layer each parallel region costs more than it saves: a fork/join of the
thread pool is microseconds on idle cores and milliseconds when another process holds them.
Measured on a 2-core machine shared with other jobs (torch 2.13 CPU, 2 threads vs 1): ``tril``
of one 10×10 matrix 4 ms instead of 2.5 µs; a batched Cholesky of 32 matrices 20×20 4 ms
instead of 0.14 ms; stalls of up to 0.5 s in a batched triangular solve of 128 matrices 50×50;
for 8 matrices 200×200 a Cholesky 44 ms instead of 3 ms (median) and 8 LU factorizations
450×450 390 ms instead of 27 ms. On idle cores two threads would save at most about half of the
big factorizations.

So the PyTorch backend (forward, polish, and the backward when it uses that backend's factor)
runs single-threaded below a work threshold and leaves the thread count alone above it.

How: the calling thread's OpenMP thread count (``omp_set_num_threads`` of the runtime torch is
linked with), restored on exit. It is a per-thread setting, and both torch's parallel loops and
MKL read it. Not ``torch.set_num_threads``: that also calls ``mkl_set_dynamic(false)`` for the
whole process, after which MKL runs threaded inside torch's parallel loops — we measured batched
LU (e.g. qpth's, 8 × 250×250) then failing with "Parameter 6 was incorrect on entry to DLASWP"
and hanging. Where the runtime cannot be reached (torch without OpenMP, symbols not visible,
another OpenMP runtime answering), the policy is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes

import torch

# Work measure: B·N³ with N = n + m + p, the flops (up to a constant) of the largest batched
# factorization of a solve (the active-set LU of the polish and the backward). Up to this (e.g.
# 128 problems with N = 110, 1 with N = 640) the ops are too small for intra-op threads to pay
# for their fork/join. Above it they pay on free cores: measured for 8 problems with N = 450
# (B·N³ ≈ 2^29.4), fwd+bwd 304 ms with 2 threads vs 391 ms with 1 on a quiet 2-core machine —
# but on a loaded one 2 threads cost up to 10× (measurements above); we keep torch's setting there.
SINGLE_THREAD_MAX_WORK = 1 << 28

_UNSET = object()
_omp_set = _UNSET


def single_threaded(device: torch.device, B: int, N: int) -> bool:
    """Whether a CPU solve of B problems with N = n + m + p is small enough for one thread."""
    return device.type == "cpu" and B * N ** 3 <= SINGLE_THREAD_MAX_WORK


def _omp_set_num_threads():
    """``omp_set_num_threads`` of torch's OpenMP runtime, or None (looked up and checked once)."""
    global _omp_set
    if _omp_set is _UNSET:
        _omp_set = None
        try:
            fn = ctypes.CDLL(None).omp_set_num_threads
        except (OSError, AttributeError, TypeError):  # no such symbol / not a POSIX loader
            return None
        fn.argtypes, fn.restype = [ctypes.c_int], None
        prev = torch.get_num_threads()
        if prev > 1:  # make sure it is the runtime torch reads (another one may answer)
            fn(1)
            works = torch.get_num_threads() == 1
            fn(prev)
            if not works:
                return None
        _omp_set = fn
    return _omp_set


@contextlib.contextmanager
def intra_op_threads(data):
    """Run the body single-threaded when ``data`` (a QPData) is small (see module docstring)."""
    prev = torch.get_num_threads()
    if prev == 1 or not single_threaded(data.device, data.B, data.n + data.m + data.p):
        yield
        return
    set_threads = _omp_set_num_threads()
    if set_threads is None:
        yield
        return
    set_threads(1)
    try:
        yield
    finally:
        set_threads(prev)
