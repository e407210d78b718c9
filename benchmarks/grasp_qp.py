"""Grasp-sized contact-force QPs (issue #7): optlayers vs. moreau, proxsuite and qpth, same run.

The batch is what one step of ``examples/grasp_synthesis.py`` solves: N grasps × J = 6 target
wrenches (unit forces ±e_x, ±e_y, ±e_z), each

    minimize_f  ½ fᵀ(WᵀW + εI) f − w_jᵀW f    s.t.  G f ≤ h        (no equalities)

with W the grasp map of K random contacts on a rounded box (superquadric, power 8) and G, h the
contact-frame constraints — F = 8 friction-pyramid facets per contact, 0 ≤ f_n ≤ f_max, Σ f_n ≥
f_min — identical for every grasp:

    K = 4: n = 12, m = 41          K = 5: n = 15, m = 51          (float64, CPU by default)

at B = 4,800 (800 grasps, BODex's step) and 48,000 QPs.

Rows:
    optlayers-<backend>        x = ol.solve_qp(Q, q, G, h): G, h passed once (no batch dim),
                               Q, q batched; backward = implicit KKT derivative of x.
    optlayers-value            V = ol.qp_value(Q, q, G, h) (backend "auto"): the optimal value,
                               backward by the envelope theorem (no linear solve) — what the
                               bilevel grasp loop needs; a different output, so its ratio is
                               marked "(value)" and is not like-for-like.
    (optlayers-osqp, the sparse OSQP route of solve_qp, runs only with --only optlayers-osqp:
    it takes minutes per cell here.)
    moreau, proxsuite, qpth    the adapters of ``_peers.py`` (same settings as compare_qp.py),
                               given G, h as batch-expanded views (B, m, n) — they take batched
                               constraint data; converting to their formats is timed.
Columns:
    fwd ms / fwd+bwd ms   median wall time of one call (inputs require grad) / of forward plus
                          backward of Σ c ⊙ x (Σ c_j V_j for -value rows) w.r.t. Q and q;
    QPs/s, grasps/s       B / (fwd+bwd time), N / (fwd+bwd time) (a grasp = its J = 6 QPs);
    ratio                 fwd+bwd time / the fastest optlayers x-row (> 1: optlayers is faster);
    obj excess            max over problems of f(x) − f*, f* = the lowest objective any row reached
                          with a feasible x (max(Gx − h) ≤ 1e-10): no planted solution is needed, and
                          since Q ⪰ εI (ε = 1e-3), ‖x − x*‖ ≤ √(2·excess/ε);
    x diff, dq diff       max |x − x_ref| and ‖∇q − ∇q_ref‖/‖∇q_ref‖ against the x row with the
                          smallest obj excess (named under each table);
    viol                  max (G x − h)₊;
    failed                problems a solver reported as not solved (optlayers: status ≠ SOLVED,
                          moreau: status ≠ Solved; NaN rows of the others).

A cell whose predicted time (from the same contestant's smaller batch) exceeds ``--max-cell-s``
is skipped and says so. Threads: torch's default (os.cpu_count()) unless ``--threads``; peers use
their own pools (see compare_qp.py). Load average is printed: numbers on a shared machine move.

Usage:
    python benchmarks/grasp_qp.py                                 # K = 4, 5 × B = 4,800, 48,000
    python benchmarks/grasp_qp.py --contacts 4 --batches 4800     # the headline cell
    python benchmarks/grasp_qp.py --quick                         # CI smoke: B = 480, one run per cell
    python benchmarks/grasp_qp.py --only optlayers,moreau --markdown --json grasp.json
    python benchmarks/grasp_qp.py --device cuda --only optlayers,qpth     # on a GPU (peers: CPU-only ones skip)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
from _ab import sync  # noqa: E402
from _peers import Contestant, Skip, Spec, _moreau, _proxsuite, _qpth  # noqa: E402
from compare_qp import metadata, render_table  # noqa: E402

import grasp_model as gm  # noqa: E402

DTYPE = torch.float64
WRENCHES = 6


@dataclasses.dataclass(frozen=True)
class Cell:
    contacts: int
    B: int

    @property
    def grasps(self) -> int:
        return self.B // WRENCHES


def grasp_batch(cell: Cell, seed: int, obj_name: str, device):
    """(Q (B, n, n), q (B, n), G (m, n), h (m,), c (B, n) loss weights) for B = N grasps × 6 wrenches."""
    cfg = gm.GraspConfig(contacts=cell.contacts, wrenches=WRENCHES)
    Q, q, G, h = gm.qp_batch(gm.OBJECTS[obj_name], cfg, cell.grasps, seed)
    c = torch.randn(cell.B, cfg.n, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    return tuple(t.to(device) for t in (Q, q, G, h, c))


# ---------------------------------------------------------------------------------------------
# Contestants
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Runner:
    """A prepared contestant: ``run(Q, q, G, h) -> (out, x or None, failed count)``."""

    name: str
    ours: bool
    value: bool
    run: object


def our_backends() -> list[str]:
    import optlayers as ol

    names = []
    probe = ol.testing.random_qp(1, 3, 2, 0, seed=0)
    for member in ol.Backend:
        if member.value == "auto":
            continue
        try:
            ol.solve_qp(*probe.data(), backend=member.value)
        except ValueError:        # not a dense QP backend (osqp, scs, clarabel)
            continue
        except (RuntimeError, ImportError):  # registered but unavailable (e.g. osqp not installed): its row says so
            pass
        names.append(member.value)
    return names


def prepare_ours(backend: str, value: bool):
    import optlayers as ol

    def prepare(cell: Cell):
        probe = ol.testing.random_qp(1, 3, 2, 0, seed=0)
        try:
            ol.solve_qp(*probe.data(), backend=backend)
        except RuntimeError as err:
            raise Skip(f"backend not available: {err}") from None

        def run(Q, q, G, h):
            if value:
                v, sol = ol.qp_value(Q, q, G, h, backend=backend, on_failure="nan", return_solution=True)
                return v, sol.x.detach(), int((~sol.ok).sum())
            sol = ol.solve_qp(Q, q, G, h, backend=backend, on_failure="nan", return_solution=True)
            return sol.x, sol.x, int((~sol.ok).sum())

        return run

    return prepare


def prepare_peer(con: Contestant):
    def prepare(cell: Cell):
        diag: list[str] = []
        spec = Spec(cell.B, 3 * cell.contacts, gm.GraspConfig(contacts=cell.contacts).m, 0)
        solve = con.prepare(spec, diag)
        A = b = None

        def run(Q, q, G, h):
            nonlocal A, b
            if A is None:
                A = Q.new_zeros(cell.B, 0, spec.n)
                b = Q.new_zeros(cell.B, 0)
            x = solve(Q, q, G.expand(cell.B, -1, -1), h.expand(cell.B, -1), A, b)
            failed = int(torch.isnan(x.detach()).any(-1).sum())
            for d in diag:  # e.g. moreau: "3/4800 not Solved (...)"
                head = d.split("/")[0]
                if head.isdigit():
                    failed = max(failed, int(head))
            return x, x.detach(), failed

        return run

    return prepare


def contestants(only: str | None) -> list[tuple[str, bool, bool, object]]:
    """(name, ours, value-row, prepare) in table order, filtered by ``--only``.

    One x row per dense backend; ``optlayers-osqp`` (the sparse OSQP route, minutes per cell on
    these batches) only when named in ``--only``; one ``optlayers-value`` row (backend "auto")."""
    rows = []
    named = [t.strip() for t in (only or "").split(",")]
    for be in our_backends():
        if be == "osqp" and "optlayers-osqp" not in named:
            continue
        rows.append((f"optlayers-{be}", True, False, prepare_ours(be, False)))
    rows.append(("optlayers-value", True, True, prepare_ours("auto", True)))
    for con in (_moreau("auto"), _proxsuite(parallel=False), _qpth()):
        rows.append((con.name, False, False, prepare_peer(con)))
    if only:
        toks = [t.strip() for t in only.split(",") if t.strip()]
        names = [r[0] for r in rows]
        for t in toks:
            if not any(n == t or n.startswith(t + "-") for n in names):
                raise SystemExit(f"--only: unknown contestant {t!r}; known: {', '.join(names)}")
        rows = [r for r in rows if any(r[0] == t or r[0].startswith(t + "-") for t in toks)]
    return rows


# ---------------------------------------------------------------------------------------------
# Timing one cell
# ---------------------------------------------------------------------------------------------

def _median(fn, first: float, args, device) -> tuple[float, int]:
    """Median of k further runs; a call slower than --target-s is measured once (its first run:
    for calls of seconds the first-call overhead is negligible, and slow peers stay affordable)."""
    if args.quick or first > args.target_s:
        return first, 1
    k = min(args.max_repeats, max(args.min_repeats, math.ceil(args.target_s / max(first, 1e-9))))
    times = []
    for _ in range(k):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), k


def _short(err: BaseException) -> str:
    msg = " ".join(str(err).split())
    return f"{type(err).__name__}: {msg}"[:160]


def run_cell(name, ours, value, prepare, cell: Cell, data, args) -> dict:
    row = {"name": name, "ours": ours, "value": value}
    Q0, q0, G, h, c = data
    device = Q0.device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            run = prepare(cell)
        except Skip as err:
            return {**row, "skipped": str(err)}
        except Exception as err:  # noqa: BLE001 - a failing contestant must not abort the run
            return {**row, "skipped": f"failed in setup: {_short(err)}"}
        Q = Q0.detach().clone().requires_grad_(True)
        q = q0.detach().clone().requires_grad_(True)
        weights = c[:, 0] if value else c

        def forward():
            return run(Q, q, G, h)

        def forward_backward():
            out, x, failed = run(Q, q, G, h)
            loss = (torch.nan_to_num(out) * weights).sum()
            gQ, gq = torch.autograd.grad(loss, [Q, q])
            return x, gq, failed

        try:
            if device.type != "cpu":
                # An untimed call first: a contestant's first GPU call loads its kernels (CUDA lazy
                # module loading) and creates library handles. On an H100 (2026-11-28) the native
                # row's first call took 0.7 s against 13 ms after it, and a first call slower than
                # --target-s used to be the measurement.
                forward_backward()
            sync(device)
            t0 = time.perf_counter()
            x, gq, failed = forward_backward()           # warm-up + accuracy run
            sync(device)
            first = time.perf_counter() - t0
            row["failed"] = failed
            ok = ~torch.isnan(x).any(-1)
            row["viol"] = float((x[ok] @ G.T - h).clamp_min(0).max()) if bool(ok.any()) else float("nan")
            row["_x"], row["_gq"] = x.detach(), gq.detach()
            row["fwdbwd_s"], row["fwdbwd_repeats"] = _median(forward_backward, first, args, device)
            sync(device)
            t0 = time.perf_counter()
            forward()
            sync(device)
            first = time.perf_counter() - t0
            row["fwd_s"], row["fwd_repeats"] = _median(forward, first, args, device)
        except Exception as err:  # noqa: BLE001
            return {**row, "skipped": f"failed: {_short(err)}"}
    return row


FEASIBLE = 1e-10  # a row's x counts for the best-objective reference where max(Gx − h) ≤ this


def compare_to_reference(results: list[dict], Q, q, G, h) -> None:
    """Reference-free accuracy: objective excess over the best feasible solution any row found.

    For each problem b, f*_b = min over rows of f(x_row,b) among rows with x feasible (≤ FEASIBLE).
    ``obj_excess`` = max_b (f(x_row,b) − f*_b) (Q ⪰ εI here, so ‖x − x*‖ ≤ √(2·excess/ε)).
    The reference row — among the x rows feasible to FEASIBLE, the smallest obj_excess — gives
    ``x_diff`` and ``dq_diff``.
    """

    def objective(x):
        return 0.5 * (x * (Q @ x.unsqueeze(-1)).squeeze(-1)).sum(-1) + (q * x).sum(-1)

    rows = [r for r in results if "_x" in r]
    if not rows:
        return
    fs = {}
    for r in rows:
        x = r["_x"]
        f = objective(torch.nan_to_num(x, nan=0.0))
        bad = torch.isnan(x).any(-1) | ((x @ G.T - h).amax(-1) > FEASIBLE)
        fs[r["name"]] = (f, bad)
    best = torch.stack([torch.where(bad, torch.full_like(f, float("inf")), f) for f, bad in fs.values()]).amin(0)
    for r in rows:
        f, bad = fs[r["name"]]
        ok = ~torch.isnan(r["_x"]).any(-1) & torch.isfinite(best)
        r["obj_excess"] = float((f[ok] - best[ok]).max()) if bool(ok.any()) else float("nan")
    xrows = [r for r in rows if not r["value"]]
    # Feasible rows first: an x that violates a constraint by more than FEASIBLE can undercut the
    # best feasible objective (moreau at K = 5: viol 5e-7, "excess" below the feasible rows').
    ref = min(xrows, key=lambda r: (not r.get("viol", float("inf")) <= FEASIBLE, r["obj_excess"], not r["ours"])) \
        if xrows else None
    if ref is not None:
        ref["reference"] = True
        rx, rg = ref["_x"], ref["_gq"]
        for r in rows:
            x, gq = r["_x"], r["_gq"]
            both = ~torch.isnan(x).any(-1) & ~torch.isnan(rx).any(-1)
            r["x_diff"] = float((x[both] - rx[both]).abs().max()) if bool(both.any()) else float("nan")
            if not r["value"]:
                r["dq_diff"] = float((gq[both] - rg[both]).norm() / rg[both].norm().clamp_min(1e-300))
    for r in results:
        r.pop("_x", None)
        r.pop("_gq", None)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def _ms(s: float) -> str:
    v = 1e3 * s
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _rate(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def table(block: dict) -> tuple[list[str], list[list[str]]]:
    head = ["contestant", "fwd ms", "fwd+bwd ms", "QPs/s", "grasps/s", "ratio", "obj excess", "x diff", "viol",
            "dq diff", "failed"]
    base = block["baseline_s"]
    rows = []
    for r in block["results"]:
        if "skipped" in r:
            rows.append([r["name"], f"skipped ({r['skipped']})"] + [""] * (len(head) - 2))
            continue
        t = r["fwdbwd_s"]
        ratio = "n/a" if base is None else f"{t / base:.2f}" if t / base < 100 else f"{t / base:.0f}"
        if r["value"]:
            ratio += " (value)"
        rows.append([
            r["name"], _ms(r["fwd_s"]), _ms(t), _rate(block["B"] / t), _rate(block["grasps"] / t), ratio,
            f"{r['obj_excess']:.1e}" if "obj_excess" in r else "—",
            "—" if r.get("x_diff") is None else f"{r['x_diff']:.1e}",
            f"{r['viol']:.1e}",
            "—" if r.get("dq_diff") is None else f"{r['dq_diff']:.1e}",
            str(r["failed"]),
        ])
    return head, rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contacts", default="4,5", help="K values (n = 3K, m = 10K + 1); default 4,5")
    ap.add_argument("--batches", default="4800,48000", help="QPs per batch (multiples of 6); default 4800,48000")
    ap.add_argument("--only", help="comma-separated contestants (a name selects its name-* variants)")
    ap.add_argument("--object", default="box", choices=sorted(gm.OBJECTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="CI smoke: B = 480 unless --batches, one run per cell")
    ap.add_argument("--max-cell-s", type=float, default=30.0,
                    help="skip a cell predicted (from the contestant's smaller batch) to take longer than this")
    ap.add_argument("--target-s", type=float, default=1.0, help="measured time per cell to aim for")
    ap.add_argument("--min-repeats", type=int, default=1)
    ap.add_argument("--max-repeats", type=int, default=20)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv[1:])
    if args.quick and "--batches" not in " ".join(argv):
        args.batches = "480"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.contacts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    if any(b % WRENCHES for b in batches):
        ap.error(f"--batches must be multiples of {WRENCHES} (grasps × wrenches)")
    rows = contestants(args.only)
    meta = metadata(argv)
    md = args.markdown
    bullet = "- " if md else "  "
    print(("## " if md else "") + "Grasp contact-force QPs: optlayers vs. peers")
    print(f"{bullet}command: {meta['command']}")
    print(f"{bullet}machine: {meta['machine']}; load average {meta['loadavg']}; device {args.device}")
    th = meta["threads"]
    print(f"{bullet}threads: torch {th['torch_intra']}, os.cpu_count() {th['cpu_count']}; "
          + ", ".join(f"{k}={v}" for k, v in th["env"].items()))
    print(f"{bullet}versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()
                                            if v != "not installed" or k in ("moreau", "proxsuite", "qpth")))
    print(f"{bullet}timing: " + ("quick (1 run per cell)" if args.quick else
          f"median of k runs after a warm-up (k from target {args.target_s:g} s, {args.min_repeats}..{args.max_repeats})")
          + f"; grads w.r.t. Q and q; {WRENCHES} wrenches per grasp; object {args.object}; float64\n")

    blocks = []
    for K in ks:
        history: dict[str, tuple[int, float]] = {}
        for B in sorted(batches):
            cell = Cell(K, B)
            data = grasp_batch(cell, args.seed, args.object, args.device)
            results = []
            for name, ours, value, prepare in rows:
                prev = history.get(name)
                if prev is not None:
                    predicted = 2.5 * prev[1] * B / prev[0]  # warm-up + fwd+bwd + fwd, linear in B
                    if predicted > args.max_cell_s:
                        results.append({"name": name, "ours": ours, "value": value,
                                        "skipped": f"predicted {predicted:.0f} s > --max-cell-s {args.max_cell_s:g}"})
                        continue
                r = run_cell(name, ours, value, prepare, cell, data, args)
                if "skipped" not in r:
                    history[name] = (B, r["fwdbwd_s"])
                results.append(r)
            compare_to_reference(results, *data[:4])
            xrows = [r for r in results if r["ours"] and not r["value"] and "skipped" not in r]
            base = min((r["fwdbwd_s"] for r in xrows), default=None)
            n, m = 3 * K, gm.GraspConfig(contacts=K).m
            ref = next((r["name"] for r in results if r.get("reference")), None)
            block = {"K": K, "n": n, "m": m, "B": B, "grasps": cell.grasps, "baseline_s": base,
                     "reference": ref, "results": results}
            blocks.append(block)
            title = f"K={K} (n={n}, m={m}), B={B:,} QPs = {cell.grasps:,} grasps × {WRENCHES} wrenches"
            print(("### " if md else "== ") + title + ("" if md else " =="))
            best = min(xrows, key=lambda r: r["fwdbwd_s"])["name"] if xrows else "none"
            print(f"ratio = fwd+bwd time / {best}; obj excess vs the best feasible objective found per problem; "
                  f"x diff, dq diff vs the most accurate row ({block['reference']})\n")
            head, body = table(block)
            print(render_table(head, body, md))
            print()
            if xrows:
                peers = [r for r in results if not r["ours"] and "skipped" not in r]
                slowest_ratio = min((r["fwdbwd_s"] / base for r in peers), default=None)
                verdict = f"best optlayers fwd+bwd {1e3 * base:.0f} ms"
                if B == 4800 and K == 4:
                    verdict += f" (target < 100 ms: {'met' if base < 0.1 else 'NOT met'})"
                if slowest_ratio is not None:
                    verdict += f"; closest peer is {slowest_ratio:.2f}× slower (target ≥ 5×: {'met' if slowest_ratio >= 5 else 'NOT met'})"
                print(("- " if md else "  ") + verdict + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "args": vars(args), "cells": blocks}, f, indent=2)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
