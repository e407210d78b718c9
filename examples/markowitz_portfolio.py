"""A learned Markowitz portfolio: features → expected returns → SOCP layer → weights, end to end.

Market (synthetic, seeded). Each period t has features z_t ∈ R^d; asset returns follow a factor
model whose *mean* depends on the features through an unknown nonlinear map,

    r_t = μ★(z_t) + F f_t + ε_t,    f_t ~ N(0, I_k),  ε_t ~ N(0, diag(d²)).

Decision. A mean–standard-deviation (Markowitz) portfolio with the factor-model risk, an SOCP:

    w(μ̂) = argmax_w  μ̂ᵀw − γ ‖(Fᵀw, d ∘ w)‖₂    s.t.  1ᵀw = 1,  w ≥ 0

solved by ``ol.CvxpyLayer`` (μ̂ batched over periods, F shared by the batch).

Two ways to learn μ̂ = g_θ(z) with the same small MLP:
- two-stage: fit g_θ to realized returns by least squares, then optimize (the usual pipeline);
- end to end: start from the two-stage model and keep training it on the realized utility
  r_tᵀw(g_θ(z_t)) − γ·risk(w) of the *decisions*, differentiating through the SOCP
  (decision-focused learning); the two-stage model gets the same number of extra MSE steps.

In this synthetic market the MLP can represent μ★ well, so the two end up close (decision-
focused learning pays off mostly for misspecified predictors); the point here is the mechanics:
a batch of SOCPs in the training loop, gradients through the solver to the network.

Both are evaluated out of sample against the equal-weight portfolio and the oracle that knows
μ★. Run ``python examples/markowitz_portfolio.py`` (``--quick``: a few seconds, for CI).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch

import optlayers as ol


def make_market(n: int, k: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    F = 0.03 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    dvol = 0.02 + 0.04 * torch.rand(n, generator=gen, dtype=torch.float64)
    W1 = torch.randn(d, 16, generator=gen, dtype=torch.float64) / d ** 0.5
    W2 = torch.randn(16, n, generator=gen, dtype=torch.float64) / 2

    def mu_star(z):  # nonlinear expected returns, a few percent
        return 0.02 + 0.05 * torch.tanh(torch.tanh(z @ W1) @ W2)

    def sample(T: int):
        z = torch.randn(T, d, generator=gen, dtype=torch.float64)
        f = torch.randn(T, k, generator=gen, dtype=torch.float64)
        eps = torch.randn(T, n, generator=gen, dtype=torch.float64) * dvol
        return z, mu_star(z) + f @ F.T + eps

    return F, dvol, mu_star, sample


def portfolio_layer(n: int, k: int, dvol: np.ndarray, gamma: float) -> ol.CvxpyLayer:
    import cvxpy as cp

    w = cp.Variable(n)
    mu, F = cp.Parameter(n), cp.Parameter((n, k))
    risk = cp.norm(cp.hstack([F.T @ w, cp.multiply(dvol, w)]), 2)
    prob = cp.Problem(cp.Maximize(mu @ w - gamma * risk), [cp.sum(w) == 1, w >= 0])
    return ol.CvxpyLayer(prob, parameters=[mu, F], variables=[w])


def risk_of(w, F, dvol):
    return torch.sqrt(((w @ F) ** 2).sum(-1) + ((w * dvol) ** 2).sum(-1))


def utility(w, r, F, dvol, gamma):
    """Realized utility per period: return − γ·(model) standard deviation of the portfolio."""
    return (w * r).sum(-1) - gamma * risk_of(w, F, dvol)


def mlp(d: int, n: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.Tanh(), torch.nn.Linear(32, n)).double()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small market, few steps (CI)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "markowitz_portfolio.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n, k, d = (12, 3, 5) if args.quick else (50, 10, 8)
    T_train, T_test, steps, batch = (128, 64, 8, 32) if args.quick else (1024, 512, 100, 64)
    gamma, lr = 1.0, 1e-2
    F, dvol, mu_star, sample = make_market(n, k, d, args.seed)
    z_tr, r_tr = sample(T_train)
    z_te, r_te = sample(T_test)
    layer = portfolio_layer(n, k, dvol.numpy(), gamma)

    def decide(mu_hat):
        (w,) = layer(mu_hat, F)
        return w

    gen = torch.Generator().manual_seed(args.seed + 1)
    evals = 2 if args.quick else 10

    def test_utility(net):
        with torch.no_grad():
            return float(utility(decide(net(z_te)), r_te, F, dvol, gamma).mean())

    def train(net, objective: str, steps: int, hist: list, offset: int, lr: float):
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for step in range(steps):
            idx = torch.randint(0, T_train, (batch,), generator=gen)
            mu_hat = net(z_tr[idx])
            if objective == "mse":
                loss = ((mu_hat - r_tr[idx]) ** 2).mean()
            else:
                loss = -utility(decide(mu_hat), r_tr[idx], F, dvol, gamma).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % max(1, steps // evals) == 0:
                hist.append((offset + step + 1, test_utility(net)))

    t0 = time.perf_counter()
    base = mlp(d, n, args.seed)
    hist0: list = [(0, test_utility(base))]
    train(base, "mse", steps, hist0, 0, lr)          # stage 1 (shared): least squares
    two_stage, end_to_end = copy.deepcopy(base), copy.deepcopy(base)
    curves = {"two-stage (MSE)": list(hist0), "end-to-end": list(hist0)}
    # Stage 2 at a smaller step: the realized-utility gradient is noisy (one period's returns),
    # and Adam's normalized steps would otherwise turn that noise into large parameter moves.
    train(two_stage, "mse", steps, curves["two-stage (MSE)"], steps, lr / 10)
    train(end_to_end, "utility", steps, curves["end-to-end"], steps, lr / 10)
    models = {"two-stage": two_stage, "end-to-end": end_to_end}
    train_s = time.perf_counter() - t0

    with torch.no_grad():
        results = {
            "equal weights": utility(torch.full((T_test, n), 1.0 / n, dtype=torch.float64), r_te, F, dvol, gamma),
            "two-stage (MSE)": utility(decide(models["two-stage"](z_te)), r_te, F, dvol, gamma),
            "end-to-end": utility(decide(models["end-to-end"](z_te)), r_te, F, dvol, gamma),
            "oracle μ★": utility(decide(mu_star(z_te)), r_te, F, dvol, gamma),
        }
    print(f"Markowitz SOCP layer: n={n} assets, k={k} factors, {T_train} train / {T_test} test periods, "
          f"{steps} MSE steps then {steps} more per method, batch {batch} ({train_s:.1f} s)")
    print(f"{'policy':18s} {'mean utility':>12s} {'± s.e.':>8s}")
    for name, u in results.items():
        print(f"{name:18s} {float(u.mean()):12.4f} {float(u.std() / len(u) ** 0.5):8.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for mode, hist in curves.items():
        s, u = zip(*hist)
        ax[0].plot(s, u, label=mode)
    ax[0].axhline(float(results["oracle μ★"].mean()), color="k", ls="--", lw=1, label="oracle μ★")
    ax[0].axhline(float(results["equal weights"].mean()), color="gray", ls=":", lw=1, label="equal weights")
    ax[0].axvline(steps, color="gray", lw=0.5)
    ax[0].set_xlabel("training step (stage 1: MSE for both)")
    ax[0].set_ylabel("test utility (return − γ·risk)")
    ax[0].legend()
    for name, u in results.items():
        ax[1].plot(torch.cumsum(u, 0).numpy(), label=name)
    ax[1].set_xlabel("test period")
    ax[1].set_ylabel("cumulative realized utility")
    ax[1].legend()
    fig.suptitle("Learned Markowitz portfolio through an SOCP layer (optlayers.CvxpyLayer)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
