"""Grasp model shared by ``grasp_synthesis.py``, ``grasp_dataset.py`` and ``benchmarks/grasp_qp.py``.

Objects are analytic superquadrics (no asset files)

    S = { p : Σ_i |p_i / a_i|^s = 1 },    s = 2: ellipsoid,  s = 8: a box with rounded edges,

and a grasp is K contact points on S. Contact k is parametrized by an unconstrained direction
z_k ∈ R³ (radial projection onto S: p = r(d) d with d = z/‖z‖ and r(d) = (Σ|d_i/a_i|^s)^(−1/s)),
which has no pole singularities. The inward unit normal is n = −∇F/‖∇F‖ with F(p) = Σ|p_i/a_i|^s,
and the tangents (t₁, t₂) complete a right-handed frame (n, t₁, t₂) (t₁ ∝ n × r for a fixed
reference direction r, so the frame is smooth except where n ∥ ±r).

Contact force f_k = (f_n, f_t1, f_t2) in the contact frame (3 numbers per contact, n = 3K). The
grasp map W ∈ R^{6 × 3K} sends forces to the object wrench (force; torque about the object
centre divided by the characteristic length L, so that forces and torques are commensurate):

    W_k = [ R_k ; [p_k / L]_× R_k ],      R_k = [n_k  t₁_k  t₂_k].

Lower level, per grasp and per target wrench w_j (unit forces ±e_i, optionally unit torques):

    E_j = min_f  ½‖W f − w_j‖² + (ε/2)‖f‖²
          s.t.   t₁-t₂ friction pyramid with F facets:  cos θ_l f_t1 + sin θ_l f_t2 ≤ μ cos(π/F) f_n
                 (inscribed in the Coulomb cone, θ_l = 2πl/F),
                 0 ≤ f_n ≤ f_max per contact,  Σ_k f_n,k ≥ f_min  (the grasp must squeeze).

As a QP in f: Q = WᵀW + εI (per grasp), q = −Wᵀw_j (per grasp and wrench), and G, h (the
constraints above, m = K·F + 2K + 1 rows) are **the same for every grasp** because they act in
the contact frames: they are passed once, without a batch dimension. E_j = V_j + ½‖w_j‖² with
V_j the QP's optimal value ½fᵀQf + qᵀf.

Force closure (the statistic reported): a grasp "resists" w_j when the optimal residual
‖W f* − w_j‖ ≤ τ. Resisting all 12 wrenches ±e_i (forces and torques) within the force bounds
means the grasp's bounded wrench set contains a neighbourhood of the origin up to τ — the
force-closure test used by BODex/DexGraspNet-style pipelines; with only the 6 force wrenches it
is the weaker "resists forces in all directions" test.
"""

from __future__ import annotations

import dataclasses
import math

import torch

import optlayers as ol

DTYPE = torch.float64
# Reference direction of the tangent frames (t₁ ∝ n × REF); any fixed direction works, this one
# is far from the symmetry axes so the two frame singularities (n = ±REF) avoid the faces.
_REF = (0.267, 0.534, 0.802)


