"""A learned total-variation denoiser: the regularization weight adapts to each signal's noise.

Data (synthetic, seeded): piecewise-constant signals x ∈ R^L observed as y = x + σ ε, with a
noise level σ that differs from signal to signal (0.05 … 0.6).

Denoiser: a conic layer (``ol.CvxpyLayer``) solving, per signal,

    x̂(y, λ) = argmin_x  ½‖x − y‖² + λ ‖D x‖₁          (D: first differences)

with the weight λ = exp(a + b·log σ̂(y)) predicted from a robust noise estimate
σ̂(y) = 1.4826·median|Δy|/√2. The two numbers (a, b) are learned by gradient descent on the
reconstruction error ½‖x̂ − x‖² over training signals, differentiating through the solution of
the optimization problem (a bilevel problem solved by implicit differentiation).

Baseline: the best *fixed* λ, found by grid search on the same training signals. Test errors of
both are printed and a figure is saved. ``--quick`` runs in a few seconds (CI).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import optlayers as ol


def make_signals(num: int, L: int, gen: torch.Generator):
    x = torch.zeros(num, L, dtype=torch.float64)
    for i in range(num):
        jumps = torch.sort(torch.randperm(L - 2, generator=gen)[:4] + 1).values.tolist()
        level = 0.0
        start = 0
        for j in jumps + [L]:
            x[i, start:j] = level
            level = float(torch.randn(1, generator=gen, dtype=torch.float64))
            start = j
    sigma = 0.05 + 0.55 * torch.rand(num, 1, generator=gen, dtype=torch.float64)
    y = x + sigma * torch.randn(num, L, generator=gen, dtype=torch.float64)
    return x, y, sigma.squeeze(1)


def noise_estimate(y: torch.Tensor) -> torch.Tensor:
    """Robust σ estimate from first differences (median absolute deviation)."""
    return 1.4826 * (y[:, 1:] - y[:, :-1]).abs().median(dim=1).values / 2 ** 0.5


def tv_layer(L: int) -> ol.CvxpyLayer:
    import cvxpy as cp

    x = cp.Variable(L)
    y = cp.Parameter(L)
    lam = cp.Parameter(nonneg=True)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - y) + lam * cp.norm1(cp.diff(x))))
    return ol.CvxpyLayer(prob, parameters=[y, lam], variables=[x])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short signals, few steps (CI)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "tv_denoiser.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    L, n_train, n_test, steps, grid = (24, 32, 32, 8, 5) if args.quick else (64, 256, 256, 60, 12)
    gen = torch.Generator().manual_seed(args.seed)
    x_tr, y_tr, s_tr = make_signals(n_train, L, gen)
    x_te, y_te, s_te = make_signals(n_test, L, gen)
    layer = tv_layer(L)

    def denoise(y, lam):
        (xh,) = layer(y, lam)
        return xh

    def mse(xh, x):
        return float(((xh - x) ** 2).mean())

    t0 = time.perf_counter()
    # Baseline: best fixed λ on the training signals (grid search).
    lams = torch.logspace(-2.5, 0.5, grid, dtype=torch.float64)
    with torch.no_grad():
        grid_err = [mse(denoise(y_tr, lam), x_tr) for lam in lams]
    best_fixed = float(lams[int(np.argmin(grid_err))])

    # Learned λ(σ̂) = exp(a + b log σ̂): gradient descent through the conic layer.
    ab = torch.tensor([np.log(best_fixed), 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([ab], lr=0.15)
    log_s_tr = torch.log(noise_estimate(y_tr))
    hist = []
    for step in range(steps):
        lam = torch.exp(ab[0] + ab[1] * log_s_tr)               # (n_train,): one λ per signal
        loss = 0.5 * ((denoise(y_tr, lam) - x_tr) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(2 * float(loss.detach()))
    train_s = time.perf_counter() - t0

    with torch.no_grad():
        log_s_te = torch.log(noise_estimate(y_te))
        xh_fixed = denoise(y_te, torch.tensor(best_fixed, dtype=torch.float64))
        xh_learn = denoise(y_te, torch.exp(ab[0] + ab[1] * log_s_te))
    a, b = (float(v) for v in ab.detach())
    print(f"TV denoiser layer: {n_train} train / {n_test} test signals of length {L} ({train_s:.1f} s)")
    print(f"learned λ(σ̂) = exp({a:.2f} + {b:.2f}·log σ̂)   (best fixed λ on train: {best_fixed:.3f})")
    print(f"{'test MSE':24s}")
    print(f"{'noisy input':24s} {mse(y_te, x_te):.5f}")
    print(f"{'best fixed λ':24s} {mse(xh_fixed, x_te):.5f}")
    print(f"{'learned λ(σ̂)':24s} {mse(xh_learn, x_te):.5f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    i = int(torch.argmax(s_te))
    ax[0].plot(x_te[i], "k", lw=2, label="clean")
    ax[0].plot(y_te[i], ".", color="gray", label=f"noisy (σ={float(s_te[i]):.2f})")
    ax[0].plot(xh_fixed[i], label="fixed λ")
    ax[0].plot(xh_learn[i], label="learned λ(σ̂)")
    ax[0].legend(fontsize=8)
    ax[0].set_title("a noisy test signal")
    ax[1].semilogx(lams.numpy(), grid_err, "o-", label="fixed λ (train MSE)")
    ax[1].axvline(best_fixed, color="gray", ls=":")
    ax[1].set_xlabel("λ")
    ax[1].set_ylabel("train MSE")
    ax[1].set_title("grid search vs learned λ(σ̂)")
    sig = torch.linspace(0.03, 0.7, 50, dtype=torch.float64)
    ax2 = ax[1].twinx()
    ax2.plot(torch.exp(ab.detach()[0] + ab.detach()[1] * torch.log(sig)).numpy(), sig.numpy(), "r", lw=1)
    ax2.set_ylabel("σ̂  (red: learned λ(σ̂))", color="r")
    ax[2].plot(hist)
    ax[2].set_xlabel("step")
    ax[2].set_ylabel("train MSE")
    ax[2].set_title("learning (a, b) through the layer")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
