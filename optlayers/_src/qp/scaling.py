"""Scaling of badly scaled dense QPs before the backends see them: variables, constraint rows, then
the objective.

The problem  min ½xᵀQx + qᵀx  s.t.  Ax = b, Gx ≤ h  is, for positive diagonals D, R, S and σ > 0,
the problem in x = D x̃

    min (½x̃ᵀ(DQD)x̃ + (Dq)ᵀx̃)/σ   s.t.   (SAD)x̃ = Sb,  (RGD)x̃ ≤ Rh,

with the same inequality rows, whose multipliers are λ̃ = R⁻¹λ/σ, ν̃ = S⁻¹ν/σ. The interior point is
not invariant to D, R, S and σ: its stopping tests and its polish's acceptance test are relative to
1 + (the size of the terms), its initial point mixes the objective with the constraints' least
squares, and its regularization is relative to max(1, |data|). Measured on `random_qp(16, 10, 15, 3)`
before this module (both dense backends alike): with Q, q multiplied by s, s ≥ 1e4 stalled
(MAX_ITER after ~8 iterations) and s = 1e-8 returned SOLVED with x off by 4e-2; with the variables
rescaled by D = logspace(−3, 3), 3 of 16 problems stalled. With G, h, A, b multiplied by s (the
constraints in other units; `random_qp(256, 20, 30, 5)`, before the row scaling): SOLVED with x off
by 5e-4 relative at s = 1e-4 in float64 (the polish's KKT solve, regularized at 1e-11 against a
Schur complement of s² = 1e-8, stopped refining at its acceptance tolerance), and by 0.3 (s = 1e-4)
and 46 (s = 1e-8) in float32. (The backends' interior point scales G's and A's rows to unit norm
itself; the polish and the tests see the data as given to them.)

What is done, per problem, on the data's statistics (on CPU computed by the C++ input checks, or by
``qp_scale_stats`` when they are off):
- **Columns**, where the spread max_j c_j / min_j c_j of the column scales c_j = max(max_k |Q_kj|,
  max_r |G_rj| / max|G_r|, max_e |A_ej| / max|A_e|) exceeds ``COLUMN_SPREAD_MAX`` (float32:
  ``COLUMN_SPREAD_MAX_FLOAT32``): D from
  ``RUIZ_ITERS`` passes of Ruiz equilibration (D ← D/√c for the scaled data's c).
- **Rows** of G and A (of the column-scaled data), where some nonzero row's largest entry lies
  outside [``LOW``, ``HIGH``]: every row divided by the power of two nearest its largest entry
  (R, S: exact in floating point, so the rows keep their digits and h, b are scaled with them).
- **Objective**, where σ = max(max|Q|, max|q|) (of the column-scaled data) lies outside
  [``LOW``, ``HIGH``]: Q/σ, q/σ (σ = 1 where it lies inside, or where Q = 0 and q = 0).
Well-scaled data (every problem inside every limit: the planted problems of ``ol.testing`` and the
grasp QPs of the examples) is passed on untouched, bit for bit.

The solution's own scale (every variable in one unit far from the solution's: x = τx̃ with
Q ~ τ⁻², q ~ τ⁻¹, G ~ τ⁻¹) is not known before the solve, and scaling q, h, b by their own size up
front would break problems with a large bound ("x ≤ 1e6" for no bound). After the solve,
``solution_scales`` picks the problems whose SOLVED x (or PRIMAL_INFEASIBLE right-hand side) is far
from unit size, and ``at_solution_scale`` gives their second solve: q, h, b divided by τ, the
rows at unit scale, the objective rescaled by max|Q| (api.py::_at_solution_scale). Measured
(``random_qp(256, 20, 30, 5)``, every variable in a unit τ = 1e-6 … 1e6 times the solution's): before,
float64 came back SOLVED with x off by 0.2 relative at τ = 1e6 and float32 by 0.4 at τ = 1e4, and 108
feasible float32 problems were certified PRIMAL_INFEASIBLE at τ = 1e-4; after, x right to 1e-13
(float64) and 4e-5 (float32), all SOLVED.

Under autograd D, R, S and σ are constants: the solution map is invariant to them (x(scaled data)
mapped back does not depend on D, R, S or σ), so the derivative through them is exactly zero, and
the KKT derivative of the scaled problem chained through the scaling is the original one's. Shared
matrices stay shared when D and σ are one for the whole batch (R and S are shared with a shared G,
A); otherwise the scaled ones are per problem (only badly scaled data pays that memory).
"""

