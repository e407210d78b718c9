"""Options of the QP layers and the backend name enum."""

from __future__ import annotations

import dataclasses
import enum

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
        if self.tol is not None and not (0.0 < float(self.tol) < 1.0):
            raise ValueError(f"tol must be in (0, 1); got {self.tol}")
        if int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be a positive integer; got {self.max_iter}")

    def tol_for(self, dtype: torch.dtype) -> float:
        return float(self.tol) if self.tol is not None else tolerances_for(dtype).ipm_tol
