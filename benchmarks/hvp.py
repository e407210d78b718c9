"""Cost of second derivatives (create_graph=True) against the first-order backward.

Per size and dense backend (best of --repeat, ms):
- fwd+bwd: solve_qp forward and a first-order backward (the reference);
- value HVP: a Hessian-vector product of the optimal value in q, ∇²_q V · v (qp_value: the
  envelope gradient x* put on the graph, then its implicit derivative);
- solve_qp double backward: d/dG ⟨∇_G ⟨v, x*⟩, W⟩ (x* is affine in q and h on an active set, so
  the second derivative is taken in G, where it is not zero).

The recorded backward's K-solves (backward.py: ``KKTSolveMap``) are the C++ ``qp_kkt_solve`` on the
native backend and a torch factor (kkt.py) on the torch backend.

    python benchmarks/hvp.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import optlayers as ol

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ab import best_ms  # noqa: E402

SIZES = ((32, 20, 20, 5), (128, 50, 50, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES), help="BxNxMxP,…")
    args = ap.parse_args()
    print(f"float64; best of {args.repeat}, ms")
    print(f"{'size':<22}{'backend':<9}{'fwd+bwd':>9}{'value HVP':>11}{'ratio':>7}{'double bwd':>12}{'ratio':>7}")
    for spec in args.sizes.split(","):
        B, n, m, p = (int(v) for v in spec.split("x"))
        P = ol.testing.random_qp(B, n, m, p, seed=0)
        Q, q, G, h, A, b = (t.detach() for t in P.data())
        gen = torch.Generator().manual_seed(1)
        v, W = torch.randn(q.shape, generator=gen, dtype=q.dtype), torch.randn(G.shape, generator=gen, dtype=q.dtype)
        for be in ("native", "torch"):
            ql, Gl = q.clone().requires_grad_(), G.clone().requires_grad_()

            def first():
                (ol.solve_qp(Q, ql, G, h, A, b, backend=be) * v).sum().backward()

            def value_hvp():
                (g,) = torch.autograd.grad(ol.qp_value(Q, ql, G, h, A, b, backend=be).sum(), ql, create_graph=True)
                torch.autograd.grad((g * v).sum(), ql)

            def double():
                x = ol.solve_qp(Q, q, Gl, h, A, b, backend=be)
                (g,) = torch.autograd.grad((x * v).sum(), Gl, create_graph=True)
                torch.autograd.grad((g * W).sum(), Gl)

            t1, t2, t3 = (best_ms(f, args.repeat) for f in (first, value_hvp, double))
            size = f"B={B} n={n} m={m} p={p}"
            print(f"{size:<22}{be:<9}{t1:>9.2f}{t2:>11.2f}{t2 / t1:>6.1f}×{t3:>12.2f}{t3 / t1:>6.1f}×")


if __name__ == "__main__":
    main()
