"""Options of the QP layers and the backend name enum."""

from __future__ import annotations

import dataclasses
import enum
import numbers

import numpy

import torch

from optlayers._src.tolerances import tolerances_for


class Backend(str, enum.Enum):
    """Solver backends. Strings are accepted wherever a Backend is expected."""

    AUTO = "auto"
    TORCH = "torch"    # pure-PyTorch batched interior point (CPU and CUDA)
    NATIVE = "native"  # csrc/ kernel
    OSQP = "osqp"      # sparse QPs
    SCS = "scs"        # conic layers
    CLARABEL = "clarabel"

    @classmethod
    def resolve(cls, value: "Backend | str") -> "Backend":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"backend must be one of {choices}; got {value!r}") from None


# Largest max_iter accepted: the OSQP route multiplies it by 200 ADMM iterations, which must fit
# OSQP's 32-bit iteration counter.
MAX_ITER_LIMIT = 10_000_000


@dataclasses.dataclass(frozen=True)
class QPOptions:
    """Solver options shared by every QP backend.

    Attributes:
        tol: relative tolerance on primal/dual residuals and the duality gap; ``None`` picks the
            dtype's default (1e-9 in float64, 1e-5 in float32, see ``tolerances.py``).
            After the interior point, an active-set polish usually brings float64 solutions to
            ~1e-14.
        max_iter: interior-point iteration cap; problems still running get ``MAX_ITER``.
        polish: refine the interior-point solution by solving the KKT system of its active set.
    """

    tol: float | None = None
    max_iter: int = 50
    polish: bool = True

    def __post_init__(self) -> None:
        # Types first: max_iter=2.5 or polish="no" had reached the backends (a C++ RuntimeError, a
        # pybind error from OSQP, or a silent True).
        if self.tol is not None and (isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real)):
            raise TypeError(f"tol must be a float in (0, 1) or None; got {self.tol!r}")
        if self.tol is not None and not (0.0 < float(self.tol) < 1.0):
            raise ValueError(f"tol must be in (0, 1); got {self.tol}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral):
            raise TypeError(f"max_iter must be a positive int; got {self.max_iter!r}")
        if not 1 <= int(self.max_iter) <= MAX_ITER_LIMIT:
            raise ValueError(f"max_iter must be an integer in [1, {MAX_ITER_LIMIT}]; got {self.max_iter}")
        if not isinstance(self.polish, (bool, numpy.bool_)):
            raise TypeError(f"polish must be True or False; got {self.polish!r}")
        # (normalized, so that numpy scalars reach the C++ op as plain Python values)
        object.__setattr__(self, "max_iter", int(self.max_iter))
        object.__setattr__(self, "polish", bool(self.polish))
        if self.tol is not None:
            object.__setattr__(self, "tol", float(self.tol))

    def tol_for(self, dtype: torch.dtype) -> float:
        return float(self.tol) if self.tol is not None else tolerances_for(dtype).ipm_tol
