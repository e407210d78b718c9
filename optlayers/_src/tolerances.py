"""Named numerical tolerances, one place for the whole package.

float64 is the reference precision. float32 uses looser values that follow from its machine
epsilon (~1.2e-7): interior-point residuals cannot be driven much below ~1e-6 relative there.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Tolerances:
    # Interior point: relative stopping tolerance on primal/dual residuals and the duality gap.
    ipm_tol: float
    # Certificates of infeasibility (primal) / unboundedness (dual), relative.
    infeasibility_tol: float
    # Input checks: relative asymmetry of Q allowed, and relative negative curvature allowed.
    symmetry_tol: float
    psd_tol: float
    # Static regularization of the KKT systems, relative to the data scale. Iterative
    # refinement removes its effect on the solution of nonsingular systems.
    kkt_reg: float
    # Polishing acceptance: relative residual / feasibility / dual-sign tolerance.
    polish_tol: float
    # Generic small number guarding divisions.
    tiny: float
    # Interior point: fraction of the distance to the boundary taken by a step. Less aggressive
    # in float32, where 0.99 lets complementary pairs collapse before the iterate is centred
    # (measured: 4 of 512 random float32 problems stalled at 0.99, none at 0.95).
    step_to_boundary: float
    # Both backends: first polish attempt once the relative residuals and gap are below this (the
    # native kernel tries again 1000× tighter; then the final polish). An attempt is accepted only
    # if it passes the same test as the final polish, so this trades iterations for LU solves, not
    # accuracy. Measured on random planted QPs (n = 10…100, tests' scan): float64 mean iterations
    # 5.5/6.6/7.2/8.3/9.4 at 1e-3 and 4.9/5.8/6.5/7.5/8.5 at 1e-2, no failures either way; grasp
    # QPs 8.8 vs 8.5.
    polish_start: float


_TOLERANCES = {
    torch.float64: Tolerances(
        ipm_tol=1e-9,
        infeasibility_tol=1e-8,
        symmetry_tol=1e-10,
        psd_tol=1e-10,
        kkt_reg=1e-11,
        polish_tol=1e-9,
        tiny=1e-300,
        step_to_boundary=0.99,
        polish_start=1e-2,
    ),
    torch.float32: Tolerances(
        ipm_tol=1e-5,
        infeasibility_tol=1e-4,
        symmetry_tol=1e-5,
        psd_tol=1e-5,
        kkt_reg=1e-7,
        polish_tol=5e-5,
        tiny=1e-30,
        step_to_boundary=0.95,
        polish_start=1e-2,
    ),
}


def tolerances_for(dtype: torch.dtype) -> Tolerances:
    """The default tolerances for ``dtype`` (float32 or float64)."""
    try:
        return _TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"optlayers works in float32 or float64; got {dtype}") from None
