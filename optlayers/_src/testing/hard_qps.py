"""Seeded batches of *hard* QPs whose answer is known by construction.

:func:`random_qp` plants well-posed problems (independent active rows, strict complementarity).
Layers fail elsewhere, and these families are where ours did (each was found by fuzzing every
dense path against Clarabel; ``tests/qp/test_qp_robustness.py``):

``degenerate_vertex`` (n=22, m=55, p=5)
    Q ≻ 0; x0 lies on the ~m/2 rows drawn with zero slack (20–33 of them: with the equalities
    more than n), about half of them with a positive multiplier, so x0 is the unique solution of
    a degenerate vertex: the active rows are dependent and the multipliers not unique.
``pinned_vertex`` (n=1, m=24, p=0, k=3)
    Q ≻ 0; n + k random rows pass through x0 with positive multipliers — rows of both signs, an
    equality written as opposite inequalities. In float32 the pinning rows are consistent only up
    to rounding (~1e-7 relative), which is where a solver must not claim infeasibility.
``duplicate_rows`` (n=10, m=20, p=3)
    A :func:`random_qp` problem whose active rows are repeated twice more, scaled by 2 and 1/2:
    same unique x*, multipliers not unique (m counts the rows before the repeats: 34 in all).
``infeasible`` (n=10, m=20, p=3)
    A :func:`random_qp` problem plus two rows gᵀx ≤ c and −gᵀx ≤ −c − δ (‖g‖ = 1) that no x meets,
    δ log-uniform in [1e-3, 1].
``unbounded`` (n=10, m=20, p=3)
    Q ⪰ 0 of rank n − 1 and a feasible x0 with a ray x0 + t·d (t → ∞) along which every row of G
    decreases (Gd ≤ −0.1), Ad = 0, Qd = 0 and qᵀd = −1: the objective is unbounded below.

The expected status is ``SOLVED`` (with ``x`` the solution and ``lam``, ``nu`` multipliers that
prove it, one choice where they are not unique), ``PRIMAL_INFEASIBLE`` or ``DUAL_INFEASIBLE``
(``x``, ``lam``, ``nu`` NaN). All data are batched (no shared matrices).
"""

from __future__ import annotations

import dataclasses

import torch

from optlayers._src.status import Status
from optlayers._src.testing.random_qp import random_qp

FAMILIES = ("degenerate_vertex", "pinned_vertex", "duplicate_rows", "infeasible", "unbounded")
_SIZES = {
    "degenerate_vertex": (22, 55, 5),
    "pinned_vertex": (1, 24, 0),
    "duplicate_rows": (10, 20, 3),
    "infeasible": (10, 20, 3),
    "unbounded": (10, 20, 3),
}


@dataclasses.dataclass
class HardQPs:
    """A batch of B hard QPs (all data batched) and the answer each one has."""

    family: str
    Q: torch.Tensor  # (B, n, n)
    q: torch.Tensor  # (B, n)
    G: torch.Tensor  # (B, m, n)
    h: torch.Tensor  # (B, m)
    A: torch.Tensor  # (B, p, n)
    b: torch.Tensor  # (B, p)
    x: torch.Tensor  # (B, n): the solution; NaN where there is none
    lam: torch.Tensor  # (B, m): multipliers of Gx ≤ h at x (one choice where they are not unique); NaN
    nu: torch.Tensor  # (B, p): multipliers of Ax = b at x; NaN where there is no solution
    expect: torch.Tensor  # (B,) int8: Status.SOLVED, PRIMAL_INFEASIBLE or DUAL_INFEASIBLE

    def data(self) -> tuple[torch.Tensor, ...]:
        """``(Q, q, G, h, A, b)`` in the order :func:`optlayers.solve_qp` takes them."""
        return self.Q, self.q, self.G, self.h, self.A, self.b


