"""Sensitivity analysis of molecular dynamics: d(equilibrium positions)/d(particle diameter).

System (after the JAX-MD / JAXopt example). N soft disks in a periodic 2-D box, bidisperse
(half have diameter σ, half 1.4σ, to avoid crystallization), interacting by the harmonic
soft-sphere potential (Durian 1995; O'Hern et al. 2003)

    E(x, σ) = Σ_{i<j} (ε/2) (1 − r_ij/σ_ij)²   for r_ij < σ_ij,  σ_ij = (σ_i + σ_j)/2,

with minimum-image distances r_ij. Packing fraction ~0.9: a jammed, mechanically stable packing.
The energy minimum x*(σ) (found by damped Newton on detached data; any minimizer, e.g. FIRE,
would do) satisfies F(x, σ) = ∇_x E(x, σ) = 0, so ``ol.custom_root`` gives the
*forward-mode* derivative dx*/dσ (one JVP: one CG solve with Hessian-vector products).

The Hessian has two zero modes (rigid translations in the periodic box) and more if some disks
are rattlers. The right-hand side −∂F/∂σ sums to zero over particles (forces are pairwise
antisymmetric), so it lies in the range of the Hessian, and CG started at zero converges to the
minimum-norm solution: the derivative with zero centre-of-mass motion. Finite differences
(re-minimize at σ ± h starting from x*; force-based minimization conserves the centre of mass)
give the same quantity, which is the check.

Run ``python examples/md_sensitivity.py`` (``--quick`` for a short CI run); the plot goes to
``--out`` (default ``examples/out/md_sensitivity.png``).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time

import torch

import optlayers as ol

D = torch.float64
EPS = 1.0  # interaction energy scale
PHI = 0.90  # packing fraction
GRAD_TOL = 1e-12  # energy minimization: stop when max |∇E| < GRAD_TOL
FD_STEP = 1e-6  # finite-difference step on σ (relative)
MU_MIN = 1e-14  # smallest Levenberg–Marquardt damping (then: Newton)


def energy(x, sigma, L, species):
    """Total soft-sphere energy; x: (N, 2) positions (unwrapped), sigma: () base diameter."""
    diam = sigma * torch.where(species, 1.4, 1.0).to(D)  # (N,)
    dr = x[:, None, :] - x[None, :, :]
    dr = dr - L * torch.round(dr / L)  # minimum image (round is piecewise constant)
    n = x.shape[0]
    iu = torch.triu_indices(n, n, 1)
    r = torch.sqrt((dr[iu[0], iu[1]] ** 2).sum(-1))
    sij = 0.5 * (diam[iu[0]] + diam[iu[1]])
    overlap = torch.relu(1.0 - r / sij)
    return 0.5 * EPS * (overlap**2).sum()


optimality_fun = ol.optimality.gradient_optimality(lambda x, p: energy(x, *p))


def hessian(x, sigma, L, species):
    """Analytic Hessian of E (used by the minimizer only; implicit differentiation uses autodiff).

    For a contact with V(r) = (ε/2)(1 − r/s)²: V' = −(ε/s)(1 − r/s), V'' = ε/s², and the 2×2
    block K = V'' nnᵀ + (V'/r)(I − nnᵀ), n = r_ij/r; H_ij = −K_ij (i ≠ j), H_ii = Σ_j K_ij.
    """
    n = x.shape[0]
    diam = sigma * torch.where(species, 1.4, 1.0).to(D)
    dr = x[:, None, :] - x[None, :, :]
    dr = dr - L * torch.round(dr / L)
    r = torch.sqrt((dr**2).sum(-1)) + torch.eye(n, dtype=D)  # avoid 0/0 on the diagonal
    sij = 0.5 * (diam[:, None] + diam[None, :])
    contact = (r < sij) & ~torch.eye(n, dtype=torch.bool)
    v1 = torch.where(contact, -(EPS / sij) * (1 - r / sij), torch.zeros_like(r))
    v2 = torch.where(contact, EPS / sij**2, torch.zeros_like(r))
    nn = dr[..., :, None] * dr[..., None, :] / (r**2)[..., None, None]
    eye2 = torch.eye(2, dtype=D)
    K = v2[..., None, None] * nn + (v1 / r)[..., None, None] * (eye2 - nn)  # (n, n, 2, 2)
    H = -K
    H[torch.arange(n), torch.arange(n)] = K.sum(1)
    return H.permute(0, 2, 1, 3).reshape(2 * n, 2 * n)


def minimize(x, sigma, L, species, max_iter=500):
    """Energy minimization by damped Newton (Levenberg–Marquardt on the exact Hessian).

    Step ``(H + μI)⁻¹ ∇E`` accepted when the energy does not increase (μ shrinks), rejected
    otherwise (μ grows): robust from a random overlapping start, quadratic at the end (μ → 0;
    the translation zero modes are harmless because ∇E has no component along them). Works on
    detached data; returns positions with max|∇E| < GRAD_TOL.
    """
    n = x.numel()
    grad = lambda z: torch.func.grad(energy)(z, sigma, L, species)  # noqa: E731
    eye = torch.eye(n, dtype=D)
    mu = 1.0
    e = float(energy(x, sigma, L, species))
    for _ in range(max_iter):
        g = grad(x)
        if float(g.abs().max()) < GRAD_TOL:
            break
        H = hessian(x, sigma, L, species)
        while True:
            x_new = x - torch.linalg.solve(H + mu * eye, g.reshape(n)).reshape(x.shape)
            e_new = float(energy(x_new, sigma, L, species))
            if e_new <= e + 1e-13 * abs(e) or mu > 1e12:
                x, e, mu = x_new, e_new, max(mu / 4, MU_MIN)
                break
            mu *= 4
    return x


@ol.custom_root(optimality_fun, solve=functools.partial(ol.linear_solve.cg, tol=1e-10))
def equilibrium(init, params):
    sigma, L, species = params
    return minimize(init, sigma, L, species)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (CI)")
    ap.add_argument("--n", type=int, default=None, help="number of particles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "md_sensitivity.png"))
    args = ap.parse_args(argv)
    n = args.n or (24 if args.quick else 64)
    gen = torch.Generator().manual_seed(args.seed)
    species = torch.arange(n) % 2 == 1
    sigma = torch.tensor(1.0, dtype=D)
    area = float((math.pi / 4) * (torch.where(species, 1.4, 1.0).to(D) ** 2).sum())
    L = math.sqrt(area / PHI)
    x0 = torch.rand(n, 2, generator=gen, dtype=D) * L
    t0 = time.perf_counter()
    params = (sigma, L, species)
    x_star = equilibrium(x0, params)
    e_star = float(energy(x_star, sigma, L, species))
    res = float(optimality_fun(x_star, params).abs().max())

    # Forward mode: dx*/dσ as one JVP through the implicit derivative.
    _, dx_impl = torch.func.jvp(lambda s: equilibrium(x_star, (s, L, species)), (sigma,), (torch.ones((), dtype=D),))
    t_impl = time.perf_counter() - t0

    # Reverse mode agrees on a random direction: <u, dx/dσ> = d<u, x*>/dσ.
    u = torch.randn(n, 2, generator=gen, dtype=D)
    u = u - u.mean(0)  # zero-mean, orthogonal to the translation null space
    s_req = sigma.clone().requires_grad_()
    (g_rev,) = torch.autograd.grad((equilibrium(x_star, (s_req, L, species)) * u).sum(), s_req)
    rev_err = abs(float(g_rev) - float((dx_impl * u).sum())) / max(abs(float(g_rev)), 1e-30)

    # Central finite differences, re-minimizing from x* at σ ± h.
    h = FD_STEP * float(sigma)
    x_plus = minimize(x_star.clone(), sigma + h, L, species)
    x_minus = minimize(x_star.clone(), sigma - h, L, species)
    dx_fd = (x_plus - x_minus) / (2 * h)
    rel_err = float((dx_impl - dx_fd).norm() / dx_fd.norm())
    elapsed = time.perf_counter() - t0
    print(f"{n} bidisperse soft disks, box {L:.3f}, packing fraction {PHI}: E* = {e_star:.4e}, max|∇E| = {res:.1e}")
    print(f"dx*/dσ by implicit differentiation (forward mode, {t_impl:.2f}s incl. minimization): ||dx/dσ|| = {float(dx_impl.norm()):.4f}")
    print(f"  vs. central finite differences (h={h:.0e}): relative error {rel_err:.2e}")
    print(f"  reverse mode <u, dx/dσ>: relative difference to forward mode {rev_err:.2e}   ({elapsed:.1f}s total)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    ax = axes[0]
    xw = torch.remainder(x_star, L)
    diam = torch.where(species, 1.4, 1.0).to(D) * sigma
    for i in range(n):
        for ox in (-L, 0, L):
            for oy in (-L, 0, L):
                c = plt.Circle((float(xw[i, 0]) + ox, float(xw[i, 1]) + oy), float(diam[i]) / 2,
                               fc="C1" if species[i] else "C0", ec="k", alpha=0.5)
                ax.add_patch(c)
    ax.quiver(xw[:, 0], xw[:, 1], dx_impl[:, 0], dx_impl[:, 1], angles="xy", scale_units="xy", scale=2, width=0.004)
    ax.set(xlim=(0, L), ylim=(0, L), aspect="equal", title="equilibrium packing and dx*/dσ (arrows)")
    ax = axes[1]
    ax.plot(dx_fd.flatten(), dx_impl.flatten(), "o", ms=4)
    lim = float(dx_fd.abs().max()) * 1.1
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    ax.set(xlabel="finite differences", ylabel="implicit differentiation", title=f"dx*/dσ, relative error {rel_err:.1e}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"saved {args.out}")
    if not rel_err < 1e-4:
        raise SystemExit(f"implicit derivative disagrees with finite differences (relative error {rel_err:.2e})")


if __name__ == "__main__":
    main()
