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


def refuse_forward_over_forward() -> None:
    """Raise where a jvp rule runs inside another forward-mode transform (``jacfwd(jacfwd(·))``,
    nested ``torch.func.jvp``): there PyTorch returns wrong higher derivatives through any
    ``autograd.Function`` (pytorch/pytorch#197867, open: "Nested jacfwd returns incorrect higher
    derivatives through autograd.Function"; measured here: vᵀHv 1483 instead of 4208 on a test
    map), so we refuse it.
    ``jacfwd(jacrev(·))`` (= ``torch.func.hessian``), ``jacrev(jacrev(·))`` and
    ``jacrev(jacfwd(·))`` are exact."""
    stack = torch._C._functorch.get_interpreter_stack() or []
    jvp = torch._C._functorch.TransformType.Jvp
    if sum(1 for level in stack if level.key() == jvp) > 1:
        raise RuntimeError(
            "optlayers: forward-over-forward differentiation (jacfwd(jacfwd(·)), nested torch.func.jvp) "
            "of solve_qp is not supported; use torch.func.hessian (= jacfwd(jacrev(·))), "
            "jacrev(jacrev(·)) or torch.autograd with create_graph=True"
        )


__all__ = ["refuse_forward_over_forward", "refuse_transforms", "transformed"]
