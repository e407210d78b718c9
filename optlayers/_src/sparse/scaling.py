"""Scaling of badly scaled sparse QPs before OSQP sees them — the sparse twin of ``qp/scaling.py``.

For positive diagonals D, R and σ > 0 the problem  min ½xᵀPx + qᵀx  s.t.  l ≤ Ax ≤ u  is, in
x = D x̃, the problem

    min (½x̃ᵀ(DPD)x̃ + (Dq)ᵀx̃)/σ   s.t.   Rl ≤ (RAD)x̃ ≤ Ru,

with the same rows, whose multipliers are ỹ = R⁻¹y/σ. OSQP equilibrates the data itself (Ruiz, its
``scaling`` setting), but its stopping test is absolute in the units it is handed, and the polish
and the backward factor the KKT matrix in those units. Measured before this module
(``benchmarks/scaling_robustness.py``, 16 problems n=10, m=15, p=3): variables in units 1e-4 … 1e4
apart ran to ``MAX_ITER``; objective × 1e-8 left 3 of 16 unpolished (the KKT factorization of the
polish failed), ×1e4 … ×1e8 were 5 orders less accurate than as planted.

The rules are the dense route's (same thresholds): where the spread of the column scales
c_j = max(max_k |P_kj|, max_r |A_rj| / max|A_r|) exceeds ``COLUMN_SPREAD_MAX``, D from ``RUIZ_ITERS``
Ruiz passes; where some nonzero row of the (column-scaled) A has its largest entry outside
[``LOW``, ``HIGH``], every row divided by the power of two nearest its largest entry (l, u with it;
measured before: constraints × 1e-4 left 2 of 16 off by 3e-6, × 1e-8 raised, rows each in its own
unit 1e-6 … 1e6 left all 16 off by up to 3 — OSQP's absolute tolerances in the rows' units); then
σ = max(max|P|, max|q|) of the column-scaled data where it lies outside [``LOW``, ``HIGH``].
Everything — OSQP, the polish, the backward's KKT factor — then works on the scaled problem, and
(x, y) = (D x̃, σ R ỹ) are mapped back. D, R and σ are constants under autograd
(the solution map is invariant to them), so gradients are the original problem's. The values are
scaled on their sparsity patterns (no densification); a shared P or A stays shared when D and σ
are one for the whole batch. Well-scaled data passes untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from optlayers._src.qp.scaling import (COLUMN_SPREAD_MAX, HIGH, LOW, RUIZ_ITERS, column_spread, power_of_two_scales,
                                       row_range, within_limits)
from optlayers._src.sparse.problem import SparseQPData


@dataclasses.dataclass(frozen=True)
class SparseScaling:
    """x = d ∘ x̃ (d: (B, n), (n,) or None) and y = σ r ∘ ỹ (sigma: (B,) or None; r: the rows'
    scales, (B, m), (m,) or None)."""

    d: torch.Tensor | None
    sigma: torch.Tensor | None
    r: torch.Tensor | None = None

    def apply(self, data: SparseQPData) -> SparseQPData:
        """The scaled data (differentiable in the original values; d, r and σ constant)."""
        P, q, A, lo, up = data.P, data.q, data.A, data.l, data.u
        if self.d is not None:
            P, q, A = _scale_columns(data, self.d)
        if self.r is not None:
            ar = _index(data.A_pattern.rows, A.device)
            A, lo, up = A * self.r[..., ar], lo * self.r, up * self.r
        if self.sigma is not None:
            s = self.sigma
            if bool((s == s[0]).all()):  # one σ for the batch: shared values stay shared
                P, q = P / s[0], q / s[0]
            else:
                P, q = P / s.view(-1, 1), q / s.view(-1, 1)
        return dataclasses.replace(data, P=P, q=q, A=A, l=lo, u=up)

    def unscale(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The original problem's (x, y), (B, ·) each, from the scaled one's."""
        if self.d is not None:
            x = x * self.d.to(x.dtype)
        if self.r is not None:
            y = y * self.r.to(y.dtype)
        if self.sigma is not None:
            y = y * self.sigma.to(y.dtype).view(-1, 1)
        return x, y


