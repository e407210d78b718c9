"""Registry of QP backends: a small Protocol and a dict, chosen by name or ``"auto"``.

Adding a backend = one module defining a class that satisfies :class:`QPBackend` plus one
``register`` call here; no other backend changes.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import torch

from optlayers._src.qp.kkt import ActiveKKTFactor
from optlayers._src.qp.options import Backend, QPOptions
from optlayers._src.qp.problem import QPData


@dataclasses.dataclass
class RawSolution:
    """What a backend returns, flattened over the batch (B problems).

    x: (B, n), lam: (B, m) inequality duals ≥ 0, nu: (B, p) equality duals,
    status: (B,) int8 (:class:`Status` codes), iterations: (B,) int32,
    factor: the active-set KKT factorization when the backend computed one (reused by the
    backward), else ``None``.
    kkt_solver: which K-solve the backward uses: ``"torch"`` (``kkt.py``'s factor, reused when
    present) or ``"native"`` (the C++ solve of csrc/, refactoring at the mask).
    native_factor: the native polish LUs (B, factor_size) that ``qp_backward`` reuses (CPU), or
    ``None`` (it refactors).
    """

    x: torch.Tensor
    lam: torch.Tensor
    nu: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    factor: ActiveKKTFactor | None = None
    kkt_solver: str = "torch"
    native_factor: torch.Tensor | None = None


class QPBackend(Protocol):
    name: Backend

    def availability(self) -> tuple[bool, str]:
        """(usable, reason if not)."""

    def supports(self, data: QPData) -> bool:
        """Whether this backend can solve ``data`` (sizes, device, dtype)."""

    def auto_eligible(self, data: QPData) -> bool:
        """Whether ``"auto"`` should pick this backend for ``data`` (it supports it and is fast there)."""

    def solve(self, data: QPData, options: QPOptions) -> RawSolution:
        """Solve every problem of the (detached) batch."""


@runtime_checkable
class DifferentiableQPBackend(Protocol):
    """A backend whose solve is itself a differentiable op (reverse mode through the shared KKT
    adjoint, e.g. a ``torch.library`` op with ``register_autograd``). Failed problems must get
    zero gradient."""

    def solve_differentiable(self, data: QPData, options: QPOptions) -> RawSolution:
        """Like ``solve`` but on the (non-detached) data, with autograd attached."""


_REGISTRY: dict[Backend, QPBackend] = {}
# Preference order of "auto" among the registered backends.
_AUTO_ORDER = (Backend.NATIVE, Backend.TORCH)


def register(backend: QPBackend) -> None:
    _REGISTRY[backend.name] = backend


def select(name: Backend | str, data: QPData) -> QPBackend:
    """The backend for ``name``; ``"auto"`` takes the first available one that supports ``data``."""
    which = Backend.resolve(name)
    if which is Backend.AUTO:
        for cand in _AUTO_ORDER:
            be = _REGISTRY.get(cand)
            if be is None:
                continue
            # auto_eligible is optional for backends registered outside this package.
            eligible = getattr(be, "auto_eligible", None)
            if (eligible is None or eligible(data)) and be.availability()[0] and be.supports(data):
                return be
        raise RuntimeError("no QP backend is available for this problem")  # torch always is
    be = _REGISTRY.get(which)
    if be is None:
        known = ", ".join(repr(k.value) for k in _REGISTRY)
        raise ValueError(f"backend {which.value!r} does not solve dense QPs; dense QP backends: {known}")
    ok, why = be.availability()
    if not ok:
        raise RuntimeError(f"QP backend {which.value!r} is not available: {why}")
    if not be.supports(data):
        raise ValueError(f"QP backend {which.value!r} does not support this problem (size, dtype or device)")
    return be


def _register_builtin() -> None:
    from optlayers._src.native.backend import NativeBackend
    from optlayers._src.qp.backends.torch_ipm import TorchIPMBackend

    register(TorchIPMBackend())
    register(NativeBackend())


_register_builtin()
