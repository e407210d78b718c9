"""Implicit differentiation vs. backpropagation through the unrolled solver.

Problem. Ridge regression with a validation objective (a bilevel hyperparameter gradient):

    w*(λ) = argmin_w ½‖X w − y‖² + (λ/2)‖w‖²,      L(λ) = ½‖X_v w*(λ) − y_v‖²,

with X of size n × d (default 2,000 × 1,000). The inner solver is K steps of gradient descent
with step 1/(σ_max(X)² + λ) from w = 0. Two ways to get dL/dλ:

- **unrolled**: autograd records all K iterations and backpropagates through them;
- **implicit**: the same solver decorated with ``ol.custom_root`` on F(w, λ) = Xᵀ(Xw − y) + λw;
  the backward is one CG solve with Hessian-vector products (tol 1e-10).

Reference: the closed form dL/dλ = −(X_vᵀ(X_v w* − y_v))ᵀ (XᵀX + λI)⁻¹ w* (direct solves).

Measured per K (float64, CPU; times are the minimum of ``--repeat`` runs): forward time (the K solver steps),
backward time, number of Hessian-vector products in the backward (deterministic: one per
unrolled step; one per CG iteration for implicit), bytes autograd keeps for backward (saved tensors, excluding the data X, y, X_v,
y_v themselves: exact), growth of the resident set of a fresh process over the forward pass,
i.e. the memory actually held for backward (``/proc/self/statm``: approximate, allocator-
dependent, Linux only), and the relative error of each gradient vs. the closed form.

Run: ``python benchmarks/implicit_vs_unrolled.py`` (``--quick`` for a small smoke run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

D = torch.float64


def make_problem(n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=D) / n**0.5
    w_true = torch.randn(d, generator=g, dtype=D)
    y = X @ w_true + 0.1 * torch.randn(n, generator=g, dtype=D)
    Xv = torch.randn(n // 4, d, generator=g, dtype=D) / n**0.5
    yv = Xv @ w_true + 0.1 * torch.randn(n // 4, generator=g, dtype=D)
    return X, y, Xv, yv


def step_size(X, lam: float, iters: int = 100) -> float:
    """1/(σ_max(X)² + λ) by power iteration on XᵀX (no SVD: keeps the child's memory peak low)."""
    v = torch.ones(X.shape[1], dtype=D) / X.shape[1] ** 0.5
    for _ in range(iters):
        v = X.T @ (X @ v)
        top = float(v.norm())
        v = v / top
    return 1.0 / (1.01 * top + lam)  # 1% margin for the power-iteration underestimate


def closed_form_grad(lam: float, X, y, Xv, yv) -> float:
    d = X.shape[1]
    A = X.T @ X + lam * torch.eye(d, dtype=D)
    w = torch.linalg.solve(A, X.T @ y)
    r = Xv.T @ (Xv @ w - yv)
    return float(-(r @ torch.linalg.solve(A, w)))


def gd(lam, X, y, K: int, step: float):
    w = torch.zeros(X.shape[1], dtype=D)
    for _ in range(K):
        w = w - step * (X.T @ (X @ w - y) + lam * w)
    return w


CG_ITERATIONS: list[int] = []  # iterations of each backward CG solve (deterministic cost)


def cg_recording(matvec, b):
    import optlayers as ol

    x, info = ol.linear_solve.cg(matvec, b, return_info=True)
    CG_ITERATIONS.append(info.iterations)
    return x


def make_implicit(K: int, step: float):
    import optlayers as ol

    def F(w, lam, X, y):
        return X.T @ (X @ w - y) + lam * w

    @ol.custom_root(F, solve=cg_recording)
    def solver(init, lam, X, y):
        return gd(lam, X, y, K, step)

    return solver


class SavedBytes:
    """Counts the bytes of tensors autograd saves for backward (unique storages, data excluded)."""

    def __init__(self, exclude):
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.seen = {}

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.exclude:
            self.seen[ptr] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def run_once(mode: str, K: int, data, lam0: float, step: float, solver=None):
    """Returns (forward s, backward s, saved bytes, gradient, RSS growth over the forward)."""
    X, y, Xv, yv = data
    lam = torch.tensor(lam0, dtype=D, requires_grad=True)
    counter = SavedBytes([X, y, Xv, yv, lam])
    rss0 = current_rss_bytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        t0 = time.perf_counter()
        w = gd(lam, X, y, K, step) if mode == "unrolled" else solver(None, lam, X, y)
        loss = 0.5 * ((Xv @ w - yv) ** 2).sum()
        t1 = time.perf_counter()
    rss1 = current_rss_bytes()
    (g,) = torch.autograd.grad(loss, lam)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, counter.total, float(g), rss1 - rss0


def child(args) -> None:
    """One fresh process: setup and warm-up, then forward+backward once; prints JSON with the
    growth of the resident set over the forward pass (the memory held for backward)."""
    torch.set_num_threads(args.threads)
    data = make_problem(args.n, args.d)
    step = step_size(data[0], args.lam)
    solver = make_implicit(args.K, step) if args.mode == "implicit" else None
    # Warm up both paths (torch.func's first use imports modules and allocates).
    run_once("implicit", 2, data, args.lam, step, make_implicit(2, step))
    run_once("unrolled", 2, data, args.lam, step)
    held = run_once(args.mode, args.K, data, args.lam, step, solver)[4]
    print(json.dumps({"rss_held_bytes": held}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--iters", type=int, nargs="*", default=None, help="values of K")
    ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="implicit", help=argparse.SUPPRESS)
    ap.add_argument("--K", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.n = args.n or (400 if args.quick else 2000)
    args.d = args.d or (200 if args.quick else 1000)
    iters = args.iters or ([50, 200] if args.quick else [100, 250, 500, 1000])
    if args.child:
        return child(args)

    torch.set_num_threads(args.threads)
    data = make_problem(args.n, args.d)
    X = data[0]
    step = step_size(X, args.lam)
    ref = closed_form_grad(args.lam, *data)
    s = torch.linalg.svdvals(X)
    kappa = float((s[0] ** 2 + args.lam) / (s[-1] ** 2 + args.lam))
    print(f"ridge: n={args.n}, d={args.d}, lambda={args.lam}, cond(XᵀX+λI)={kappa:.1f}, float64, "
          f"{args.threads} threads, torch {torch.__version__}; closed-form dL/dλ = {ref:.10e}")
    run_once("implicit", 1, data, args.lam, step, make_implicit(1, step))  # warm-up
    header = (f"{'K':>5} {'mode':>9} {'fwd [s]':>9} {'bwd [s]':>9} {'bwd H·v':>9} {'saved for bwd':>14} "
              f"{'RSS held':>11} {'rel. grad error':>16}")
    print(header)
    print("-" * len(header))
    rows = []
    for K in iters:
        solver = make_implicit(K, step)
        for mode in ("unrolled", "implicit"):
            run_once(mode, K, data, args.lam, step, solver)  # untimed warm-up
            runs = [run_once(mode, K, data, args.lam, step, solver) for _ in range(args.repeat)]
            fwd = min(r[0] for r in runs)  # min: the run least disturbed by other load
            bwd = min(r[1] for r in runs)
            saved = runs[0][2]
            err = abs(runs[0][3] - ref) / abs(ref)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", "--mode", mode, "--K", str(K), "--n", str(args.n),
                 "--d", str(args.d), "--lam", str(args.lam), "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            )
            rss = json.loads(proc.stdout.strip().splitlines()[-1])["rss_held_bytes"] / 2**20
            # Products with the Hessian XᵀX(+λI) in the backward: one per unrolled step; one per
            # CG iteration plus the final residual check for implicit (each = 2 passes over X).
            prods = K if mode == "unrolled" else CG_ITERATIONS[-1] + 1
            rows.append((K, mode, fwd, bwd, saved, rss, err))
            print(f"{K:>5} {mode:>9} {fwd:>9.3f} {bwd:>9.3f} {prods:>9} {saved / 2**10:>10.1f} KiB {rss:>7.1f} MiB {err:>16.2e}")
    print("\nimplicit/unrolled ratios (backward time, saved bytes, gradient error):")
    for K in iters:
        u = next(r for r in rows if r[0] == K and r[1] == "unrolled")
        i = next(r for r in rows if r[0] == K and r[1] == "implicit")
        print(f"  K={K:>5}: bwd time x{i[3] / u[3]:.2f}, saved bytes x{i[4] / max(u[4], 1):.4f}, "
              f"error x{i[6] / max(u[6], 1e-300):.2e}")


if __name__ == "__main__":
    main()