def plan(data: SparseQPData) -> SparseScaling | None:
    """The scaling of ``data`` (see the module docstring), or None if it is well scaled."""
    if data.B == 0 or data.n == 0:
        return None
    with torch.no_grad():
        P, q, A = (t.detach() for t in (data.P, data.q, data.A))
        c = _column_scales(data, P, A)
        d = None
        if float(column_spread(c).amax()) > COLUMN_SPREAD_MAX:
            d = _ruiz(data, P, A)
            P, q, A = _scale_columns(dataclasses.replace(data, P=P, q=q, A=A), d)
        r = _row_scales(data, A)
        sigma = torch.maximum(_amax(P), _amax(q)).expand(data.B)
        far = (sigma > HIGH) | ((sigma < LOW) & (sigma > 0))
        sigma = torch.where(far, sigma, torch.ones_like(sigma)) if bool(far.any()) else None
    if d is None and sigma is None and r is None:
        return None
    return SparseScaling(d=d, sigma=sigma, r=r)


def _row_scales(data: SparseQPData, A: torch.Tensor) -> torch.Tensor | None:
    """Power-of-two row scales of the pattern values A ((B, nnz) or (nnz,)), as the dense route's
    (``qp/scaling.py``), or None where every nonzero row's largest entry lies in [LOW, HIGH]."""
    if A.shape[-1] == 0:
        return None
    top = _scatter_amax(A.abs(), _index(data.A_pattern.rows, A.device), data.m)
    if within_limits(*torch.stack(row_range([top])).tolist()):
        return None
    return power_of_two_scales(top)


def _amax(v: torch.Tensor) -> torch.Tensor:
    """max |v| per problem ((B,) for batched (B, k), a 0-dim tensor for shared (k,)); 0 if k = 0."""
    if v.shape[-1] == 0:
        return v.new_zeros(v.shape[:-1])
    return v.abs().amax(-1)


def _index(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _scatter_amax(vals: torch.Tensor, idx: torch.Tensor, size: int) -> torch.Tensor:
    """out[..., j] = max over slots k with idx[k] = j of vals[..., k] (vals ≥ 0; 0 where none)."""
    out = vals.new_zeros(vals.shape[:-1] + (size,))
    if vals.shape[-1] == 0:
        return out
    return out.scatter_reduce(-1, idx.expand(vals.shape), vals, "amax", include_self=True)


def _column_scales(data: SparseQPData, P: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """c_j (see the module docstring) from the values on their patterns: (B, n) or shared (n,).
    P holds its upper triangle: each slot counts for its row's and its column's scale."""
    dev, n = P.device, data.n
    batched = P.dim() == 2 or A.dim() == 2
    pr, pc = _index(data.P_pattern.rows, dev), _index(data.P_pattern.cols, dev)
    ar, ac = _index(data.A_pattern.rows, dev), _index(data.A_pattern.cols, dev)
    aP = P.abs()
    c = torch.maximum(_scatter_amax(aP, pc, n), _scatter_amax(aP, pr, n))
    if A.shape[-1]:
        aA = A.abs()
        top = _scatter_amax(aA, ar, data.m).clamp_min(torch.finfo(A.dtype).tiny)
        c = torch.maximum(c, _scatter_amax(aA / top[..., ar], ac, n))
    return c.expand(data.B, n) if batched and c.dim() == 1 else c


def _scale_columns(data: SparseQPData, d: torch.Tensor):
    """(DPD, Dq, AD) as pattern values (d: (B, n) or shared (n,))."""
    dev = d.device
    pr, pc = _index(data.P_pattern.rows, dev), _index(data.P_pattern.cols, dev)
    ac = _index(data.A_pattern.cols, dev)
    return data.P * d[..., pr] * d[..., pc], data.q * d, data.A * d[..., ac]


def _ruiz(data: SparseQPData, P: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Column scales d from Ruiz passes (d ← d / √c of the column-scaled data): shared (n,) when P
    and A are shared, else (B, n)."""
    batched = P.dim() == 2 or A.dim() == 2
    d = torch.ones((data.B, data.n) if batched else (data.n,), dtype=P.dtype, device=P.device)
    for _ in range(RUIZ_ITERS):
        Ps, _, As = _scale_columns(dataclasses.replace(data, P=P, A=A), d)
        c = _column_scales(data, Ps, As)
        d = d / torch.where(c > 0, c, torch.ones_like(c)).sqrt()
    return d