from __future__ import annotations

import dataclasses

import torch

from optlayers._src.qp.linalg import expand_vec
from optlayers._src.qp.problem import QPData
from optlayers._src.status import Status

LOW = 1e-2
HIGH = 1e2
COLUMN_SPREAD_MAX = 1e4
# float32: columns equilibrated from a spread of 1e2. With 1e4, variables in units 2.5e-2 … 1.4e2
# apart (c spread 410, Q's column maxima 3e4 apart, Q's condition 1e9) came back SOLVED with x off
# by up to 1.1 relative (a fuzz over combined disguises: 105 of 960 float32 problems wrong, float64
# none); every planted, hard and grasp problem of the tests has a spread of 1 … 11.
COLUMN_SPREAD_MAX_FLOAT32 = 1e2
RUIZ_ITERS = 10
# A second solve at the solution's scale rescales by at most 2^±64 (~1e±19).
MAX_SOLUTION_OCTAVES = 64


@dataclasses.dataclass(frozen=True)
class Scaling:
    """x = d ∘ x̃ (d: (B, n), (n,) shared, or None), λ = σ r ∘ λ̃ and ν = σ a ∘ ν̃ (r: G's row scales
    (B, m) or (m,), a: A's (B, p) or (p,), each None for none; sigma: (B,) or None)."""

    d: torch.Tensor | None
    sigma: torch.Tensor | None
    r: torch.Tensor | None = None
    a: torch.Tensor | None = None
    # The solution's scale (B,): q, h, b divided by τ, x = τ x̂, λ = τ λ̂, ν = τ ν̂ (after the others;
    # set only for a second solve, see at_solution_scale).
    tau: torch.Tensor | None = None

    def take(self, idx: torch.Tensor) -> "Scaling":
        """The scaling of the sub-batch ``idx`` (shared scales kept as they are)."""
        def part(t: torch.Tensor | None, batched_dims: int) -> torch.Tensor | None:
            return t[idx] if t is not None and t.dim() >= batched_dims else t

        return Scaling(d=part(self.d, 2), sigma=part(self.sigma, 1), r=part(self.r, 2), a=part(self.a, 2),
                       tau=part(self.tau, 1))

    def apply(self, data: QPData) -> QPData:
        """The scaled data (differentiable in the original tensors; d, r, a and σ constant)."""
        if self.d is not None:
            data = _scale_columns(data, self.d)
        if self.r is not None:
            data = dataclasses.replace(data, G=self.r.unsqueeze(-1) * data.G, h=self.r * data.h)
        if self.a is not None:
            data = dataclasses.replace(data, A=self.a.unsqueeze(-1) * data.A, b=self.a * data.b)
        if self.sigma is not None:
            s = self.sigma
            if bool((s == s[0]).all()):  # one σ for the batch: shared fields stay shared
                data = dataclasses.replace(data, Q=data.Q / s[0], q=data.q / s[0])
            else:
                data = dataclasses.replace(data, Q=data.Q / s.view(-1, 1, 1), q=data.q / s.view(-1, 1))
        if self.tau is not None:
            t = self.tau.view(-1, 1)
            data = dataclasses.replace(data, q=data.q / t, h=data.h / t, b=data.b / t)
        return data

    def unscale(self, x: torch.Tensor, lam: torch.Tensor, nu: torch.Tensor):
        """The original problem's (x, λ, ν), (B, ·) each, from the scaled one's."""
        if self.tau is not None:
            t = self.tau.to(x.dtype).view(-1, 1)
            x, lam, nu = x * t, lam * t, nu * t
        if self.d is not None:
            x = x * self.d.to(x.dtype)
        if self.r is not None:
            lam = lam * self.r.to(lam.dtype)
        if self.a is not None:
            nu = nu * self.a.to(nu.dtype)
        if self.sigma is not None:
            s = self.sigma.to(lam.dtype).view(-1, 1)
            lam, nu = lam * s, nu * s
        return x, lam, nu


