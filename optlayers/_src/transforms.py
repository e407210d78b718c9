"""Detecting ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, …) at an entry point.

The dense QP entry points support them (``optlayers/_src/qp/functional.py``); the routes built on
external solvers that read their data through numpy (OSQP, the conic solvers) do not, and say so
here instead of failing deep inside with "Cannot access data pointer of Tensor that doesn't have
storage" or a vmap "data-dependent control flow" error.
"""

from __future__ import annotations

from typing import Iterable

import torch


def transformed(*tensors) -> bool:
    """Whether any tensor is wrapped by an active ``torch.func`` transform."""
    if torch._C._functorch.maybe_current_level() is None:  # no transform active: one C call
        return False
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(isinstance(t, torch.Tensor) and is_wrapped(t) for t in tensors)


def refuse_transforms(what: str, tensors: Iterable, hint: str) -> None:
    """Raise ``NotImplementedError`` naming ``what`` if any tensor is under a transform."""
    if transformed(*tensors):
        raise NotImplementedError(
            f"{what} does not support torch.func transforms (grad, vmap, jacrev, …). {hint}"
        )


__all__ = ["refuse_transforms", "transformed"]