@dataclasses.dataclass(frozen=True)
class Superquadric:
    """``Σ_i |p_i / a_i|^power = 1``: ``power = 2`` is an ellipsoid, large powers approach a box.

    ``power`` must be a power of two (2, 4, 8, 16, 32): the surface map then needs only
    products, quotients and square roots (|x|^8 = ((x²)²)², t^(−1/8) = 1/√√√t), which are
    correctly rounded in every code path. ``torch.pow`` with a fractional exponent rounds the
    last bit differently in its vectorized and scalar (tail) loops, so a grasp's contacts would
    depend on its position in the batch; with this restriction a grasp's whole optimization is
    bitwise independent of the batch it is in (``grasp_dataset.py``'s sharding relies on it).
    """

    name: str
    semi_axes: tuple[float, float, float]
    power: int = 2

    def __post_init__(self) -> None:
        if self.power < 2 or self.power & (self.power - 1) or self.power > 32:
            raise ValueError(f"power must be one of 2, 4, 8, 16, 32; got {self.power}")

    @property
    def length(self) -> float:
        """Characteristic length L (mean semi-axis): torques are divided by it."""
        return sum(self.semi_axes) / 3.0

    def _halvings(self) -> int:
        return self.power.bit_length() - 1  # log2(power)

    def surface(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points and inward unit normals for directions ``z`` (..., 3) → (p, n), both (..., 3)."""
        a = z.new_tensor(self.semi_axes)
        d = z / z.norm(dim=-1, keepdim=True)
        t = d / a
        for _ in range(self._halvings()):
            t = t * t                                  # (d_i / a_i)^power
        root = t.sum(-1, keepdim=True)
        for _ in range(self._halvings()):
            root = root.sqrt()                         # (Σ ...)^(1/power)
        p = d / root                                   # r(d) d
        u = p / a
        u2 = u * u
        grad = u / a                                   # ∇F / power = u^(power − 1) / a
        for _ in range(self.power // 2 - 1):
            grad = grad * u2
        n = -grad / grad.norm(dim=-1, keepdim=True)
        return p, n

    def implicit(self, p: torch.Tensor) -> torch.Tensor:
        """F(p) − 1 (zero on the surface), for tests and plots."""
        a = p.new_tensor(self.semi_axes)
        return ((p / a).abs() ** self.power).sum(-1) - 1.0


OBJECTS = {
    "ellipsoid": Superquadric("ellipsoid", (1.0, 0.7, 0.5), 2),
    "box": Superquadric("box", (0.9, 0.6, 0.45), 8),
}


@dataclasses.dataclass(frozen=True)
class GraspConfig:
    """Grasp and lower-level parameters (forces in units of the target wrench magnitude)."""

    contacts: int = 4        # K
    facets: int = 8          # F, facets of the friction pyramid
    mu: float = 0.5          # Coulomb friction coefficient
    f_max: float = 1.0       # upper bound of each normal force
    f_min: float = 0.5       # minimum total normal force
    eps: float = 1e-3        # force regularization ε
    wrenches: int = 6        # 6: ±unit forces; 12: also ±unit torques
    tau: float = 0.05        # residual threshold of the "resists w_j" test
    d_min: float = 0.5       # contacts closer than d_min·L are pushed apart
    sep_weight: float = 1.0  # weight of the separation term in the upper objective
    tol: float | None = None  # QP tolerance (None: the library default, 1e-9 in float64)

    @property
    def n(self) -> int:
        return 3 * self.contacts

    @property
    def m(self) -> int:
        return self.contacts * self.facets + 2 * self.contacts + 1


def contact_frames(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit tangents (t₁, t₂) with (n, t₁, t₂) right-handed orthonormal; n: (..., 3)."""
    ref = n.new_tensor(_REF).expand_as(n)
    t1 = torch.linalg.cross(n, ref, dim=-1)
    t1 = t1 / t1.norm(dim=-1, keepdim=True)
    t2 = torch.linalg.cross(n, t1, dim=-1)
    return t1, t2


def grasp_map(p: torch.Tensor, n: torch.Tensor, length: float) -> torch.Tensor:
    """W (..., 6, 3K) from contact points and inward normals (..., K, 3)."""
    t1, t2 = contact_frames(n)
    R = torch.stack([n, t1, t2], dim=-1)                       # (..., K, 3, 3): columns n, t1, t2
    arm = (p / length).unsqueeze(-1).expand_as(R)
    torque = torch.linalg.cross(arm, R, dim=-2)                # (p/L) × each column
    Wk = torch.cat([R, torque], dim=-2)                        # (..., K, 6, 3)
    return Wk.movedim(-3, -2).reshape(*p.shape[:-2], 6, 3 * p.shape[-2])


def friction_constraints(cfg: GraspConfig, mu: torch.Tensor | float | None = None, *, dtype=DTYPE, device="cpu"):
    """Shared ``G`` (m, 3K) and ``h`` (m,) of the lower level (see the module docstring).

    ``mu`` may be a tensor (e.g. requiring grad: ∂/∂μ flows through G, summed over the batch).
    Row order: K·F pyramid facets, K rows −f_n ≤ 0, K rows f_n ≤ f_max, one row −Σf_n ≤ −f_min.
    """
    K, F = cfg.contacts, cfg.facets
    mu = torch.as_tensor(cfg.mu if mu is None else mu, dtype=dtype, device=device)
    theta = 2 * math.pi * torch.arange(F, dtype=dtype, device=device) / F
    facet = torch.stack([-mu * math.cos(math.pi / F) * torch.ones_like(theta), torch.cos(theta), torch.sin(theta)], -1)
    eye = torch.eye(K, dtype=dtype, device=device)
    pyramid = torch.kron(eye, facet)                           # (K·F, 3K)
    normal = torch.kron(eye, torch.tensor([[1.0, 0.0, 0.0]], dtype=dtype, device=device))  # (K, 3K): f_n
    G = torch.cat([pyramid, -normal, normal, -normal.sum(0, keepdim=True)], 0)
    h = torch.cat([
        torch.zeros(K * F, dtype=dtype, device=device),
        torch.zeros(K, dtype=dtype, device=device),
        torch.full((K,), cfg.f_max, dtype=dtype, device=device),
        torch.tensor([-cfg.f_min], dtype=dtype, device=device),
    ])
    return G, h


def target_wrenches(count: int, *, dtype=DTYPE, device="cpu") -> torch.Tensor:
    """(count, 6): ±unit forces (count = 6), plus ±unit torques (count = 12)."""
    if count not in (6, 12):
        raise ValueError(f"the number of target wrenches must be 6 or 12; got {count}")
    eye = torch.eye(6, dtype=dtype, device=device)[: count // 2]
    return torch.cat([eye, -eye], 0)


def qp_data(W: torch.Tensor, wrenches: torch.Tensor, eps: float):
    """Q (N, 1, n, n) per grasp and q (N, J, n) per grasp and wrench, for W (N, 6, n)."""
    n = W.shape[-1]
    Q = W.mT @ W + eps * torch.eye(n, dtype=W.dtype, device=W.device)
    q = -(wrenches @ W)                                        # (N, J, n) = −Wᵀ w_j
    return Q.unsqueeze(-3), q


@dataclasses.dataclass
class LowerLevel:
    """Per grasp and wrench (N, J): energy E (differentiable; 0 where the QP failed), forces f
    (N, J, n) (detached; NaN where failed), residual ‖Wf − w‖ (inf where failed), solved mask."""

    energy: torch.Tensor
    forces: torch.Tensor
    residual: torch.Tensor
    solved: torch.Tensor
    active: torch.Tensor  # (N, J, m) bool: rows with λ > 0 (the next step's warm start)
    warm: int             # QPs finished by the warm start (0 iterations)


def lower_level(W, wrenches, G, h, cfg: GraspConfig, *, method: str = "envelope", backend: str = "auto",
                warm_start: torch.Tensor | None = None) -> LowerLevel:
    """Solve the N×J contact-force QPs; ``energy`` is differentiable by ``method``:

    ``"envelope"``: ``ol.qp_value`` (optimal-value gradient, no linear solve);
    ``"implicit"``: x = ``ol.solve_qp`` (implicit KKT derivative), then E = ½xᵀQx + qᵀx + ½‖w‖².

    A QP the solver reports as failed (``ol.Status`` ≠ SOLVED) is not silently used: its
    energy is 0 with zero gradient, ``solved`` is False there and callers exclude it.
    ``warm_start``: (N, J, m) active-set guesses (e.g. the previous step's ``active``).
    """
    Q, q = qp_data(W, wrenches, cfg.eps)
    kw = dict(backend=backend, return_solution=True, on_failure="nan", tol=cfg.tol, warm_start=warm_start)
    if method == "envelope":
        value, sol = ol.qp_value(Q, q, G, h, **kw)
    elif method == "implicit":
        sol = ol.solve_qp(Q, q, G, h, **kw)
        f = torch.where(sol.ok.unsqueeze(-1), sol.x, torch.zeros_like(sol.x))  # no NaN in the graph
        value = 0.5 * (f * (Q @ f.unsqueeze(-1)).squeeze(-1)).sum(-1) + (q * f).sum(-1)
    else:
        raise ValueError(f"method must be 'envelope' or 'implicit'; got {method!r}")
    ok = sol.ok
    energy = torch.where(ok, value + 0.5 * (wrenches * wrenches).sum(-1), torch.zeros_like(value))
    with torch.no_grad():
        residual = ((sol.x.detach() @ W.detach().mT) - wrenches).norm(dim=-1)
        residual = torch.where(ok, residual, torch.full_like(residual, float("inf")))
    warm = int(((sol.iterations == 0) & ok).sum()) if warm_start is not None else 0
    return LowerLevel(energy=energy, forces=sol.x.detach(), residual=residual, solved=ok,
                      active=sol.lam.detach() > 0, warm=warm)


def separation(p: torch.Tensor, cfg: GraspConfig, length: float) -> torch.Tensor:
    """Σ_{k<l} relu(d_min·L − ‖p_k − p_l‖)² per grasp: keeps contacts apart; p (N, K, 3) → (N,)."""
    diff = p.unsqueeze(-2) - p.unsqueeze(-3)
    K = p.shape[-2]
    iu = torch.triu_indices(K, K, offset=1, device=p.device)
    d = diff[..., iu[0], iu[1], :].norm(dim=-1)
    return ((cfg.d_min * length - d).clamp_min(0.0) ** 2).sum(-1)


@dataclasses.dataclass
class Evaluation:
    objective: torch.Tensor   # (N,) upper-level objective per grasp (differentiable)
    energy: torch.Tensor      # (N,) mean over wrenches of E_j (detached)
    closure: torch.Tensor     # (N,) bool: resists every target wrench (residual ≤ τ)
    max_residual: torch.Tensor  # (N,) (inf when a QP of the grasp failed)
    qps: int                  # QPs solved (attempted) this evaluation
    failed: int               # QPs the solver reported as not solved (excluded from the energy)
    active: torch.Tensor      # (N, J, m) bool active sets (λ > 0): the next step's warm start
    warm: int                 # QPs finished by the warm start


def upper_objective(z, obj: Superquadric, cfg: GraspConfig, G, h, wrenches, *, method="envelope", backend="auto",
                    warm_start: torch.Tensor | None = None) -> Evaluation:
    """Per-grasp upper objective  mean_j E_j + sep_weight · separation  for contacts z (N, K, 3)."""
    p, n = obj.surface(z)
    W = grasp_map(p, n, obj.length)
    low = lower_level(W, wrenches, G, h, cfg, method=method, backend=backend, warm_start=warm_start)
    # Mean over the wrenches whose QP solved (a failed QP is excluded, and counted).
    count = low.solved.sum(-1).clamp_min(1)
    energy = low.energy.sum(-1) / count
    objective = energy + cfg.sep_weight * separation(p, cfg, obj.length)
    max_res = low.residual.amax(-1)
    return Evaluation(
        objective=objective,
        energy=energy.detach(),
        closure=max_res <= cfg.tau,
        max_residual=max_res,
        qps=low.energy.numel(),
        failed=int((~low.solved).sum()),
        active=low.active,
        warm=low.warm,
    )


def initial_contacts(num_grasps: int, cfg: GraspConfig, seed: int, *, dtype=DTYPE) -> torch.Tensor:
    """Seeded random contact directions (num_grasps, K, 3) (uniform on the sphere)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_grasps, cfg.contacts, 3, generator=gen, dtype=dtype)
    return z / z.norm(dim=-1, keepdim=True)


def qp_batch(obj: Superquadric, cfg: GraspConfig, num_grasps: int, seed: int):
    """The lower-level QPs of ``initial_contacts(num_grasps, cfg, seed)`` on ``obj``, flattened for
    ``ol.solve_qp`` (the benchmarks' and tests' grasp batches): Q (B, n, n), q (B, n) with
    B = num_grasps · cfg.wrenches (grasp-major), and the shared G (m, n), h (m); float64."""
    p, nrm = obj.surface(initial_contacts(num_grasps, cfg, seed))
    Q, q = qp_data(grasp_map(p, nrm, obj.length), target_wrenches(cfg.wrenches), cfg.eps)
    B = num_grasps * cfg.wrenches
    G, h = friction_constraints(cfg)
    Q = Q.expand(-1, cfg.wrenches, -1, -1).reshape(B, cfg.n, cfg.n).contiguous()
    return Q, q.reshape(B, cfg.n).contiguous(), G, h


def force_closure(z, obj: Superquadric, cfg: GraspConfig, *, backend="auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The 12-wrench force-closure test (forward only): (closed (N,) bool, max residual (N,))."""
    with torch.no_grad():
        p, n = obj.surface(z)
        W = grasp_map(p, n, obj.length)
        G, h = friction_constraints(cfg, dtype=z.dtype, device=z.device)
        w12 = target_wrenches(12, dtype=z.dtype, device=z.device)
        low = lower_level(W, w12, G, h, cfg, backend=backend)
        res = low.residual.amax(-1)
    return res <= cfg.tau, res


def optimize(z0, obj: Superquadric, cfg: GraspConfig, *, steps: int, lr: float = 0.05, method="envelope",
             backend="auto", callback=None, warm_start: bool = False) -> torch.Tensor:
    """Adam on the contact directions of a batch of grasps; returns the optimized z (N, K, 3).

    The loss is the **sum** of the per-grasp objectives, so each grasp's trajectory is
    independent of the others in the batch (Adam is elementwise): sharding the batch over
    processes gives the same grasps. ``callback(step, evaluation, seconds)`` sees every step.
    ``warm_start``: each step's QPs start from the previous step's active sets (``ol.solve_qp``'s
    ``warm_start``; same solutions to rounding, fewer interior-point solves).
    """
    import time

    G, h = friction_constraints(cfg, dtype=z0.dtype, device=z0.device)
    wrenches = target_wrenches(cfg.wrenches, dtype=z0.dtype, device=z0.device)
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    guess = None
    for step in range(steps + 1):
        t0 = time.perf_counter()
        ev = upper_objective(z, obj, cfg, G, h, wrenches, method=method, backend=backend, warm_start=guess)
        guess = ev.active if warm_start else None
        if step < steps:
            opt.zero_grad(set_to_none=True)
            ev.objective.sum().backward()
            opt.step()
            with torch.no_grad():  # stay on the unit sphere of directions (scale is irrelevant)
                z /= z.norm(dim=-1, keepdim=True)
        if callback is not None:
            callback(step, ev, time.perf_counter() - t0)
    return z.detach()


def gradient_agreement(z, obj: Superquadric, cfg: GraspConfig, *, backend="auto", fd_step: float = 1e-6) -> dict[str, float]:
    """Gradient of the summed upper objective w.r.t. the contacts z, three ways.

    Returns relative errors ‖a − b‖_∞ / ‖b‖_∞ between the implicit-KKT gradient (through
    ``solve_qp``), the envelope gradient (through ``qp_value``) and central finite differences
    of the objective (float64; every QP must solve).
    """
    G, h = friction_constraints(cfg, dtype=z.dtype, device=z.device)
    wrenches = target_wrenches(cfg.wrenches, dtype=z.dtype, device=z.device)

    def total(zz, method):
        ev = upper_objective(zz, obj, cfg, G, h, wrenches, method=method, backend=backend)
        if ev.failed:
            raise RuntimeError(f"{ev.failed} lower-level QP(s) failed; pick another configuration")
        return ev.objective.sum()

    grads = {}
    for method in ("implicit", "envelope"):
        zz = z.detach().clone().requires_grad_(True)
        (grads[method],) = torch.autograd.grad(total(zz, method), [zz])
    fd = torch.zeros_like(z)
    flat = fd.view(-1)
    base = z.detach().clone()
    with torch.no_grad():
        for k in range(base.numel()):
            e = torch.zeros_like(base).view(-1)
            e[k] = fd_step
            e = e.view(base.shape)
            flat[k] = (total(base + e, "envelope") - total(base - e, "envelope")) / (2 * fd_step)

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))

    return {
        "implicit_vs_envelope": rel(grads["implicit"], grads["envelope"]),
        "envelope_vs_fd": rel(grads["envelope"], fd),
        "implicit_vs_fd": rel(grads["implicit"], fd),
    }


__all__ = [
    "DTYPE", "OBJECTS", "Evaluation", "GraspConfig", "LowerLevel", "Superquadric", "contact_frames",
    "force_closure", "friction_constraints", "gradient_agreement", "grasp_map", "initial_contacts", "lower_level", "optimize",
    "qp_data", "separation", "target_wrenches", "upper_objective",
]