def plan(data: QPData) -> Scaling | None:
    """The scaling of ``data`` (see the module docstring), or None if it is well scaled."""
    if data.B == 0:
        return None
    sig_lo, sig_hi, spread, row_lo, row_hi = _stats(data)
    objective_ok = (LOW <= sig_lo or sig_hi == 0) and sig_hi <= HIGH
    rows_ok = within_limits(row_lo, row_hi)
    spread_max = COLUMN_SPREAD_MAX_FLOAT32 if data.dtype == torch.float32 else COLUMN_SPREAD_MAX
    if spread <= spread_max and objective_ok and rows_ok:
        return None
    d = None
    if spread > spread_max:
        d = _ruiz(data)
    work = data if d is None else _scale_columns(data, d)
    r = a = None
    if d is not None or not rows_ok:  # (column scaling moves the rows' scales)
        r, a = _unit_row_scales(work, only_if_outside=True)
    sigma = _objective_scales(work) if (d is not None or not objective_ok) else None
    if d is None and sigma is None and r is None and a is None:
        return None
    return Scaling(d=d, sigma=sigma, r=r, a=a)


def solution_scales(x: torch.Tensor, status: torch.Tensor, data: QPData) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The problems to solve again at their solution's scale, from a first solve's (x (B, n),
    status (B,)) of ``data``, all in the scaled units the backend saw: ``(idx (k,), τ (k,))`` with τ
    the power of two nearest the size of the solution — max|x̂_i| for the problems that ended SOLVED
    with a nonzero x — where that lies outside [``LOW``, ``HIGH``]; None when there is none (the
    common case: one reduction over x). Not the MAX_ITER or NUMERICAL_ERROR iterates: an unbounded
    problem's diverging iterate (x ~ 1e14) rescaled to unit size hides the unboundedness (q/τ ~
    1e-14), and 7 of 32 ``hard_qps("unbounded")`` came back SOLVED.

    A PRIMAL_INFEASIBLE certificate judged with a right-hand side far from unit size is checked the
    same way, with max(|h_i|, |b_i|) as the size (float32, x ~ 1e4 … 1e6 in the scaled units:
    feasible problems were certified infeasible, 108 of 256 ``random_qp(256, 20, 30, 5)`` with
    every variable in a unit 1e-4 of the solution's); an infeasible problem stays so, at the cost of
    a second solve."""
    if x.shape[-1] == 0 or x.shape[0] == 0:
        return None
    if _all_unit_and_solved(x, status):  # the common case, in a few µs (torch ops cost ~5 µs each)
        return None
    size = x.detach().abs().amax(-1)
    usable = status == Status.SOLVED
    certified = status == Status.PRIMAL_INFEASIBLE
    if bool(certified.any()):
        rhs = torch.cat([expand_vec(data.h, data.B), expand_vec(data.b, data.B)], -1).detach()
        if rhs.shape[-1]:
            size = torch.where(certified, rhs.abs().amax(-1).to(size.dtype), size)
            usable = usable | certified
    far = usable & torch.isfinite(size) & (size > 0) & ((size < LOW) | (size > HIGH))
    if not bool(far.any()):
        return None
    idx = torch.nonzero(far).squeeze(-1)
    k = torch.round(torch.log2(size[idx])).clamp(-MAX_SOLUTION_OCTAVES, MAX_SOLUTION_OCTAVES)
    return idx, torch.exp2(k)


def _all_unit_and_solved(x: torch.Tensor, status: torch.Tensor) -> bool:
    """Whether every problem is SOLVED with max|x_i| in [LOW, HIGH] (NaN: False). CPU tensors are
    read through numpy: the check runs after every solve, and at B = 32, n = 20 the dozen torch ops
    of the full test cost 60–130 µs of a 470 µs call."""
    if x.device.type == "cpu":
        import numpy as np

        size = np.abs(x.detach().numpy()).max(-1)
        lo, hi, failed = size.min(), size.max(), (status.numpy() != int(Status.SOLVED)).any()
    else:
        size = x.detach().abs().amax(-1)
        failed_t = (status != int(Status.SOLVED)).any().to(size.dtype)
        lo, hi, failed = torch.stack([size.amin(), size.amax(), failed_t]).tolist()
    return bool(LOW <= lo and hi <= HIGH and not failed)


def at_solution_scale(base: Scaling | None, tau: torch.Tensor, data: QPData) -> Scaling:
    """The scaling of a second solve of the problems ``data`` (a sub-batch, original units) whose
    first solve, scaled by ``base`` (restricted to them, or None), had solutions of size ``τ`` (k,):
    ``base`` with q, h, b divided by τ, the rows of G and A at unit size (rows merely inside the
    limits, ~0.04, cost 8e-8 in the multipliers), and the objective divided by max|Q| where that lies
    outside [``LOW``, ``HIGH``] (x̂ ~ 1e6 with Q̃ ~ 1e-8 after the first σ: Q̃ and q̃/τ ~ 1e-6 would
    leave the objective far below the constraints)."""
    plan = dataclasses.replace(base if base is not None else Scaling(d=None, sigma=None), tau=tau.to(data.dtype))
    if plan.r is None and plan.a is None:  # rows inside the limits but not at unit scale: make them so
        r, a = _unit_row_scales(data if plan.d is None else _scale_columns(data, plan.d), only_if_outside=False)
        plan = dataclasses.replace(plan, r=r, a=a)
    sigma = _objective_scales(plan.apply(data), of_Q=True)
    if sigma is None:
        return plan
    return dataclasses.replace(plan, sigma=sigma if plan.sigma is None else plan.sigma * sigma)


def within_limits(lo: float, hi: float) -> bool:
    """Whether the nonzero rows' largest entries, in [lo, hi] (hi = 0: no nonzero row), lie in
    [LOW, HIGH]."""
    return hi == 0 or (LOW <= lo and hi <= HIGH)


def row_range(tops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(smallest nonzero, largest) of the rows' largest entries ``tops`` (tensors of any shape), as
    0-dim tensors (no synchronization); (+inf, 0) where no row is nonzero."""
    flat = torch.cat([t.reshape(-1) for t in tops])
    if flat.numel() == 0:
        return flat.new_full((), float("inf")), flat.new_zeros(())
    return torch.where(flat > 0, flat, torch.full_like(flat, float("inf"))).amin(), flat.amax()


def _unit_row_scales(data: QPData, only_if_outside: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Power-of-two scales (r, a) bringing every row of G and of A to unit size (None for no rows);
    with ``only_if_outside``, (None, None) where every row already lies within the limits."""
    with torch.no_grad():
        tops = [torch.linalg.vector_norm(M.detach(), float("inf"), dim=-1) for M in (data.G, data.A)]
        if only_if_outside and within_limits(*torch.stack(row_range(tops)).tolist()):
            return None, None
        return tuple(power_of_two_scales(t) if t.numel() else None for t in tops)


def power_of_two_scales(tops: torch.Tensor) -> torch.Tensor:
    """Row scales 2^−k, 2^k the power of two nearest each row's largest entry (``tops``), 1 for a
    zero row: the scaled rows' largest entries lie in [1/√2, √2], and the scaling is exact."""
    k = torch.round(torch.log2(torch.where(tops > 0, tops, torch.ones_like(tops))))
    return torch.exp2(-k)


def _stats(data: QPData) -> tuple[float, float, float, float, float]:
    """(min σ_i, max σ_i, max column spread, min, max of the nonzero rows' largest entries in G and
    A) over the batch: from the input checks' C++ pass, else C++ on CPU, else torch ops."""
    if data.scale_stats is not None:
        return data.scale_stats
    if data.device.type == "cpu":
        from optlayers._src.native import ops

        if ops.loaded():  # one pass (the torch ops below cost ~50 µs a call on small batches)
            return ops.scale_stats(data.Q, data.q, data.G, data.A)
    with torch.no_grad():
        c = _column_scales(data.Q.detach(), data.G.detach(), data.A.detach()).expand(data.B, data.n)
        spread = column_spread(c)
        sigma = _sigma(data)
        lo, hi = row_range([torch.linalg.vector_norm(M.detach(), float("inf"), dim=-1) for M in (data.G, data.A)])
        # one device-to-host copy for the five (CUDA: each .item() is a synchronization)
        stats = torch.stack([sigma.amin(), sigma.amax(), spread.amax(), lo, hi]).tolist()
        if stats[3] == float("inf"):  # no nonzero row
            stats[3] = 0.0
        return tuple(stats)


def column_spread(c: torch.Tensor) -> torch.Tensor:
    """max_j c_j / min_j c_j over the nonzero column scales c (…, n); 1 where all are zero."""
    hi = c.amax(-1)
    lo = torch.where(c > 0, c, torch.full_like(c, float("inf"))).amin(-1)
    return torch.where(hi > 0, hi / lo, torch.ones_like(hi))


def _column_scales(Q: torch.Tensor, G: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """c_j = max(max_k |Q_kj|, max_r |G_rj| / max|G_r|, max_e |A_ej| / max|A_e|), shape (B, n) or (n,)
    (what ``qp_scale_stats`` computes in C++). The ∞-norm reductions take |·| on the fly: one
    temporary of G's size, for its row scaling (1.6 GB at B=10,000, n=100, m=200 — G's own size)."""
    inf = float("inf")
    c = torch.linalg.vector_norm(Q, inf, dim=-2)
    tiny = torch.finfo(Q.dtype).tiny
    for M in (G, A):
        if M.shape[-2]:
            top = torch.linalg.vector_norm(M, inf, dim=-1, keepdim=True).clamp_min_(tiny)
            c = torch.maximum(c, torch.linalg.vector_norm(M / top, inf, dim=-2))
    return c


def _scale_columns(data: QPData, d: torch.Tensor) -> QPData:
    """Q → DQD, q → Dq, G → GD, A → AD (d: (B, n) or shared (n,))."""
    return dataclasses.replace(
        data,
        Q=data.Q * d.unsqueeze(-1) * d.unsqueeze(-2),
        q=data.q * d,
        G=data.G * d.unsqueeze(-2),
        A=data.A * d.unsqueeze(-2),
    )


def _ruiz(data: QPData) -> torch.Tensor:
    """Column scales d from Ruiz passes (d ← d / √c of the column-scaled data): shared (n,) when Q, G
    and A are all shared, else (B, n)."""
    with torch.no_grad():
        work = data.detach()
        batched = any(data.is_batched(f) for f in ("Q", "G", "A"))
        d = torch.ones((data.B, data.n) if batched else (data.n,), dtype=data.dtype, device=data.device)
        for _ in range(RUIZ_ITERS):
            sd = _scale_columns(work, d)
            c = _column_scales(sd.Q, sd.G, sd.A)
            d = d / torch.where(c > 0, c, torch.ones_like(c)).sqrt()
        return d


def _objective_scales(data: QPData, of_Q: bool = False) -> torch.Tensor | None:
    """Per-problem σ (B,) (1 where inside [LOW, HIGH] or zero), or None if every one is 1. With
    ``of_Q``, σ = max|Q| where Q ≠ 0 (else max|q|)."""
    with torch.no_grad():
        sigma = _sigma(data)
        if of_Q:
            top = torch.linalg.vector_norm(data.Q.detach(), float("inf"), dim=(-2, -1)).expand(data.B)
            sigma = torch.where(top > 0, top, sigma)
        scale = (sigma > HIGH) | ((sigma < LOW) & (sigma > 0))
        if not bool(scale.any()):
            return None
        return torch.where(scale, sigma, torch.ones_like(sigma))


def _sigma(data: QPData) -> torch.Tensor:
    """σ_i = max(max|Q_i|, max|q_i|), shape (B,) (no autograd)."""
    inf = float("inf")
    Q, q = data.Q.detach(), data.q.detach()
    return torch.maximum(torch.linalg.vector_norm(Q, inf, dim=(-2, -1)), torch.linalg.vector_norm(q, inf, dim=-1)).expand(data.B)
