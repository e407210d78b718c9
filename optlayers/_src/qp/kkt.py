"""The active-set KKT system of a QP — shared by polishing and by the implicit backward.

At a solution ``(x, λ, ν)`` with active set 𝒜 = {i : constraint i holds with equality and is
treated as active}, the KKT conditions that stay valid under small perturbations are

    Q x + q + G_𝒜ᵀ λ_𝒜 + Aᵀ ν = 0,     G_𝒜 x = h_𝒜,     A x = b,     λ_ℐ = 0.

They are linear in ``(x, λ, ν)`` with the symmetric (indefinite) matrix

        ⎡ Q      Gᵀ M     Aᵀ ⎤           M = diag(1[i ∈ 𝒜])  (m × m mask)
    K = ⎢ M G    I − M    0  ⎥           size N = n + m + p
        ⎣ A      0        0  ⎦

written over all m inequality rows so that a batch with different active sets is one batched
matrix: an inactive row ``i`` reduces to the equation ``λ_i = (rhs)_i``.

*Polishing* solves ``K (x, λ, ν) = (−q, M h, b)``: the exact solution of the equality-constrained
QP on the guessed active set (accepted only if it is primal and dual feasible).

*Differentiation*: differentiating the conditions above gives ``K (dx, dλ, dν) = −(dK)(x, λ, ν) + d(rhs)``,
so one solve with K (symmetric, so also Kᵀ) gives both JVPs and VJPs; see ``backward.py``.

Numerics: we LU-factor the quasi-definite regularization

    K_δ = K + diag(δ I_n, −δ M, −δ I_p)

which is nonsingular for any δ > 0 when Q ⪰ 0 (even if K itself is singular: redundant active
constraints, Q singular on their null space), then run a few steps of iterative refinement against
the exact K. When K is nonsingular this converges to the exact solution (contraction factor
≈ δ‖K⁻¹‖); when K is singular it returns a finite, regularized (minimum-norm-like) solution —
the documented element of the generalized Jacobian at degenerate points.
"""

from __future__ import annotations

import dataclasses

import torch

from optlayers._src.qp.linalg import mtv, mv
from optlayers._src.qp.problem import QPData
from optlayers._src.tolerances import tolerances_for

# Refinement steps against the exact K. Each step costs one triangular solve pair + one matvec.
REFINEMENT_STEPS = 3
# On CPU with more than one thread, torch's *batched* LU (MKL getrf inside at::parallel_for)
# printed "Parameter 6 was incorrect on entry to DLASWP" and hung for batches of 16 matrices of
# size ≥ ~200 (torch 2.13.0 CPU wheel, 2 threads; sizes ≤ 150 were fine). From this size on we
# factor one matrix per call, where the O(N³) work dwarfs the call overhead anyway.
CPU_BATCHED_LU_MAX_N = 128


@dataclasses.dataclass(frozen=True)
class ActiveKKTFactor:
    """LU factorization of the regularized active-set KKT matrix ``K_δ`` (batched).

    ``lu``: (B, N, N), ``pivots``: (B, N) int32, ``mask``: (B, m) 0/1 in the data dtype,
    ``delta``: (B,) regularization used. N = n + m + p.
    """

    lu: torch.Tensor
    pivots: torch.Tensor
    mask: torch.Tensor
    delta: torch.Tensor

    def take(self, idx: torch.Tensor) -> "ActiveKKTFactor":
        return ActiveKKTFactor(self.lu[idx], self.pivots[idx], self.mask[idx], self.delta[idx])