def hard_qps(family: str, B: int = 32, *, seed: int = 0, size: tuple[int, int, int] | None = None,
             pinning_rows: int = 3, dtype: torch.dtype = torch.float64,
             device: torch.device | str = "cpu") -> HardQPs:
    """A seeded batch of one family of hard QPs (see the module docstring for each family).

    Args:
        family: one of ``FAMILIES``.
        B: batch size.
        seed: generator seed (CPU generator: identical data on every device).
        size: ``(n, m, p)`` instead of the family's default.
        pinning_rows: ``pinned_vertex`` only: k, so n + k rows pass through x0.
        dtype, device: of the returned tensors (the construction runs in float64; float32 data
            are its rounding).

    In float32, ``expect``, ``x``, ``λ``, ``ν`` are those of the float64 construction, which the
    rounded data satisfy only to float32's tolerances: the rows that pin a ``pinned_vertex`` can be
    inconsistent by ~1e-7 (an exact solver may call the rounded problem infeasible), and an
    ``unbounded`` problem's rank-deficient Q can round to a slightly definite or indefinite one
    (its ray is then a direction of ~1e-7 curvature). A float32 solver is expected to give these
    answers at its own tolerance, which is what the tests and ``benchmarks/hard_qps.py`` check.
    """
    if family not in FAMILIES:
        raise ValueError(f"hard_qps: family must be one of {FAMILIES}; got {family!r}")
    if B < 1:
        raise ValueError(f"hard_qps: need B ≥ 1; got {B}")
    if not (isinstance(pinning_rows, int) and pinning_rows >= 1):
        raise ValueError(f"hard_qps: pinning_rows must be an int ≥ 1; got {pinning_rows!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"hard_qps: dtype must be torch.float32 or torch.float64; got {dtype}")
    n, m, p = size if size is not None else _SIZES[family]
    g = torch.Generator().manual_seed(seed)
    build = {
        "degenerate_vertex": _degenerate_vertex,
        "pinned_vertex": _pinned_vertex,
        "duplicate_rows": _duplicate_rows,
        "infeasible": _infeasible,
        "unbounded": _unbounded,
    }[family]
    Q, q, G, h, A, b, x, lam, nu, expect = build(g, B, n, m, p, pinning_rows, seed)
    out = [t.to(dtype=dtype, device=device) for t in (Q, q, G, h, A, b, x, lam, nu)]
    return HardQPs(family, *out, expect=torch.full((B,), int(expect), dtype=torch.int8, device=device))


def _draw(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _mv(M, v):
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def _strictly_convex(g, B, n):
    L = _draw(g, B, n, n)
    return L @ L.mT / n + 1e-2 * torch.eye(n, dtype=torch.float64)


def _degenerate_vertex(g, B, n, m, p, _k, _seed):
    Q = _strictly_convex(g, B, n)
    x0 = _draw(g, B, n)
    G = _draw(g, B, m, n)
    s = _draw(g, B, m).clamp_min(0)
    A = _draw(g, B, p, n)
    on = s == 0
    keep = torch.rand(B, m, generator=g, dtype=torch.float64) < 0.5
    lam = torch.where(on & keep, _draw(g, B, m).abs(), torch.zeros(()))
    nu = _draw(g, B, p)
    q = -(_mv(Q, x0) + _mv(G.mT, lam) + _mv(A.mT, nu))
    return Q, q, G, _mv(G, x0) + s, A, _mv(A, x0), x0, lam, nu, Status.SOLVED


def _pinned_vertex(g, B, n, m, p, k, _seed):
    if n + k > m:
        raise ValueError(f"hard_qps: pinned_vertex needs n + pinning_rows ≤ m; got {n} + {k} > {m}")
    Q = _strictly_convex(g, B, n)
    x0 = _draw(g, B, n)
    G = _draw(g, B, m, n)
    h = _mv(G, x0) + _draw(g, B, m).clamp_min(0)
    pin = torch.rand(B, m, generator=g, dtype=torch.float64).argsort(-1)[:, : n + k]
    on = torch.zeros(B, m, dtype=torch.bool).scatter_(1, pin, True)
    h = torch.where(on, _mv(G, x0), h)
    lam = torch.where(on, _draw(g, B, m).abs(), torch.zeros(()))
    A = _draw(g, B, p, n)
    nu = _draw(g, B, p)
    q = -(_mv(Q, x0) + _mv(G.mT, lam) + _mv(A.mT, nu))
    return Q, q, G, h, A, _mv(A, x0), x0, lam, nu, Status.SOLVED


def _duplicate_rows(g, B, n, m, p, _k, seed):
    P = random_qp(B, n, m, p, seed=seed)
    k = int(P.active[0].sum())  # the first k rows are the active ones (random_qp's layout)
    G = torch.cat([P.G, 2 * P.G[:, :k], 0.5 * P.G[:, :k]], 1)
    h = torch.cat([P.h, 2 * P.h[:, :k], 0.5 * P.h[:, :k]], 1)
    lam = torch.cat([P.lam, torch.zeros(B, 2 * k, dtype=torch.float64)], 1)
    return P.Q, P.q, G, h, P.A, P.b, P.x, lam, P.nu, Status.SOLVED


def _no_solution(B, n, m, p):
    nan = float("nan")
    return (torch.full((B, n), nan, dtype=torch.float64), torch.full((B, m), nan, dtype=torch.float64),
            torch.full((B, p), nan, dtype=torch.float64))


def _infeasible(g, B, n, m, p, _k, seed):
    P = random_qp(B, n, m - 2, p, seed=seed)
    Q, q, G, h, A, b, x = P.Q, P.q, P.G, P.h, P.A, P.b, P.x
    row = _draw(g, B, n)
    row = row / row.norm(dim=-1, keepdim=True)
    c = (row * x).sum(-1) + 1
    gap = 10.0 ** (-3 * torch.rand(B, generator=g, dtype=torch.float64))
    G = torch.cat([G, row[:, None], -row[:, None]], 1)
    h = torch.cat([h, c[:, None], -(c + gap)[:, None]], 1)
    return (Q, q, G, h, A, b) + _no_solution(B, n, m, p) + (Status.PRIMAL_INFEASIBLE,)


def _unbounded(g, B, n, m, p, _k, _seed):
    d = _draw(g, B, n)
    d = d / d.norm(dim=-1, keepdim=True)

    def away(M):  # the rows of M made orthogonal to d
        return M - _mv(M, d).unsqueeze(-1) * d.unsqueeze(-2)

    R = away(_draw(g, B, n - 1, n))
    Q = R.mT @ R  # rank n − 1, Qd = 0
    A = away(_draw(g, B, p, n))  # Ad = 0
    G = _draw(g, B, m, n)
    Gd = _mv(G, d)
    G = G - (Gd.clamp_min(0) + 0.1).unsqueeze(-1) * d.unsqueeze(-2)  # Gd ≤ −0.1
    x0 = _draw(g, B, n)
    h = _mv(G, x0) + torch.rand(B, m, generator=g, dtype=torch.float64)
    q = _draw(g, B, n)
    q = q - ((q * d).sum(-1) + 1).unsqueeze(-1) * d  # qᵀd = −1
    return (Q, q, G, h, A, _mv(A, x0)) + _no_solution(B, n, m, p) + (Status.DUAL_INFEASIBLE,)
