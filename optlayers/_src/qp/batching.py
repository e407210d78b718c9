"""Batch-shape helpers of the differentiable maps that work in the user's (broadcasting) shapes:
folding a ``vmap``-ped dimension into the batch, and gathering / scattering the problems of a
broadcast batch by index without materializing the broadcast (``backward.KKTSolveMap``,
``functional.py``).
"""

from __future__ import annotations

import math

import torch


def logical_rank(t: torch.Tensor | None, dim: int | None, core: int) -> int:
    """Batch rank of ``t`` as the function under vmap sees it (without the vmapped dimension)."""
    if t is None:
        return 0
    return t.dim() - (dim is not None) - core


def fold(tensors, dims, cores):
    """Move each vmapped dimension to the front and pad the batch with singleton dimensions to
    the problems' largest batch rank, so that the vmapped dimension becomes the leading batch
    dimension (unvmapped tensors broadcast against it as they are)."""
    rank = max(logical_rank(t, d, c) for t, d, c in zip(tensors, dims, cores))
    out = []
    for t, d, c in zip(tensors, dims, cores):
        if t is None or d is None:
            out.append(t)
            continue
        t = t.movedim(d, 0)
        logical = t.shape[1:]
        out.append(t.reshape(t.shape[:1] + (1,) * (rank - (len(logical) - c)) + tuple(logical)))
    return out


def batch_dims(t: torch.Tensor | None, core: int) -> tuple[int, ...]:
    """The batch dimensions of ``t`` (all but its last ``core``); () for None."""
    return () if t is None else tuple(t.shape[: t.dim() - core])


def flat_index(idx: torch.Tensor, S: tuple[int, ...], tb: tuple[int, ...]) -> torch.Tensor:
    """Indices into a tensor of batch shape ``tb`` (broadcastable to ``S``, right-aligned) of the
    problems ``idx`` of the flattened batch ``S`` (a broadcast dimension contributes 0)."""
    coords, rem = [], idx
    for size in reversed(S):
        coords.append(rem % size)
        rem = torch.div(rem, size, rounding_mode="floor")
    coords.reverse()
    flat, off = torch.zeros_like(idx), len(S) - len(tb)
    for i, size in enumerate(tb):
        flat = flat * size + (coords[off + i] if size != 1 else 0)
    return flat


def rows(t: torch.Tensor, core: int, S: tuple[int, ...], idx: torch.Tensor) -> torch.Tensor:
    """The problems ``idx`` (None: all) of ``t`` broadcast to the batch ``S``, as (k, *core) — without
    materializing the broadcast (the folded data of a vmapped Jacobian is V copies of the batch)."""
    tb = batch_dims(t, core)
    body = tuple(t.shape[t.dim() - core:])
    if idx is None:  # every problem: a view where t carries the whole batch
        return t.expand(S + body).reshape((math.prod(S),) + body)
    if not tb:
        return t.expand((idx.numel(),) + body)
    return t.reshape((math.prod(tb),) + body)[flat_index(idx, S, tb)]


def sum_rows(values: torch.Tensor, idx: torch.Tensor, S: tuple[int, ...], target: tuple[int, ...], core: int):
    """Per-problem values (k, *core) of the problems ``idx`` (None: all) summed into a tensor of shape
    ``target`` (batch dims broadcastable to ``S``): zero for the other problems."""
    tb = tuple(target[: len(target) - core])
    if idx is None:  # every problem
        return values.reshape(S + tuple(values.shape[1:])).sum_to_size(target)
    out = values.new_zeros((math.prod(tb),) + tuple(target[len(tb):]))
    out.index_add_(0, flat_index(idx, S, tb), values)
    return out.reshape(target)


def bdot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``uᵀv`` over the last dimension, batch dimensions broadcasting."""
    return (u * v).sum(-1)


def bmv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``M v`` with broadcasting batch dimensions."""
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def bmtv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Mᵀ v`` with broadcasting batch dimensions."""
    return (v.unsqueeze(-2) @ M).squeeze(-2)
