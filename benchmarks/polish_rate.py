"""Accuracy, not speed: how many float64 grasp QPs each dense path finishes at the interior-point
solution (~1e-9) instead of a polished one (round-off).

The polish solves the KKT system of a guessed active set and is accepted only where that point is
optimal; where every guess of its rounds fails, a converged problem keeps the interior point's
iterate (status SOLVED, at the solver tolerance) — on the CPU in float64 only after a second solve
at a 100× tighter tolerance failed to polish too (docs/solver.md). Grasp contact-force QPs are degenerate (zero-force
contacts: dependent active rows; multipliers from 1e-8 to 1e-2), which is where guesses fail. This
script solves batches of 800 grasps × 6 wrenches on each object of ``examples/grasp_model.py``, for
K = 4 and 5 contacts and several seeds, and counts per path the problems whose complementarity holds
only to the interior-point tolerance: max|λᵢ(h − Gx)ᵢ| > 1e-13 (an interior-point solution has
~1e-10, a polished one an exact active set: λᵢ = 0 or (h − Gx)ᵢ at round-off). It also prints the
largest stationarity residual ‖Qx + q + Gᵀλ‖∞ / (1 + ‖q‖∞) over the batch (the polish's acceptance
test allows up to its tolerance, 1e-9 in float64). Not a timing: a count, reproducible on any
machine up to the rounding of its BLAS.

Paths: ``torch``; ``native`` (the CPU default, batch-interleaved lanes); ``native-serial``
(``OPTLAYERS_CPU_LANES=0``: one problem per thread, the thread-group code of the CUDA warp/block
kernels); ``native-small`` (``OPTLAYERS_CPU_SMALL=1``: the CUDA small-problem kernel run on the host,
with the serial fallback).

Usage:
    python benchmarks/polish_rate.py               # 2 seeds: 4 × 9,600 = 38,400 QPs per path
    python benchmarks/polish_rate.py --seeds 1     # quicker
    python benchmarks/polish_rate.py --seeds 1 --grasps 8000   # 48,000 QPs a batch: 192,000 per path
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import grasp_model as gm  # noqa: E402

import optlayers as ol  # noqa: E402

from _ab import restored_env  # noqa: E402

PATHS = {
    "torch": ("torch", {}),
    "native": ("native", {}),
    "native-serial": ("native", {"OPTLAYERS_CPU_LANES": "0"}),
    "native-small": ("native", {"OPTLAYERS_CPU_LANES": "0", "OPTLAYERS_CPU_SMALL": "1"}),
}


def count(backend: str, seeds: int, grasps: int) -> dict:
    qps = unpolished = unsolved = 0
    iterations = worst = 0.0
    for name in sorted(gm.OBJECTS):
        for contacts in (4, 5):
            cfg = gm.GraspConfig(contacts=contacts, wrenches=6)
            for seed in range(seeds):
                Q, q, G, h = gm.qp_batch(gm.OBJECTS[name], cfg, grasps, seed)
                sol = ol.solve_qp(Q, q, G, h, backend=backend, return_solution=True, on_failure="nan")
                x, lam = sol.x, sol.lam
                comp = (lam * (h - x @ G.T)).abs().amax(-1)
                stat = (torch.einsum("bij,bj->bi", Q, x) + q + lam @ G).abs().amax(-1) / (1 + q.abs().amax(-1))
                solved = sol.status == ol.Status.SOLVED
                unpolished += int((solved & (comp > 1e-13)).sum())
                worst = max(worst, float(stat[solved].max()) if bool(solved.any()) else 0.0)
                unsolved += int((~solved).sum())
                iterations += float(sol.iterations.double().sum())
                qps += Q.shape[0]
    return {"qps": qps, "unpolished": unpolished, "unsolved": unsolved, "stationarity": worst,
            "iterations": iterations / qps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--grasps", type=int, default=800)
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of " + ", ".join(PATHS))
    args = ap.parse_args(argv)
    native_ok, why = ol.native.status()
    print(f"float64 grasp QPs: objects {sorted(gm.OBJECTS)}, K = 4 and 5, {args.seeds} seed(s), "
          f"{args.grasps} grasps × 6 wrenches a batch")
    print(f"{'path':<16}{'QPs':>8}{'unpolished':>12}{'not SOLVED':>12}{'max stat.':>11}{'mean iters':>12}")
    for path in args.paths.split(","):
        backend, env = PATHS[path]
        if backend == "native" and not native_ok:
            print(f"{path:<16}skipped ({why})")
            continue
        with contextlib.ExitStack() as stack:
            for var in ("OPTLAYERS_CPU_LANES", "OPTLAYERS_CPU_SMALL"):  # each path sets its own
                stack.enter_context(restored_env(var))
                if var in env:
                    os.environ[var] = env[var]
                else:
                    os.environ.pop(var, None)
            r = count(backend, args.seeds, args.grasps)
        print(f"{path:<16}{r['qps']:>8,}{r['unpolished']:>12}{r['unsolved']:>12}{r['stationarity']:>11.1e}"
              f"{r['iterations']:>12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
