"""Batched products with shared-or-batched matrices (see :class:`QPData`).

A matrix ``M`` is either shared, shape ``(r, c)``, or batched, shape ``(B, r, c)``; vectors are
always batched, ``(B, c)``. These helpers never expand a shared matrix per problem.
"""

from __future__ import annotations

import torch


def mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``M v`` per problem: ``(B?, r, c) × (B, c) → (B, r)``."""
    if M.dim() == 2:
        return v @ M.mT
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def mtv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Mᵀ v`` per problem: ``(B?, r, c) × (B, r) → (B, c)``."""
    if M.dim() == 2:
        return v @ M
    return (v.unsqueeze(-2) @ M).squeeze(-2)


def weighted_gram(M: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Mᵀ diag(w) M`` per problem: ``(B?, r, c), (B, r) → (B, c, c)``."""
    return M.mT @ (w.unsqueeze(-1) * M)


def outer(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u vᵀ`` per problem: ``(B, r), (B, c) → (B, r, c)``."""
    return u.unsqueeze(-1) * v.unsqueeze(-2)


def reduce_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a per-problem gradient ``(B, *core)`` over the batch when ``like`` is shared."""
    if grad.dim() > like.dim():
        return grad.sum(0)
    return grad


def inf_norm(v: torch.Tensor) -> torch.Tensor:
    """Per-problem ∞-norm of ``(B, k)``; zero when ``k = 0``."""
    if v.shape[-1] == 0:
        return v.new_zeros(v.shape[:-1])
    return v.abs().amax(-1)
