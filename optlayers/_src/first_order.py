"""Guard for backward passes that are differentiable once only.

``torch.autograd.function.once_differentiable`` makes a second derivative fail only when it is
taken through the *upstream gradients*. A Hessian of a scalar loss (``torch.autograd.grad(...,
create_graph=True)`` then another backward, ``torch.autograd.functional.hessian``) differentiates
the backward with respect to the *data* instead, a path that guard never builds: the gradient is
not connected to the data, so the second derivative comes back as ``None`` or — in ``hessian`` and
wherever ``allow_unused``/``materialize_grads`` apply — silently as zero.

:func:`first_order_only` closes that hole. Whenever autograd records the backward (grad mode on
inside ``backward``, i.e. ``create_graph=True``), each gradient it returns gets a zero added that
depends on every saved tensor and upstream gradient that requires grad, through a node whose own
backward raises a clear ``RuntimeError``. So any derivative of those gradients — with respect to
the data or to the upstream gradients — reaches that node and fails loudly.
"""

from __future__ import annotations

import functools

import torch


class _NoHigherDerivative(torch.autograd.Function):
    """``(anchors…) ↦ 0`` (a 0-dim zero) whose backward raises ``RuntimeError(message)``."""

    @staticmethod
    def forward(message: str, *anchors: torch.Tensor) -> torch.Tensor:
        return anchors[0].new_zeros(())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.message = inputs[0]

    @staticmethod
    def backward(ctx, _grad):
        raise RuntimeError(ctx.message)


def first_order_only(what: str):
    """Decorate an ``autograd.Function.backward``: it runs without grad mode, and when the
    backward is recorded its results raise ``RuntimeError`` naming ``what`` if differentiated.
    The data the gradients depend on must be among ``ctx.saved_tensors`` (or the upstream grads)."""
    message = (
        f"optlayers: {what} has first derivatives only; differentiating its gradients again "
        "(create_graph=True, a Hessian, gradgradcheck) is not implemented. solve_qp and qp_value "
        "on dense data (backends 'torch' and 'native') support higher derivatives."
    )

    def wrap(backward):
        @functools.wraps(backward)
        def guarded(ctx, *grads):
            with torch.no_grad():
                out = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return out
            anchors = [t for t in (*ctx.saved_tensors, *grads) if isinstance(t, torch.Tensor) and t.requires_grad]
            if not anchors:
                return out
            zero = _NoHigherDerivative.apply(message, *anchors)
            outs = out if isinstance(out, tuple) else (out,)
            flagged = tuple(t + zero.to(t.dtype) if isinstance(t, torch.Tensor) else t for t in outs)
            return flagged if isinstance(out, tuple) else flagged[0]

        return guarded

    return wrap


__all__ = ["first_order_only"]
