"""Per-problem solver status and the error raised when problems fail.

Every solve in optlayers returns (or raises with) a status per problem. The codes are
small integers so that they live in an ``int8`` tensor next to the solution, on any device.
"""

from __future__ import annotations

import enum
from typing import Sequence

import torch


class Status(enum.IntEnum):
    """Outcome of one optimization problem.

    ``SOLVED``             converged to the requested tolerances.
    ``PRIMAL_INFEASIBLE``  a certificate of primal infeasibility was found.
    ``DUAL_INFEASIBLE``    a certificate of dual infeasibility (unboundedness) was found.
    ``MAX_ITER``           the iteration limit was hit before convergence.
    ``NUMERICAL_ERROR``    the solver broke down (non-finite iterates, singular systems).
    """

    SOLVED = 0
    PRIMAL_INFEASIBLE = 1
    DUAL_INFEASIBLE = 2
    MAX_ITER = 3
    NUMERICAL_ERROR = 4

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Status.SOLVED: "solved",
    Status.PRIMAL_INFEASIBLE: "primal infeasible (the constraints cannot all hold)",
    Status.DUAL_INFEASIBLE: "dual infeasible (the objective is unbounded below)",
    Status.MAX_ITER: "iteration limit reached before convergence",
    Status.NUMERICAL_ERROR: "numerical breakdown (non-finite or singular linear systems)",
}


class OnFailure(str, enum.Enum):
    """What a layer does when some problems of a batch do not solve.

    ``"raise"`` (default) raises :class:`SolverError`; ``"nan"`` returns NaN in the failed
    problems' outputs, and the per-problem status tells which ones (use
    ``return_solution=True`` to receive it).
    """

    RAISE = "raise"
    NAN = "nan"

    @classmethod
    def resolve(cls, value: "OnFailure | str") -> "OnFailure":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"on_failure must be one of {choices}; got {value!r}") from None


class SolverError(RuntimeError):
    """Raised when one or more problems of a batch did not solve.

    Attributes:
        status: the per-problem status tensor (batch shape, ``int8``).
        failed: list of batch indices (tuples for multi-dimensional batches) that failed.
    """

    def __init__(self, status: torch.Tensor, *, what: str = "QP", max_listed: int = 10):
        self.status = status
        codes = status.detach().to("cpu")
        bad = torch.nonzero(codes != Status.SOLVED, as_tuple=False)
        self.failed = [tuple(int(i) for i in row) if row.numel() != 1 else int(row) for row in bad]
        lines = []
        for row in bad[:max_listed]:
            idx = tuple(int(i) for i in row)
            shown = "(unbatched problem)" if not idx else (idx if len(idx) != 1 else idx[0])
            lines.append(f"  batch index {shown}: {Status(int(codes[idx])).description}")
        more = len(self.failed) - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        total = codes.numel()
        msg = (
            f"{len(self.failed)} of {total} {what} problem(s) did not solve:\n"
            + "\n".join(lines)
            + "\nPass on_failure='nan' to get NaN-filled results with the status tensor instead."
        )
        super().__init__(msg)


def status_counts(status: torch.Tensor) -> dict[str, int]:
    """Number of problems with each status, for logging: ``{"SOLVED": 31, "MAX_ITER": 1}``."""
    codes = status.detach().to("cpu").flatten().tolist()
    out: dict[str, int] = {}
    for c in codes:
        name = Status(int(c)).name
        out[name] = out.get(name, 0) + 1
    return out


def apply_failure_policy(
    status: torch.Tensor, outputs: Sequence[torch.Tensor], on_failure: OnFailure, what: str
) -> list[torch.Tensor]:
    """Raise :class:`SolverError` or NaN-fill the failed problems' outputs.

    ``status`` has the batch shape; each output has the batch shape as its leading dims.
    """
    failed = status != Status.SOLVED
    if not bool(failed.any()):
        return list(outputs)
    if on_failure is OnFailure.RAISE:
        raise SolverError(status, what=what)
    filled = []
    for out in outputs:
        mask = failed.reshape(failed.shape + (1,) * (out.dim() - failed.dim()))
        filled.append(torch.where(mask, torch.full_like(out, float("nan")), out))
    return filled
