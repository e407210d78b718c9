"""Hard QPs: which layer returns the right answer — or says that it has none? (Not a timing.)

The families of ``ol.testing.hard_qps`` (degenerate vertices, rows pinning a vertex from both
sides, duplicated rows, infeasible and unbounded problems; answers known by construction), float64,
B problems a family and seed. Every installed contestant of ``compare_qp.py`` (``_peers.py``) and
optlayers' dense paths solve the same batches. Each problem is counted as

    right       the solution within 1e-6 (1 + max |x*|) of the known one (float32 rows: 1e-3), or —
                for a problem without a solution — a failure reported (NaN, an exception, or the
                peer's own status);
    inaccurate  within 1e-2 (1 + max |x*|) but not right;
    flagged     a problem with a solution reported as failed (honest, but unsolved);
    wrong       a finite x farther off, with no failure reported: silent garbage (for an infeasible
                or unbounded problem: any finite x the layer did not flag).

optlayers solves with ``on_failure="nan"`` (per-problem statuses; a wrong status would count as
wrong: e.g. a certificate of infeasibility for a problem with a solution gives NaN on a problem
that has one, i.e. "flagged", but is listed under ``false certificates``). A peer that raises for
the batch flags all of it. With ``--float32`` optlayers' backends also run the float32 rounding of
the same problems (the peers here are float64-only; the unbounded family is not run in float32:
rounding its rank-deficient Q to float32 can make it positive definite, with a finite solution
~1e6 away, so neither answer is wrong).

    python benchmarks/hard_qps.py [--B 32] [--seeds 2] [--only optlayers,moreau] [--float32]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402

import optlayers as ol  # noqa: E402

SLOW = ("cvxpylayers", "osqp")  # minutes per family at tight settings; --only to include them


def ours(backend: str, dtype: torch.dtype):
    """optlayers' solve with per-problem statuses: (x, flagged (B,) bool, false certificates)."""

    def solve(H):
        data = [t.to(dtype) if t.numel() else None for t in H.data()]
        sol = ol.solve_qp(*data, backend=backend, return_solution=True, on_failure="nan")
        certified = (sol.status == ol.Status.PRIMAL_INFEASIBLE) | (sol.status == ol.Status.DUAL_INFEASIBLE)
        false_cert = int((certified & (H.expect == ol.Status.SOLVED)).sum())
        return sol.x.double(), sol.status != ol.Status.SOLVED, false_cert

    return solve


def peer(contestant: _peers.Contestant, spec: _peers.Spec):
    fn = contestant.prepare(spec, [])

    def solve(H):
        B, n = H.q.shape
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = fn(*H.data()).detach().double()
        except Exception:  # noqa: BLE001 - a peer that raises flags the whole batch
            return torch.full((B, n), float("nan"), dtype=torch.float64), torch.ones(B, dtype=torch.bool), 0
        ok = getattr(fn, "ok", None)
        flagged = ~torch.isfinite(x).all(-1)
        if ok is not None:
            flagged |= ~ok
        return x, flagged, 0

    return solve


def classify(H, x, flagged, rtol: float) -> tuple[int, int, int, int]:
    """(right, inaccurate, flagged, wrong) counts for a batch (see the module docstring)."""
    solvable = H.expect == ol.Status.SOLVED
    scale = 1 + H.x.abs().amax(-1)
    err = (x - H.x).abs().amax(-1)
    right = (solvable & (err <= rtol * scale) & ~flagged) | (~solvable & flagged)
    inaccurate = solvable & ~right & (err <= 1e-2 * scale) & ~flagged
    flag = solvable & flagged
    wrong = ~right & ~inaccurate & ~flag
    return int(right.sum()), int(inaccurate.sum()), int(flag.sum()), int(wrong.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated contestant names (prefixes)")
    ap.add_argument("--float32", action="store_true", help="also optlayers in float32")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]

    def wanted(name: str) -> bool:
        return any(name.startswith(o) for o in only) if only else not name.startswith(SLOW)

    contestants, notes = _peers.all_contestants()
    sizes: dict[str, tuple[int, int, int]] = {}
    rows = []
    for c in contestants:
        if not wanted(c.name):
            continue
        rows.append((c.name, c))
        if c.is_ours and args.float32:
            rows.append((c.name + "-f32", c))
    print(f"hard QPs, B={args.B} a family and seed, {args.seeds} seeds; cells: right / inaccurate / flagged"
          " / wrong (wrong = silent garbage)\n")
    header = f"{'contestant':22s}" + "".join(f"{f:>20s}" for f in ol.testing.FAMILIES) + f"{'false certs':>13s}"
    print(header)
    print("-" * len(header))
    for name, c in rows:
        cells, false_certs, skipped = [], 0, None
        f32 = name.endswith("-f32")
        for family in ol.testing.FAMILIES:
            if f32 and family == "unbounded":
                cells.append("n/a")
                continue
            tot = [0, 0, 0, 0]
            for seed in range(args.seeds):
                H = ol.testing.hard_qps(family, args.B, seed=seed)
                B, n = H.q.shape
                sizes[family] = (n, H.h.shape[-1], H.b.shape[-1])
                spec = _peers.Spec(B, n, H.h.shape[-1], H.b.shape[-1])
                try:
                    if c.is_ours:
                        backend = c.name.removeprefix("optlayers-")
                        solve = ours(backend, torch.float32 if f32 else torch.float64)
                    else:
                        solve = peer(c, spec)
                except _peers.Skip as why:
                    skipped = str(why)
                    break
                x, flagged, fc = solve(H)
                false_certs += fc
                for k, v in enumerate(classify(H, x, flagged, 1e-3 if f32 else 1e-6)):
                    tot[k] += v
            if skipped:
                break
            cells.append("/".join(str(v) for v in tot))
        if skipped:
            print(f"{name:22s}  skipped: {skipped}")
            continue
        print(f"{name:22s}" + "".join(f"{cell:>20s}" for cell in cells) + f"{false_certs:>13d}", flush=True)
    print(f"\n(each cell sums {args.seeds} × {args.B} problems; sizes n, m, p: "
          + ", ".join(f"{f} {s}" for f, s in sizes.items()) + ")")
    for c in contestants:
        if wanted(c.name) and c.settings:
            print(f"  {c.name}: {c.settings}")
    for note in notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
