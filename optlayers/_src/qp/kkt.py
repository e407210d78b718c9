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
the documented element of the generalized Jacobian at degenerate points. Refinement stops early
once every residual is at rounding level (see ``REFINE_STOP``): further steps cannot improve it.
"""

from __future__ import annotations

import dataclasses

import torch

from optlayers._src.qp.linalg import mtv, mv
from optlayers._src.qp.problem import QPData
from optlayers._src.qp.threads import intra_op_threads
from optlayers._src.tolerances import tolerances_for

# Refinement steps against the exact K (at most). Each step costs one LU solve + one matvec.
REFINEMENT_STEPS = 3
# Refinement stops after a step where every problem has ‖r‖∞ ≤ REFINE_STOP·√N·ε·(‖rhs‖∞ + s‖u‖∞)
# (s = max |entry| of the data, ε = machine epsilon): a residual at the rounding level of K u,
# which more steps do not reduce. Measured on random QPs (N = 23…450): after one step the
# residual is 0.3…9 ε(‖rhs‖ + s‖u‖), and steps two and three leave it there.
REFINE_STOP = 2.0
# On CPU with more than one thread, torch's *batched* LU (MKL getrf inside at::parallel_for)
# printed "Parameter 6 was incorrect on entry to DLASWP" and hung for batches of 16 matrices of
# size ≥ ~200 (torch 2.13.0 CPU wheel, 2 threads; sizes ≤ 150 were fine). From this size on we
# factor one matrix per call, where the O(N³) work dwarfs the call overhead anyway.
CPU_BATCHED_LU_MAX_N = 128


@dataclasses.dataclass(frozen=True)
class ActiveKKTFactor:
    """LU factorization of the regularized active-set KKT matrix ``K_δ`` (batched).

    ``lu``: (B, N, N), ``pivots``: (B, N) int32, ``mask``: (B, m) 0/1 in the data dtype,
    ``delta``: (B,) regularization used. N = n + m + p. ``K``: the exact matrix K (B, N, N) when
    the factorization kept it (refinement then needs one product instead of the data matvec).
    """

    lu: torch.Tensor
    pivots: torch.Tensor
    mask: torch.Tensor
    delta: torch.Tensor
    K: torch.Tensor | None = None

    def take(self, idx: torch.Tensor) -> "ActiveKKTFactor":
        K = None if self.K is None else self.K[idx]
        return ActiveKKTFactor(self.lu[idx], self.pivots[idx], self.mask[idx], self.delta[idx], K)


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
    diag = K.diagonal(dim1=-2, dim2=-1)
    diag[:, n:n + m] = 1.0 - mask
    if delta is not None:
        diag += _regularization(delta, mask, n, p)
    return K


def _regularization(delta: torch.Tensor, mask: torch.Tensor, n: int, p: int) -> torch.Tensor:
    """The diagonal (δ1_n, −δM, −δ1_p) of K_δ − K, (B, N)."""
    d = delta.unsqueeze(-1)
    return torch.cat([d.expand(-1, n), -d * mask, (-d).expand(-1, p)], -1)


def matvec(data: QPData, mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``K u`` for u of shape (B, N), without forming K."""
    n, m = data.n, data.m
    ux, ul, un = u[:, :n], u[:, n:n + m], u[:, n + m:]
    top = mv(data.Q, ux) + mtv(data.G, mask * ul) + mtv(data.A, un)
    mid = mask * mv(data.G, ux) + (1.0 - mask) * ul
    bot = mv(data.A, ux)
    return torch.cat([top, mid, bot], dim=-1)


def factor(data: QPData, mask: torch.Tensor, keep_matrix: bool = True) -> ActiveKKTFactor:
    """LU-factor ``K_δ`` for the active-set mask (B, m); ``keep_matrix`` keeps K for refinement."""
    tol = tolerances_for(data.dtype)
    with intra_op_threads(data):
        delta = tol.kkt_reg * _data_scale(data)
        K = assemble(data, mask)
        Kd = K + torch.diag_embed(_regularization(delta, mask, data.n, data.p))
        lu, pivots = _lu_factor(Kd)
    return ActiveKKTFactor(lu=lu, pivots=pivots, mask=mask, delta=delta, K=K if keep_matrix else None)


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
    return _refined(data, fac, rhs, refine, want_residual=False)[0]


def solve_with_residual(
    data: QPData, fac: ActiveKKTFactor, rhs: torch.Tensor, refine: int = REFINEMENT_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``solve`` that also returns the residual ``rhs − K u`` (B, N) of the returned u."""
    return _refined(data, fac, rhs, refine, want_residual=True)


def _refined(data: QPData, fac: ActiveKKTFactor, rhs: torch.Tensor, refine: int, want_residual: bool):
    b = rhs.unsqueeze(-1)

    def residual(u: torch.Tensor) -> torch.Tensor:
        if fac.K is not None:
            return torch.baddbmm(b, fac.K, u, alpha=-1)
        return b - matvec(data, fac.mask, u.squeeze(-1)).unsqueeze(-1)

    u = torch.linalg.lu_solve(fac.lu, fac.pivots, b)
    r = residual(u) if refine or want_residual else None
    if refine:
        scale = fac.delta / tolerances_for(rhs.dtype).kkt_reg  # s = max |entry| of the data (≥ 1)
        stop = REFINE_STOP * rhs.shape[-1] ** 0.5 * torch.finfo(rhs.dtype).eps
        rhs_norm = rhs.abs().amax(-1)
        for k in range(refine):  # at least one step: the first solve carries the δ error
            u += torch.linalg.lu_solve(fac.lu, fac.pivots, r)
            last = k + 1 == refine
            if last and not want_residual:
                break
            r = residual(u)
            if not last:
                small = r.abs().amax((-2, -1)) <= stop * torch.addcmul(rhs_norm, scale, u.abs().amax((-2, -1)))
                if bool(small.all()):
                    break
    return u.squeeze(-1), (r.squeeze(-1) if want_residual else None)
