"""Cost scaling of the dense QP: solve with the objective divided by its scale when that is far from 1.

The problem  min ½xᵀQx + qᵀx  s.t.  Ax = b, Gx ≤ h  has the same solution x as the one with
objective (½xᵀQx + qᵀx)/σ for any σ > 0; its multipliers are those of the scaled problem times σ.
The interior point is not invariant to σ: its stopping tests are relative to 1 + (the size of the
terms), its initial point mixes the objective with the constraints' least squares, and its
regularization is relative to max(1, |data|). Measured on `random_qp(16, 10, 15, 3)` with Q and q
multiplied by s (both dense backends alike, before this module): s = 1e2 solved in 9–12 iterations,
s ≥ 1e4 stalled (MAX_ITER after ~8 iterations: the initial multipliers are O(1) where the solution's
are O(s)), and s = 1e-8 returned SOLVED with x off by 4e-2 (the dual residual is tested against
1 + 1e-8, i.e. absolutely). Row scaling already makes the solver indifferent to the scale of G, h
and A, b (unit rows).

So each problem's cost scale  σ = max(max|Q|, max|q|)  is computed, and a problem whose σ lies
outside [LOW, HIGH] is solved with Q/σ, q/σ (σ = 1 for the others, whose results are then bit for
bit those without this module; σ = 1 also when Q = 0 and q = 0). The multipliers are multiplied
back by σ. σ is treated as a constant under autograd: x(Q/σ, q/σ) does not depend on σ, so the
derivative through σ is exactly zero (and λ = σ·λ'(Q/σ, …) likewise), and the KKT derivative of the
scaled problem chained through the division is the derivative of the original one.

A scaled problem whose Q is shared by the batch gets its own copy of Q/σ when the problems' σ
differ (only in that case, which well-scaled data never reaches).
"""

from __future__ import annotations

import torch

from optlayers._src.qp.problem import QPData

LOW = 1e-2
HIGH = 1e2


def needs_scaling(data: QPData) -> bool:
    """Whether some problem's cost scale may lie outside [LOW, HIGH] (cheap: from the input
    checks' ranges where they ran, else one C++ pass over Q and q on CPU; True otherwise, and
    :func:`scales` decides with torch ops)."""
    if data.B == 0:
        return False
    rng = data.cost_range
    if rng is None and data.device.type == "cpu":
        from optlayers._src.native import ops

        if ops.loaded():  # one C++ pass (the torch ops below cost ~50 µs a call on small batches)
            rng = ops.cost_range(data.Q, data.q)
    if rng is not None:
        Q_lo, Q_hi, q_lo, q_hi = rng
        # σ_i = max(Q peak, q peak): above HIGH iff one of its peaks is; below LOW only if both are.
        return max(Q_hi, q_hi) > HIGH or (Q_lo < LOW and q_lo < LOW)
    return True


def scales(data: QPData) -> torch.Tensor | None:
    """Per-problem σ, shape (B,) (1 where no scaling is needed), or None if no problem needs any."""
    if not needs_scaling(data):
        return None
    with torch.no_grad():
        peak_Q = data.Q.detach().abs().amax((-2, -1))
        peak_q = data.q.detach().abs().amax(-1)
        sigma = torch.maximum(peak_Q, peak_q).expand(data.B)
        scale = (sigma > HIGH) | ((sigma < LOW) & (sigma > 0))
        if not bool(scale.any()):
            return None
        return torch.where(scale, sigma, torch.ones_like(sigma))


def scaled(data: QPData, sigma: torch.Tensor) -> QPData:
    """The data with Q/σ and q/σ per problem (differentiable in Q and q; σ constant)."""
    import dataclasses

    uniform = bool((sigma == sigma[0]).all())
    if uniform:  # one σ for the batch: shared fields stay shared
        s = sigma[0]
        return dataclasses.replace(data, Q=data.Q / s, q=data.q / s, cost_range=None)
    return dataclasses.replace(data, Q=data.Q / sigma.view(-1, 1, 1), q=data.q / sigma.view(-1, 1),
                               cost_range=None)


def unscale(sigma: torch.Tensor, lam: torch.Tensor, nu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original problem's multipliers (B, m), (B, p) from the scaled one's."""
    s = sigma.to(lam.dtype).view(-1, 1)
    return lam * s, nu * s
