"""Badly scaled QPs: which layer still returns the right solution? (Not a timing benchmark.)

The same planted problems (``ol.testing.random_qp``, float64, all data batched) in disguises that
change nothing about the solution:

- the objective times s (min s·(½xᵀQx + qᵀx)): the solution x is unchanged;
- the variables in other units, x = D x̃ with D = logspace(−r, r) (Q → DQD, q → Dq, G → GD,
  A → AD): the solution is x̃ = x / D;
- the constraints times s (G, h, A, b → sG, sh, sA, sb), or each row in its own unit (row i times
  10^(−6 … 6)): the solution x is unchanged;
- every variable in one other unit, x = τ x̃ (Q → τ²Q, q → τq, G → τG, A → τA): x̃ = x / τ, far
  from unit size (optlayers solves such problems a second time at the solution's own scale; see
  ``optlayers/_src/qp/scaling.py``).

Every installed contestant of ``compare_qp.py`` (``benchmarks/_peers.py``) solves each case; a
problem counts as right when max |x − x*| ≤ 1e-6 (1 + max |x*|) after mapping back (1e-4 with
``--float32``: the disguised data rounded to float32, optlayers' dense backends only). Printed per cell:
right/B, and the largest error over the batch ("nan" where the layer returned NaN; "raised" where
it raised). optlayers rescales such problems before solving (``optlayers/_src/qp/scaling.py``, and
``optlayers/_src/sparse/scaling.py`` on the OSQP route);
before that, objective × 1e4 and beyond stalled (MAX_ITER) and units 1e-3 … 1e3 apart left 3 of 16
problems unsolved, in both dense backends; before the rows were scaled (2026-11-28), constraints
× 1e-4 came back SOLVED with x off by ~5e-4.

    python benchmarks/scaling_robustness.py [--only optlayers,moreau] [--B 16] [--float32]
    python benchmarks/scaling_robustness.py --fuzz 60 [--float32] [--hard]

``--fuzz N``: N batches of 16 planted problems (four sizes, cond 10 or 1e3) in random combined
disguises — objective × 10^U(−6, 6), every variable in a unit 10^U(−5, 5), columns spread up to
1e6, each row in its own unit 10^U(−4, 4) — through optlayers' two dense backends (drawn per batch),
counting the problems that come back SOLVED with x off by more than 1e-7 (float64) / 1e-3 (float32)
relative from the float64 solution of the same (rounded) data. Seeded: the same draws every run.
With ``--hard``: batches of ``ol.testing.hard_qps`` families (milder disguises: columns up to 1e4
apart, units 10^U(−4, 4), rows 10^U(−3, 3)), x against the planted one (1e-6 in float64), and every
status other than the planted one counted (e.g. an unbounded problem returned SOLVED).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402

import optlayers as ol  # noqa: E402

OBJECTIVE_SCALES = (1e-8, 1e-4, 1e4, 1e8)
UNIT_SPREADS = (2, 3, 4)
CONSTRAINT_SCALES = (1e-8, 1e-4, 1e4, 1e8)
ONE_UNIT = (1e-6, 1e-4, 1e4, 1e6)
SLOW = ("cvxpylayers", "osqp")  # minutes per cell at tight settings; --only to include them


def cases(B: int, n: int, m: int, p: int):
    """(label, data (Q, q, G, h, A, b), map x_layer → x of the planted problem, planted x)."""
    P = ol.testing.random_qp(B, n, m, p, dtype=torch.float64, seed=0)
    Q, q, G, h, A, b = P.data()
    yield "as planted", (Q, q, G, h, A, b), (lambda x: x), P.x
    for s in OBJECTIVE_SCALES:
        yield f"objective ×{s:g}", (Q * s, q * s, G, h, A, b), (lambda x: x), P.x
    for r in UNIT_SPREADS:
        D = torch.logspace(-r, r, n, dtype=torch.float64)
        data = (D[:, None] * Q * D, q * D, G * D, h, A * D, b)
        yield f"units 1e-{r}…1e{r}", data, (lambda x, D=D: x * D), P.x
    for s in CONSTRAINT_SCALES:
        yield f"constraints ×{s:g}", (Q, q, G * s, h * s, A * s, b * s), (lambda x: x), P.x
    r, a = torch.logspace(-6, 6, m, dtype=torch.float64), torch.logspace(-6, 6, p, dtype=torch.float64)
    yield "rows 1e-6…1e6", (Q, q, r[:, None] * G, r * h, a[:, None] * A, a * b), (lambda x: x), P.x
    for t in ONE_UNIT:
        yield f"x in units ×{t:g}", (Q * t * t, q * t, G * t, h, A * t, b), (lambda x, t=t: x * t), P.x


def fuzz(trials: int, dtype: torch.dtype, hard: bool = False) -> None:
    """See the module docstring (``--fuzz``, ``--hard``)."""
    import collections
    import random

    rng = random.Random(1 if hard else 0)
    tol = (1e-6 if hard else 1e-7) if dtype == torch.float64 else 1e-3
    wrong = unsolved = total = 0
    claims: collections.Counter = collections.Counter()  # (expected, got) statuses that differ
    for trial in range(trials):
        if hard:
            family = rng.choice(ol.testing.FAMILIES)
            P = ol.testing.hard_qps(family, 16, seed=trial, dtype=torch.float64)
            expect = P.expect
            spread, unit, rows = 2, 4, 3
        else:
            n, m, p = rng.choice([(10, 15, 3), (20, 30, 5), (6, 9, 0), (30, 20, 0)])
            P = ol.testing.random_qp(16, n, m, p, dtype=torch.float64, seed=trial, cond=rng.choice([10.0, 1e3]))
            expect = torch.zeros(16, dtype=torch.int8)
            spread, unit, rows = 3, 5, 4
        Q, q, G, h, A, b = P.data()
        n, m, p = Q.shape[-1], G.shape[-2], A.shape[-2]
        g = torch.Generator().manual_seed(trial)
        so, t = 10 ** rng.uniform(-6, 6), 10 ** rng.uniform(-unit, unit)
        d = t * torch.logspace(-rng.uniform(0, spread), rng.uniform(0, spread), n,
                               dtype=torch.float64)[torch.randperm(n, generator=g)]
        r = 10 ** (2 * rows * torch.rand(m, generator=g, dtype=torch.float64) - rows)
        a = 10 ** (2 * rows * torch.rand(p, generator=g, dtype=torch.float64) - rows)
        data = [v.to(dtype) if v.numel() else None for v in (so * d[:, None] * Q * d, so * q * d, r[:, None] * G * d,
                                                             r * h, a[:, None] * A * d, a * b)]
        backend = rng.choice(["torch", "native"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = ol.solve_qp(*data, backend=backend, return_solution=True, on_failure="nan")
            if hard:
                ref = P.x
            else:  # the float64 solution of the same (rounded) data
                ref = ol.solve_qp(*(None if v is None else v.double() for v in data), backend="torch", on_failure="nan") * d
        solved = (sol.status == ol.Status.SOLVED) & (expect == ol.Status.SOLVED)
        err = (sol.x.double() * d - ref).abs().amax(-1) / (1 + ref.abs().amax(-1))
        bad = solved & ~(err <= tol)
        for e, got in zip(expect.tolist(), sol.status.tolist()):
            if e != got:
                claims[(ol.Status(e).name, ol.Status(got).name)] += 1
        total, wrong = total + 16, wrong + int(bad.sum())
        unsolved += int(((sol.status != ol.Status.SOLVED) & (expect == ol.Status.SOLVED)).sum())
        if bool(bad.any()):
            print(f"  batch {trial:3d} {backend:6} {P.family if hard else f'n,m,p={n},{m},{p}'} objective ×{so:.1e}, "
                  f"x unit ×{t:.1e}: {int(bad.sum())} SOLVED but off (max {float(err[bad].max()):.1e})")
    print(f"{str(dtype)[6:]}: {total} problems, {wrong} SOLVED but off by > {tol:g}, {unsolved} with a solution not SOLVED")
    if claims:
        print("  statuses other than the planted one (expected → got): "
              + ", ".join(f"{e} → {g_}: {k}" for (e, g_), k in sorted(claims.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated substrings of contestant names")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--size", default="10x15x3", help="n x m x p")
    ap.add_argument("--float32", action="store_true", help="the disguised data in float32 (optlayers' dense backends)")
    ap.add_argument("--fuzz", type=int, metavar="N", help="N batches of random combined disguises (see above)")
    ap.add_argument("--hard", action="store_true", help="--fuzz on ol.testing.hard_qps families")
    args = ap.parse_args()
    dtype, right_tol = (torch.float32, 1e-4) if args.float32 else (torch.float64, 1e-6)
    if args.fuzz:
        fuzz(args.fuzz, dtype, args.hard)
        return
    n, m, p = (int(v) for v in args.size.split("x"))
    contestants, _ = _peers.all_contestants()
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        contestants = [c for c in contestants if any(k in c.name for k in keys)]
    else:
        contestants = [c for c in contestants if not any(c.name.startswith(s) for s in SLOW)]
    if args.float32:
        contestants = [c for c in contestants if c.name in ("optlayers-torch", "optlayers-native")]
    spec = _peers.Spec(args.B, n, m, p)
    labels = [c[0] for c in cases(args.B, n, m, p)]
    print(f"B={args.B}, n={n}, m={m}, p={p}, {str(dtype)[6:]}; cell: right/B (largest |x − x*| / (1 + |x*|))")
    columns: dict[str, list[str]] = {}
    for c in contestants:
        diag: list[str] = []
        try:
            solve = c.prepare(spec, diag)
        except _peers.Skip as why:
            print(f"{c.name}: skipped: {why}")
            continue
        cells = columns[c.name] = []
        for _, data, back, x_star in cases(args.B, n, m, p):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = back(solve(*(t.to(dtype, copy=True) for t in data)).detach().to(torch.float64))
            except Exception as err:  # noqa: BLE001 - a peer's failure is the result
                cells.append("raised " + type(err).__name__[:12])
                continue
            err = (x - x_star).abs().amax(-1) / (1 + x_star.abs().amax(-1))
            right = int((err <= right_tol).sum())
            worst = float(err.max())
            cells.append(f"{right}/{args.B} ({'nan' if math.isnan(worst) else f'{worst:.0e}'})")
    # one row per disguise, one column per contestant
    width = max([18] + [len(name) + 2 for name in columns])
    print(f"{'case':<22}" + "".join(f"{name:>{width}}" for name in columns))
    for k, label in enumerate(labels):
        print(f"{label:<22}" + "".join(f"{cells[k]:>{width}}" for cells in columns.values()))

if __name__ == "__main__":
    main()
