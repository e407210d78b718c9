"""OSQP solver objects, cached by sparsity pattern, with value updates and warm starts.

A cache entry is keyed by the canonical patterns of P (upper triangle) and A, the sizes, and the
OSQP settings that cannot change after set-up (``OSQPOptions.setup_key``). It holds one OSQP
solver per *batch slot*: problem ``b`` of a batch is always solved by slot ``b``. On a call:

* a slot that does not exist yet is set up (``stats.setups``): scaling, symbolic + numeric
  factorization of OSQP's KKT matrix;
* an existing slot gets ``update(Px, Ax)`` only if the matrix values changed since its last
  solve (``stats.matrix_updates``: OSQP re-scales and refactors numerically, no symbolic
  analysis), and always ``update(q, l, u)`` (``stats.vector_updates``: no factorization);
* ADMM starts from the slot's previous solution (``warm_start=True``) — the solution of the
  same batch index at the previous call, which is what changes least between training steps.
  A slot whose last solve failed restarts from zero; a reused slot whose solve fails is replaced
  by a freshly set-up solver and that problem solved again (``solver.py``).

The entry also keeps the most recent reduced-KKT factorizations (``kkt.py``) keyed by the
values of P and A and the active set, so that problems sharing them — in the same batch (data
shared, only q/l/u vary) or across calls — reuse one factorization (``stats.factor_reuses``).

:class:`SolverCache` is an LRU over patterns. ``solve_sparse_qp`` / ``solve_qp`` use one
module-level cache (:func:`default_cache`); each :class:`SparseQPLayer` owns its own.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import numpy as np

from optlayers._src.sparse.options import OSQPOptions
from optlayers._src.sparse.problem import Pattern

# Patterns kept per cache; reduced-KKT factorizations kept per pattern for reuse lookups
# (factors in use by an autograd graph stay alive through the graph regardless).
DEFAULT_MAX_PATTERNS = 8
FACTORS_PER_PATTERN = 8


def import_osqp():
    try:
        import osqp
    except ImportError:  # pragma: no cover - osqp is in the test extra
        raise ImportError(
            "the sparse QP layer (backend='osqp') needs OSQP: pip install 'optlayers[sparse]' (or pip install osqp)"
        ) from None
    return osqp


def value_digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=16).digest()


@dataclasses.dataclass
class CacheStats:
    """Counters (cumulative since creation or :meth:`SolverCache.clear`)."""

    setups: int = 0           # OSQP set-ups (new solver objects)
    matrix_updates: int = 0   # value updates of P and/or A on an existing solver
    vector_updates: int = 0   # updates of q, l, u on an existing solver
    solves: int = 0           # OSQP solves
    factorizations: int = 0   # reduced-KKT factorizations (polish / backward)
    factor_reuses: int = 0    # reduced-KKT factorizations served from the cache


@dataclasses.dataclass
class _Slot:
    solver: object
    P: np.ndarray
    A: np.ndarray
    settings: dict
    cold: bool = False  # last solve failed: restart ADMM from zero
    last_iter: int | None = None  # ADMM iterations of its last successful solve


class _Entry:
    def __init__(self, P_pattern: Pattern, A_pattern: Pattern):
        self.P_pattern = P_pattern
        self.A_pattern = A_pattern
        self.slots: list[_Slot] = []
        self.factors: "collections.OrderedDict[bytes, object]" = collections.OrderedDict()

    def get_factor(self, key: bytes):
        f = self.factors.get(key)
        if f is not None:
            self.factors.move_to_end(key)
        return f

    def put_factor(self, key: bytes, factor) -> None:
        self.factors[key] = factor
        if len(self.factors) > FACTORS_PER_PATTERN:
            self.factors.popitem(last=False)


class SolverCache:
    """LRU cache of OSQP solvers by sparsity pattern (see the module docstring).

    Args:
        max_patterns: number of distinct (pattern, set-up settings) entries kept.

    Attributes:
        stats: :class:`CacheStats` counters — e.g. assert that a second call with the same
            pattern did no new set-up: ``cache.stats.setups`` unchanged.
    """

    def __init__(self, max_patterns: int = DEFAULT_MAX_PATTERNS):
        if int(max_patterns) < 1:
            raise ValueError(f"max_patterns must be a positive integer; got {max_patterns!r}")
        self.max_patterns = int(max_patterns)
        self._entries: "collections.OrderedDict[tuple, _Entry]" = collections.OrderedDict()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    # A cache is not part of a model's state: copying or pickling a layer (deepcopy for an EMA,
    # torch.save of a whole model) gives it an empty cache — OSQP's solver objects cannot be
    # pickled, and a copy sets up its own solvers on its first call. The counters are kept.
    def __getstate__(self) -> dict:
        return {"max_patterns": self.max_patterns, "stats": dataclasses.replace(self.stats)}

    def __setstate__(self, state: dict) -> None:
        self.max_patterns = state["max_patterns"]
        self._entries = collections.OrderedDict()
        self.stats = state["stats"]

    def clear(self) -> None:
        """Drop every solver and factorization and reset the counters."""
        self._entries.clear()
        self.stats = CacheStats()

    def entry(self, P_pattern: Pattern, A_pattern: Pattern, options: OSQPOptions) -> _Entry:
        key = (P_pattern.key, A_pattern.key, options.setup_key())
        e = self._entries.get(key)
        if e is None:
            e = _Entry(P_pattern, A_pattern)
            self._entries[key] = e
            if len(self._entries) > self.max_patterns:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return e

    def __repr__(self) -> str:
        return f"SolverCache(patterns={len(self)}/{self.max_patterns}, stats={self.stats})"


_DEFAULT = SolverCache()


def default_cache() -> SolverCache:
    """The cache used by :func:`solve_sparse_qp` / :func:`solve_qp` when none is passed."""
    return _DEFAULT
