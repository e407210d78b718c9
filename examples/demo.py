"""Main demo: a network with a QP layer inside learns sparse allocations.

Task. Each sample has features z ∈ R^d; its target is a *sparse* allocation on the simplex,

    y(z) = argmin_{x ≥ 0, 1ᵀx = 1}  ½‖x − W★ z‖²         (a Euclidean projection: many exact zeros)

for an unknown W★. Two models are trained on the same data with the same budget:

- ``qp``:      an MLP predicts scores s(z); a QP layer returns argmin_{x ≥ 0, 1ᵀx = 1} ½‖x‖² − s(z)ᵀx,
               i.e. the projection of s(z) onto the simplex. Gradients flow through the QP's KKT
               conditions (optlayers' implicit backward).
- ``softmax``: the same MLP followed by softmax (dense, never exactly sparse).

The QP layer shares one G (= −I), h, A (= 1ᵀ), b and Q (= I) across the whole batch: only the
scores are per sample. Run ``python examples/demo.py`` (``--quick`` for a short CI run).
"""

from __future__ import annotations

import argparse
import time

import torch

import optlayers as ol

ZERO = 1e-9  # entries below this count as zero (the QP solution is exact to ~1e-15)

def make_data(num: int, d: int, n: int, gen: torch.Generator, W: torch.Tensor):
    z = torch.randn(num, d, generator=gen, dtype=torch.float64)
    y = ol.solve_qp(I_n(n), -(z @ W.T), *simplex(n))
    return z, y


def I_n(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


def simplex(n: int):
    """(G, h, A, b) of {x ≥ 0, 1ᵀx = 1}, shared by every problem of a batch."""
    G = -torch.eye(n, dtype=torch.float64)
    h = torch.zeros(n, dtype=torch.float64)
    A = torch.ones(1, n, dtype=torch.float64)
    b = torch.ones(1, dtype=torch.float64)
    return G, h, A, b


class QPModel(torch.nn.Module):
    def __init__(self, d: int, n: int, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, n))
        self.qp = ol.QPLayer()
        self.register_buffer("Q", I_n(n))
        for name, t in zip("GhAb", simplex(n)):
            self.register_buffer(name, t)

    def forward(self, z):
        return self.qp(self.Q, -self.net(z), self.G, self.h, self.A, self.b)


class SoftmaxModel(torch.nn.Module):
    def __init__(self, d: int, n: int, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, n))

    def forward(self, z):
        return torch.softmax(self.net(z), dim=-1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (CI)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    steps = 40 if args.quick else args.steps
    d, n, batch = 8, 10, 128

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    W = 0.6 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    z_test, y_test = make_data(500, d, n, gen, W)

    models = {"qp": QPModel(d, n).double(), "softmax": SoftmaxModel(d, n).double()}
    torch.manual_seed(args.seed)
    models["softmax"].net.load_state_dict(models["qp"].net.state_dict())  # same initialization
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-2) for k, m in models.items()}

    print(f"targets: projections onto the simplex in R^{n}; "
          f"{(y_test.abs() < ZERO).double().mean():.0%} of their entries are zero")
    print(f"{'step':>5} | {'test MSE (QP layer)':>20} | {'test MSE (softmax)':>19} | {'QPs/s':>8}")
    qp_time, qps = 0.0, 0
    results = {}
    for step in range(steps + 1):
        if step % max(1, steps // 6) == 0 or step == steps:
            with torch.no_grad():
                mse = {k: float(((m(z_test) - y_test) ** 2).mean()) for k, m in models.items()}
            rate = f"{qps / qp_time:8.0f}" if qp_time else f"{'—':>8}"  # (no QP solved yet at step 0)
            print(f"{step:5d} | {mse['qp']:20.3e} | {mse['softmax']:19.3e} | {rate}")
            results = mse
        if step == steps:
            break
        z, y = make_data(batch, d, n, gen, W)
        for k, m in models.items():
            t0 = time.perf_counter()
            loss = ((m(z) - y) ** 2).mean()
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            if k == "qp":
                qp_time += time.perf_counter() - t0
                qps += batch
    with torch.no_grad():
        pred = models["qp"](z_test)
    zeros_pred = float((pred.abs() < ZERO).double().mean())
    feas = float((pred.sum(-1) - 1).abs().max())
    print(f"QP-layer predictions: {zeros_pred:.0%} zeros, max |1ᵀx − 1| = {feas:.1e}; "
          f"softmax predictions: {float((models['softmax'](z_test) < ZERO).double().mean()):.0%} zeros")
    ratio = results["softmax"] / results["qp"]
    print(f"result: the QP-layer model's test MSE is {ratio:.1f}x lower than the softmax model's")
    return {"mse_qp": results["qp"], "mse_softmax": results["softmax"], "zeros": zeros_pred}


if __name__ == "__main__":
    main()
