"""torch.func on solve_qp: vmap against the batched call and a Python loop; Jacobians by jacrev,
jacfwd and torch.autograd.functional.jacobian. (No peer offers torch.func on a QP layer: qpth,
cvxpylayers, proxsuite and moreau are autograd.Functions without vmap rules.)

Every Jacobian is checked against the autograd one before it is timed.

    python benchmarks/func_transforms.py [--B 64] [--n 10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.func import jacfwd, jacrev, vmap

import optlayers as ol

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ab import best_ms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    B, n = args.B, args.n
    m, p = 3 * n // 2, max(1, n // 5)
    P = ol.testing.random_qp(B, n, m, p, seed=1)
    Q, q, G, h, A, b = (t.detach() for t in P.data())
    f = lambda q_: ol.solve_qp(Q, q_, G, h, A, b)  # noqa: E731
    print(f"B={B}, n={n}, m={m}, p={p}, float64, backend auto; best of {args.repeat}, ms")

    one = lambda q_: ol.solve_qp(Q[0], q_, G[0], h[0], A[0], b[0])  # noqa: E731
    rows = [
        ("batched solve_qp", lambda: f(q)),
        ("vmap of one problem's function over the batch", lambda: vmap(one)(q)),
        ("Python loop over the batch", lambda: [one(qi) for qi in q]),
    ]
    ref = torch.autograd.functional.jacobian(f, q)
    for name, jac in (("jacrev", lambda: jacrev(f)(q)), ("jacfwd", lambda: jacfwd(f)(q)),
                      ("autograd jacobian(vectorize=True)",
                       lambda: torch.autograd.functional.jacobian(f, q, vectorize=True))):
        err = float((jac() - ref).abs().max())
        assert err < 1e-9, (name, err)
        rows.append((f"{name} of x (B·n × B·n)", jac))
    rows.append(("autograd jacobian (loop) of x (B·n × B·n)", lambda: torch.autograd.functional.jacobian(f, q)))
    rows.append(("vmap(jacrev) per-problem Jacobians (B × n × n)", lambda: vmap(jacrev(one))(q)))
    for name, fn in rows:
        print(f"{name:<50} {best_ms(fn, args.repeat):9.2f}")


if __name__ == "__main__":
    main()
