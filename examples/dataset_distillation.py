"""Dataset distillation with implicit differentiation: one synthetic image per digit.

Problem (bilevel, Wang et al. 2018 "Dataset Distillation"; the implicit-differentiation version
follows the JAXopt example). On scikit-learn's ``load_digits`` (1,797 8×8 images, shipped with
scikit-learn), learn 10 synthetic images S (one per class) such that a multinomial logistic
regression trained *only on S* classifies the real images well:

    inner:  W*(S) = argmin_W  Σ_{c=0..9} CE(W [s_c; 1], c) + (l2/2)‖W‖²      (W: 10 × 65)
    outer:  min_S  mean_{(x,y) ∈ real train set} CE(W*(S) [x; 1], y)

The inner problem (strongly convex, 650 unknowns) is solved to optimality by Newton's method
on detached data (any solver would do); ``ol.custom_root`` with its gradient optimality condition gives ∂W*/∂S
through one conjugate-gradient solve with Hessian-vector products (no unrolling).

Reported: test accuracy of the model trained on the 10 distilled images, vs. the same model
trained on 10 real images (the first of each class) and on the 10 class means.

Run ``python examples/dataset_distillation.py`` (``--quick`` for a short CI run); the plot of
the distilled images goes to ``--out`` (default ``examples/out/dataset_distillation.png``).
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import torch

import optlayers as ol

D = torch.float64
L2REG = 1e-1  # inner ridge (makes the inner problem strongly convex, so cg applies)
INNER_TOL = 1e-9  # inner stopping tolerance on the gradient norm (max-abs)
INNER_MAXITER = 50  # Newton iterations (quadratic convergence: ~10 are used)


def inner_objective(W, S):
    """Training loss on the synthetic set; W: (10, 65), S: (10, 64) (row c has label c)."""
    logits = S @ W[:, :-1].T + W[:, -1]
    labels = torch.arange(S.shape[0])
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum") + 0.5 * L2REG * (W**2).sum()


@ol.custom_root(
    ol.optimality.gradient_optimality(inner_objective),
    solve=functools.partial(ol.linear_solve.cg, tol=1e-8),
)
def train_inner(init, S):
    """Newton's method on the detached synthetic set (warm-started); never differentiated.

    The Hessian of the multinomial log-loss is Σ_i (diag(p_i) − p_i p_iᵀ) ⊗ x̃_i x̃_iᵀ (+ l2 I),
    with x̃_i = [x_i; 1], assembled with one einsum (650 × 650).
    """
    k, d = S.shape[0], S.shape[1] + 1
    Xa = torch.cat([S, torch.ones(k, 1, dtype=D)], 1)
    Y = torch.eye(k, dtype=D)
    W = init.clone() if init is not None else torch.zeros(k, d, dtype=D)
    for _ in range(INNER_MAXITER):
        P = torch.softmax(Xa @ W.T, dim=1)
        G = (P - Y).T @ Xa + L2REG * W
        if float(G.abs().max()) < INNER_TOL:
            break
        A = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]  # (n, k, k)
        H = torch.einsum("icd,ij,il->cjdl", A, Xa, Xa).reshape(k * d, k * d)
        H = H + L2REG * torch.eye(k * d, dtype=D)
        chol = torch.linalg.cholesky(H)  # H is SPD (l2 > 0)
        W = W - torch.cholesky_solve(G.reshape(-1, 1), chol).reshape(k, d)
    return W


def predict(W, X):
    return X @ W[:, :-1].T + W[:, -1]


def accuracy(W, X, y):
    return float((predict(W, X).argmax(1) == y).to(D).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (CI)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "dataset_distillation.png"))
    args = ap.parse_args(argv)
    steps = args.steps or (10 if args.quick else 300)

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=args.seed, stratify=y)
    X_tr, X_te = torch.tensor(X_tr, dtype=D), torch.tensor(X_te, dtype=D)
    y_tr, y_te = torch.tensor(y_tr), torch.tensor(y_te)

    # Baselines: 10 real images (first of each class) and the 10 class means.
    first = torch.stack([X_tr[y_tr == c][0] for c in range(10)])
    means = torch.stack([X_tr[y_tr == c].mean(0) for c in range(10)])
    acc_first = accuracy(train_inner(None, first), X_te, y_te)
    acc_means = accuracy(train_inner(None, means), X_te, y_te)

    # Distillation: Adam on S, initialized at random noise.
    gen = torch.Generator().manual_seed(args.seed)
    S = (0.5 + 0.1 * torch.randn(10, 64, generator=gen, dtype=D)).requires_grad_()
    opt = Adam(S, lr=args.lr)
    W, hist = None, []
    t0 = time.perf_counter()
    for step in range(steps):
        W = train_inner(W, S)  # warm start from the previous inner solution
        loss = torch.nn.functional.cross_entropy(predict(W, X_tr), y_tr)
        (g,) = torch.autograd.grad(loss, S)  # implicit differentiation through L-BFGS
        opt.step(g)
        hist.append(float(loss.detach()))
        W = W.detach()
    W = train_inner(None, S.detach())
    acc = accuracy(W, X_te, y_te)
    elapsed = time.perf_counter() - t0
    print(f"load_digits: {len(y_tr)} train / {len(y_te)} test; model trained on 10 images only")
    print(f"  10 real images (first per class): test accuracy {acc_first:.3f}")
    print(f"  10 class means:                   test accuracy {acc_means:.3f}")
    print(f"  10 distilled images ({steps} steps): test accuracy {acc:.3f}  (train loss {hist[0]:.3f} -> {hist[-1]:.3f}, {elapsed:.1f}s)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 10, figsize=(12, 3))
    for c in range(10):
        axes[0, c].imshow(means[c].reshape(8, 8).numpy(), cmap="gray_r")
        axes[1, c].imshow(S.detach()[c].reshape(8, 8).numpy(), cmap="gray_r")
        axes[0, c].set_title(str(c))
        for r in range(2):
            axes[r, c].axis("off")
    axes[0, 0].text(-12, 4, "class\nmean", fontsize=8)
    axes[1, 0].text(-12, 4, "distilled", fontsize=8)
    fig.suptitle(f"test accuracy: class means {acc_means:.3f}, distilled {acc:.3f}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"saved {args.out}")


class Adam:
    """Minimal Adam on one tensor (torch.optim's first use imports torch._dynamo: seconds)."""

    def __init__(self, param, lr, betas=(0.9, 0.999), eps=1e-8):
        self.p, self.lr, self.b1, self.b2, self.eps = param, lr, betas[0], betas[1], eps
        self.m, self.v, self.t = torch.zeros_like(param), torch.zeros_like(param), 0

    @torch.no_grad()
    def step(self, grad):
        self.t += 1
        self.m.mul_(self.b1).add_((1 - self.b1) * grad)
        self.v.mul_(self.b2).add_((1 - self.b2) * grad * grad)
        m_hat, v_hat = self.m / (1 - self.b1**self.t), self.v / (1 - self.b2**self.t)
        self.p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


if __name__ == "__main__":
    main()
