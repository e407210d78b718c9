"""Seeded random QPs with a planted, strictly complementary solution.

Construction (per problem): draw x*, G, A, ν* at random; choose the first k rows of G as the
active set; draw λ*_i ∈ [0.5, 1.5] for active rows (0 otherwise) and slacks s_i ∈ [0.5, 1.5] for
inactive rows (0 otherwise); set

    h = G x* + s,    b = A x*,    q = −(Q x* + Gᵀλ* + Aᵀν*),

so (x*, λ*, ν*) satisfies the KKT conditions with strict complementarity (λ*_i + s_i ≥ 0.5).
Q = U diag(e) Uᵀ with eigenvalues e log-spaced in [1/cond, 1] makes the solution unique.
For an LP (``lp=True``, Q = 0) exactly k = n − p rows are active, so [G_𝒜; A] is square and
(almost surely) nonsingular: x* is a unique, non-degenerate vertex.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass
class RandomQP:
    """A batch of QPs and their planted solution. Shapes as in :func:`optlayers.solve_qp`;
    ``Q``, ``G``, ``A`` lack the batch dimensions when requested as shared."""

    Q: torch.Tensor
    q: torch.Tensor
    G: torch.Tensor
    h: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    x: torch.Tensor
    lam: torch.Tensor
    nu: torch.Tensor
    active: torch.Tensor  # (*, m) bool

    def data(self) -> tuple[torch.Tensor, ...]:
        """``(Q, q, G, h, A, b)`` in the order :func:`optlayers.solve_qp` takes them."""
        return self.Q, self.q, self.G, self.h, self.A, self.b


def random_qp(
    batch_shape: int | tuple[int, ...] = (),
    n: int = 10,
    m: int = 10,
    p: int = 3,
    *,
    active_fraction: float = 0.5,
    cond: float = 10.0,
    lp: bool = False,
    shared: tuple[str, ...] = (),
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> RandomQP:
    """A seeded batch of feasible QPs with known solution ``(x*, λ*, ν*)``.

    Args:
        batch_shape: leading batch shape (an int means ``(int,)``; ``()`` for one problem).
        n, m, p: variables, inequalities, equalities (``p < n``).
        active_fraction: fraction of the m inequalities active at x* (capped at n − p so the
            active constraints stay linearly independent). Ignored for LPs (k = n − p).
        cond: condition number of Q (ignored for LPs).
        lp: make Q = 0 (a linear program with a unique vertex solution; needs m ≥ n − p).
        shared: names among ``"Q", "G", "A"`` drawn once and shared by the batch (no batch dims).
        seed: generator seed (CPU generator, so results are identical on every device).
        dtype, device: of every returned tensor.
    """
    if isinstance(batch_shape, int):
        batch_shape = (batch_shape,)
    batch_shape = tuple(batch_shape)
    if not 0 <= p < n:
        raise ValueError(f"random_qp: need 0 ≤ p < n; got n={n}, p={p}")
    if not 0.0 <= active_fraction <= 1.0:
        raise ValueError(f"random_qp: active_fraction must be in [0, 1]; got {active_fraction}")
    if not (math.isfinite(cond) and cond >= 1.0):  # (inf/NaN had given NaN data, cond < 1 another cond)
        raise ValueError(f"random_qp: cond must be a finite number ≥ 1; got {cond}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"random_qp: dtype must be torch.float32 or torch.float64; got {dtype}")
    bad = set(shared) - {"Q", "G", "A"}
    if bad:
        raise ValueError(f"random_qp: shared may name 'Q', 'G', 'A'; got {sorted(bad)}")
    if lp:
        k = n - p
        if m < k:
            raise ValueError(f"random_qp: an LP with a unique vertex needs m ≥ n − p = {k}; got m={m}")
    else:
        k = min(int(round(active_fraction * m)), n - p)

    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=f64)

    def unif(shape, lo=0.5, hi=1.5):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=f64)

    def bshape(name):
        return () if name in shared else batch_shape

    if lp:
        Q = torch.zeros(bshape("Q") + (n, n), dtype=f64)
    else:
        U, _ = torch.linalg.qr(draw(*bshape("Q"), n, n))
        eig = torch.logspace(0.0, -math.log10(cond), n, dtype=f64)
        Q = (U * eig) @ U.mT
        Q = 0.5 * (Q + Q.mT)
    G = draw(*bshape("G"), m, n)
    A = draw(*bshape("A"), p, n)
    x = draw(*batch_shape, n)
    active = torch.zeros(batch_shape + (m,), dtype=torch.bool)
    active[..., :k] = True
    lam = torch.where(active, unif(batch_shape + (m,)), torch.zeros((), dtype=f64))
    slack = torch.where(active, torch.zeros((), dtype=f64), unif(batch_shape + (m,)))
    nu = draw(*batch_shape, p)

    def mv(M, v):
        return (M @ v.unsqueeze(-1)).squeeze(-1)

    h = mv(G, x) + slack
    b = mv(A, x)
    q = -(mv(Q, x) + mv(G.mT, lam) + mv(A.mT, nu))

    def out(t):
        return t.to(dtype=dtype, device=device)

    return RandomQP(*(out(t) for t in (Q, q, G, h, A, b, x, lam, nu)), active=active.to(device))
