"""Cone-program solvers behind one small protocol (each backend in its own file).

A backend solves a batch of cone programs in SCS form (``cones.py``) that share the sparsity
patterns of a :class:`~optlayers._src.conic.canon.ConeProgram`, outside autograd, and returns a
:class:`RawConeSolution`. The derivative never depends on which backend produced the solution.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
from typing import Callable, Protocol

import numpy as np

from optlayers._src.conic.canon import ConeProgram
from optlayers._src.conic.options import ConicOptions
from optlayers._src.qp.options import Backend


@dataclasses.dataclass
class BatchData:
    """Numeric data of B cone programs (float64, C-contiguous).

    ``c`` (B, n), ``b`` (B, m); ``A`` (B_A, nnz_A) and ``P`` (B_P, nnz_P) or ``None`` with
    ``B_A, B_P ∈ {1, B}`` — a leading 1 means the matrix is shared by the whole batch (then a
    backend may factorize it once and only update b, c per problem).
    """

    c: np.ndarray
    A: np.ndarray
    b: np.ndarray
    P: np.ndarray | None
    prog: ConeProgram

    @property
    def B(self) -> int:
        return self.c.shape[0]

    @property
    def shared_matrices(self) -> bool:
        return self.A.shape[0] == 1 and (self.P is None or self.P.shape[0] == 1)

    def A_of(self, i: int) -> np.ndarray:
        return self.A[0 if self.A.shape[0] == 1 else i]

    def P_of(self, i: int) -> np.ndarray | None:
        if self.P is None:
            return None
        return self.P[0 if self.P.shape[0] == 1 else i]


@dataclasses.dataclass
class RawConeSolution:
    """Per-problem results: ``x`` (B, n), ``y`` (B, m), ``s`` (B, m), ``status`` (B,) int8
    :class:`~optlayers.Status` codes, ``iterations`` (B,) int32, ``solver_status`` the solver's
    own status strings, ``inexact`` (B,) bool: the solver stopped early (iteration/time limit,
    reduced accuracy) but returned a solution estimate that refinement may certify; ``scale``
    (B,) SCS's final (adapted) dual scale per problem, NaN for other solvers."""

    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    solver_status: list[str]
    inexact: np.ndarray
    scale: np.ndarray

    @classmethod
    def empty(cls, B: int, n: int, m: int) -> "RawConeSolution":
        return cls(
            x=np.zeros((B, n)), y=np.zeros((B, m)), s=np.zeros((B, m)),
            status=np.zeros(B, dtype=np.int8), iterations=np.zeros(B, dtype=np.int32),
            solver_status=[""] * B, inexact=np.zeros(B, dtype=bool), scale=np.full(B, np.nan),
        )


WarmStart = tuple  # (x (B, n), y (B, m), s (B, m)) arrays


class ConeBackend(Protocol):
    name: Backend

    def solve(self, data: BatchData, options: ConicOptions, warm: WarmStart | None,
              cache: "SolverCache") -> RawConeSolution: ...


class SolverCache:
    """Solver objects that hold a factorization of shared (A, P), reused across calls.

    One per layer. ``take(key_arrays)`` returns an idle solver built for equal matrix values
    (or ``None``); ``give(key_arrays, solver)`` returns it to the pool. Thread safe; at most
    ``capacity`` idle solvers are kept.
    """

    def __init__(self, capacity: int = 8):
        self._lock = threading.Lock()
        self._idle: list[tuple[tuple[np.ndarray, ...], object]] = []
        self.capacity = capacity

    @staticmethod
    def _same(a: tuple, b: tuple) -> bool:
        return len(a) == len(b) and all(
            (x is None and y is None) or (x is not None and y is not None and x.shape == y.shape and np.array_equal(x, y))
            for x, y in zip(a, b)
        )

    def take(self, key: tuple):
        with self._lock:
            for i, (k, solver) in enumerate(self._idle):
                if self._same(k, key):
                    del self._idle[i]
                    return solver
        return None

    def give(self, key: tuple, solver) -> None:
        with self._lock:
            self._idle.append((tuple(None if k is None else k.copy() for k in key), solver))
            del self._idle[: max(0, len(self._idle) - self.capacity)]

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()

    # Not part of a layer's state: a copied or unpickled layer (deepcopy, torch.save of a whole
    # model) starts with an empty pool (a lock and the solvers' workspaces cannot be pickled).
    def __getstate__(self) -> dict:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1, thread_name_prefix="optlayers-conic"
            )
        return _EXECUTOR


def run_chunks(B: int, n_jobs: int | None, work: Callable[[range], None]) -> None:
    """Call ``work(chunk)`` on contiguous chunks of ``range(B)``, in parallel threads.

    SCS releases the GIL while solving (checked), so threads run problems concurrently;
    ``n_jobs`` (default: the number of CPUs) bounds the number of chunks.
    """
    jobs = min(B, n_jobs or os.cpu_count() or 1)
    if jobs <= 1:
        work(range(B))
        return
    bounds = np.linspace(0, B, jobs + 1).astype(int)
    chunks = [range(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    futures = [_executor().submit(work, ch) for ch in chunks]
    for f in futures:
        f.result()


def get(backend) -> ConeBackend:
    """The backend object for ``"scs"`` or ``"clarabel"`` (a ``ConicSolver`` or ``Backend`` member
    or its string)."""
    name = str(getattr(backend, "value", backend)).lower()
    if name == Backend.SCS.value:
        from optlayers._src.conic.backends.scs import SCSBackend

        return SCSBackend()
    if name == Backend.CLARABEL.value:
        from optlayers._src.conic.backends.clarabel import ClarabelBackend

        return ClarabelBackend()
    raise ValueError(f"{name!r} is not a conic backend; use 'scs' or 'clarabel'")
