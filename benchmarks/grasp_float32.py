"""Robustness in float32: how many grasp contact-force QPs each dense backend leaves unsolved.

Near a degenerate solution (a contact with zero force: its friction facets and normal bound are
all active on 3 variables) float32 interior points reach their rounding floor early, and the
polish must find the active set from an imprecise iterate. This script solves batches of
128 grasps × 6 wrenches (K = 4 contacts, n = 12, m = 41, shared G) on each object of
``examples/grasp_model.py`` for several seeds, in float32, and counts the statuses per backend
(0 SOLVED, 3 MAX_ITER, 4 NUMERICAL_ERROR, ...), and how far the SOLVED ones' x lies from the
solution of the same rounded data in float64 (these QPs are ill-conditioned: Q = WᵀW + εI with
ε = 1e-3 and dependent active rows, so float32 rounding in the solve moves x by up to ~1e-2 even
where the polish finished it). Not a timing: counts, reproducible on any machine up to the rounding
of its BLAS.

The row ``small-bare`` is the CUDA small-problem kernel (csrc/optlayers/qp_small.h) run on the host
(``OPTLAYERS_CPU_SMALL=2``: the same code, no fallback): ``RETRY`` counts the problems it would leave
to the GPU's warp-kernel fallback (a full re-solve there).

Usage:
    python benchmarks/grasp_float32.py                 # 8 seeds × 2 objects = 12,288 QPs per backend
    python benchmarks/grasp_float32.py --seeds 2       # quicker
    python benchmarks/grasp_float32.py --dtype float64 # the control
    python benchmarks/grasp_float32.py --contacts 5    # K = 5 (n = 15, m = 51)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import grasp_model as gm  # noqa: E402

import optlayers as ol  # noqa: E402


def batches(seeds: int, dtype: torch.dtype, grasps: int = 128, contacts: int = 4):
    cfg = gm.GraspConfig(contacts=contacts, wrenches=6)
    for name in sorted(gm.OBJECTS):
        for seed in range(seeds):
            yield tuple(t.to(dtype).contiguous() for t in gm.qp_batch(gm.OBJECTS[name], cfg, grasps, seed))


@contextlib.contextmanager
def small_emulation(on: bool):
    """OPTLAYERS_CPU_SMALL=2 inside the block (the op reads it on every call), restored after."""
    old = os.environ.get("OPTLAYERS_CPU_SMALL")
    if on:
        os.environ["OPTLAYERS_CPU_SMALL"] = "2"
    try:
        yield
    finally:
        if on:
            if old is None:
                os.environ.pop("OPTLAYERS_CPU_SMALL", None)
            else:
                os.environ["OPTLAYERS_CPU_SMALL"] = old


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="float64: the control")
    ap.add_argument("--contacts", type=int, default=4, help="contacts per grasp: 4 (n=12, m=41) or 5 (n=15, m=51)")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    backends = ["torch"] + (["native", "small-bare"] if ol.native.status()[0] else [])
    counts = {b: collections.Counter() for b in backends}
    errors = {b: [] for b in backends}
    for Q, q, G, h in batches(args.seeds, dtype, contacts=args.contacts):
        # The reference: the same (rounded) data solved in float64, where it is exact.
        ref = ol.solve_qp(*(t.double() for t in (Q, q, G, h)), backend="torch")
        for b in backends:
            with small_emulation(b == "small-bare"):
                sol = ol.solve_qp(Q, q, G, h, backend="native" if b == "small-bare" else b, return_solution=True,
                                  on_failure="nan")
            counts[b].update("RETRY" if int(c) == -1 else ol.Status(int(c)).name for c in sol.status.tolist())
            solved = sol.status == ol.Status.SOLVED
            errors[b].append((sol.x.double() - ref).abs().amax(-1)[solved])
    for b in backends:
        total = sum(counts[b].values())
        unsolved = total - counts[b]["SOLVED"]
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts[b].items()) if k != "SOLVED")
        print(f"{b:>10}: {unsolved} of {total} {args.dtype} grasp QPs unsolved ({100 * unsolved / total:.2f}%)"
              + (f": {detail}" if detail else ""))
        err = torch.cat(errors[b])
        if err.numel():
            print(f"{'':>12}max|x − x64| of the SOLVED ones (x64: the same rounded data solved in float64): "
                  f"median {float(err.median()):.1e}, 99% {float(err.quantile(0.99)):.1e}, max {float(err.max()):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
