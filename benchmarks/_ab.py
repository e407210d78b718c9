"""Helpers of the same-run benchmarks (``native_lanes.py``, ``torch_kkt.py``, ``func_transforms.py``,
``hvp.py``): an environment switch that is restored afterwards, the median or best time of a call,
and the median time of one ``ol.solve_qp`` call."""

from __future__ import annotations

import contextlib
import os
import time

import torch

import optlayers as ol


@contextlib.contextmanager
def restored_env(name: str):
    """Let the body set ``os.environ[name]`` freely; restore its value (or absence) afterwards."""
    saved = os.environ.get(name)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, reps: int, device) -> tuple[float, object]:
    """Median ms of ``fn()`` over ``reps`` calls after one warm-up, and the last call's result."""
    times, out = [], None
    for _ in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return times[len(times) // 2] * 1e3, out


def best_ms(fn, repeat: int) -> float:
    """Best ms of ``fn()`` over ``repeat`` calls after one warm-up (first-use imports, the native
    build); CPU timing."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def median_solve_ms(data, backend: str, reps: int, backward: bool = True) -> tuple[float, torch.Tensor]:
    """Median ms over ``reps`` calls (after one warm-up) of ``ol.solve_qp(*data, backend=backend)``,
    plus the backward of ``x.sum()`` w.r.t. every input when ``backward``; and the last x."""

    def call():
        inputs = [t.clone().requires_grad_(backward) for t in data]
        x = ol.solve_qp(*inputs, backend=backend)
        if backward:
            x.sum().backward()
        return x

    ms, x = median_ms(call, reps, data[1].device)
    return ms, x.detach()
