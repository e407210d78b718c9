"""A sparse-CSR constructor whose backward stays sparse.

``torch.sparse_csr_tensor(crow, col, values, size)`` is differentiable in ``values``, but its
backward (torch 2.x) converts the incoming gradient ``to_dense()`` and ``sparse_mask``-s it
back: an (m × n) dense temporary — 3.6 GB for a 20,000 × 20,000 matrix, and seconds of work —
which defeats a sparse layer. :func:`csr_tensor` builds the same tensor through a custom
autograd Function whose backward reads the gradient's values directly when it has the same
pattern (always the case when the tensor is consumed by optlayers' sparse layer) and falls back
to sparse gathers otherwise. ``torch.sparse_coo_tensor`` has no such problem.
"""

from __future__ import annotations

import torch


def _pattern_coo(crow: torch.Tensor, col: torch.Tensor, size, dtype) -> torch.Tensor:
    """A COO tensor of ones with the CSR pattern (for masking foreign gradients)."""
    ones = torch.ones(col.shape, dtype=dtype, device=col.device)
    return torch.sparse_csr_tensor(crow, col, ones, size).to_sparse_coo().coalesce()


class _CSRFromValues(torch.autograd.Function):
    @staticmethod
    def forward(crow, col, values, size):
        return torch.sparse_csr_tensor(crow, col, values, size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        crow, col, values, size = inputs
        ctx.save_for_backward(crow, col)
        ctx.size = tuple(size)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[2]:
            return None, None, None, None
        crow, col = ctx.saved_tensors
        if grad.layout == torch.sparse_csr:
            gcrow, gcol = grad.crow_indices(), grad.col_indices()
            if gcrow.shape == crow.shape and gcol.shape == col.shape and bool((gcrow == crow).all()) and bool((gcol == col).all()):
                return None, None, grad.values(), None
        mask = _pattern_coo(crow, col, ctx.size, grad.dtype)
        nnz = col.shape[-1]
        batch = tuple(col.shape[:-1])
        if grad.layout == torch.strided:
            idx = mask.indices()
            g = grad[tuple(idx)]
        else:
            g = grad.to_sparse_coo().coalesce().sparse_mask(mask).values()
        # mask's entries are in (batch, row, column) order = CSR storage order.
        return None, None, g.reshape(batch + (nnz,)), None


def csr_tensor(crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """Like ``torch.sparse_csr_tensor(crow_indices, col_indices, values, size)``, with a backward
    that never densifies (see the module docstring). Batched: ``crow_indices`` (*, m+1),
    ``col_indices`` and ``values`` (*, nnz), ``size`` (*, m, n)."""
    if not values.requires_grad:
        return torch.sparse_csr_tensor(crow_indices, col_indices, values, size)
    return _CSRFromValues.apply(crow_indices, col_indices, values, tuple(size))