def classify_active(lam: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
    """Active-set guess from an (approximate) primal-dual solution: 1 where ``λ_i > s_i``.

    At a strictly complementary solution exactly one of ``λ_i``, ``s_i = h_i − G_i x`` is
    nonzero, so the rule is exact near the solution. At a degenerate constraint (both zero)
    it is a tie broken by the solver's last iterate; either choice gives an element of the
    generalized Jacobian. Returns a 0/1 tensor in the dtype of ``lam``, shape (B, m).
    """
    return (lam > slack).to(lam.dtype)


def _data_scale(data: QPData) -> torch.Tensor:
    """(B,) max |entry| of Q, G, A per problem (≥ 1), for a scale-aware regularization."""
    B = data.B
    parts = []
    for t in (data.Q, data.G, data.A):
        if t.numel() == 0:
            continue
        a = t.abs().flatten(-2).amax(-1)
        parts.append(a if a.dim() == 1 else a.expand(B))
    scale = torch.stack(parts, 0).amax(0) if parts else data.q.new_ones(B)
    return scale.clamp_min(1.0)


def assemble(data: QPData, mask: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
    """The (B, N, N) matrix K (or K_δ when ``delta`` (B,) is given)."""
    n, m, p, B = data.n, data.m, data.p, data.B
    N = n + m + p
    K = data.q.new_zeros(B, N, N)
    K[:, :n, :n] = data.Q
    MG = mask.unsqueeze(-1) * data.G  # (B, m, n)
    K[:, n:n + m, :n] = MG
    K[:, :n, n:n + m] = MG.mT
    K[:, n + m:, :n] = data.A
    K[:, :n, n + m:] = data.A.mT
    idx_m = torch.arange(n, n + m, device=K.device)
    K[:, idx_m, idx_m] = 1.0 - mask
    if delta is not None:
        d = delta.unsqueeze(-1)
        idx_n = torch.arange(n, device=K.device)
        K[:, idx_n, idx_n] += d
        K[:, idx_m, idx_m] -= d * mask
        idx_p = torch.arange(n + m, N, device=K.device)
        K[:, idx_p, idx_p] -= d
    return K


def matvec(data: QPData, mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``K u`` for u of shape (B, N), without forming K."""
    n, m = data.n, data.m
    ux, ul, un = u[:, :n], u[:, n:n + m], u[:, n + m:]
    top = mv(data.Q, ux) + mtv(data.G, mask * ul) + mtv(data.A, un)
    mid = mask * mv(data.G, ux) + (1.0 - mask) * ul
    bot = mv(data.A, ux)
    return torch.cat([top, mid, bot], dim=-1)


def factor(data: QPData, mask: torch.Tensor) -> ActiveKKTFactor:
    """LU-factor ``K_δ`` for the active-set mask (B, m)."""
    tol = tolerances_for(data.dtype)
    delta = tol.kkt_reg * _data_scale(data)
    lu, pivots = _lu_factor(assemble(data, mask, delta))
    return ActiveKKTFactor(lu=lu, pivots=pivots, mask=mask, delta=delta)


def _lu_factor(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched LU with partial pivoting (see CPU_BATCHED_LU_MAX_N for the CPU workaround)."""
    if K.device.type == "cpu" and K.shape[-1] > CPU_BATCHED_LU_MAX_N and torch.get_num_threads() > 1:
        parts = [torch.linalg.lu_factor_ex(K[i])[:2] for i in range(K.shape[0])]
        if not parts:
            return K.clone(), K.new_zeros(K.shape[:-1], dtype=torch.int32)
        return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    lu, pivots, _ = torch.linalg.lu_factor_ex(K)
    return lu, pivots


def solve(data: QPData, fac: ActiveKKTFactor, rhs: torch.Tensor, refine: int = REFINEMENT_STEPS) -> torch.Tensor:
    """Solve ``K u = rhs`` (rhs, u: (B, N)) with the factor of K_δ plus iterative refinement."""

    def lu_solve(r: torch.Tensor) -> torch.Tensor:
        return torch.linalg.lu_solve(fac.lu, fac.pivots, r.unsqueeze(-1)).squeeze(-1)

    u = lu_solve(rhs)
    for _ in range(refine):
        u = u + lu_solve(rhs - matvec(data, fac.mask, u))
    return u
