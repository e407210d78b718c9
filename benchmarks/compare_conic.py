"""Conic layers: optlayers.CvxpyLayer vs. cvxpylayers on the same problems, in the same run.

For each problem and batch size, every contestant gets the same parameter tensors (float64) and
is timed on

    forward            layer(*params)
    forward+backward   layer(*params), then <W, x>.backward()

(median wall-clock time of ``--repeats`` calls after one warm-up call on another batch, and the
median CPU time of the process over the same calls — all threads summed, so it measures total
work and is far less sensitive than wall-clock time to other jobs on a shared machine; the
canonicalization at construction is timed separately). Accuracy is measured on the first call:

    x err     max |x − x_ref| over the batch, x_ref from CVXPY + Clarabel at its tightest
              settings (1e-10) — the oracle the issue asks for — and, in brackets, from
              CVXPY + SCS at eps=1e-12 (sharper: Clarabel itself is off by up to ~1e-6 on
              SOC problems, see docs/conic.md);
    grad err  max |∇θ − ∇θ_ref| / max |∇θ_ref| over all parameters, ∇θ_ref from diffcp
              (``solve_and_derivative`` with SCS at eps=1e-12, dense mode) through CVXPY's
              canonicalization for diffcp and its parameter Jacobian — independent of both
              contestants' derivative code.

Contestants:
    optlayers            ol.CvxpyLayer defaults (solver="auto": the "qp" route — one batched
                         ol.solve_qp call, its KKT backward — for LP/QP programs, else SCS at
                         eps 1e-7 + Newton refinement and the dense reduced derivative)
    optlayers-scs        ol.CvxpyLayer(solver="scs") (only on LP/QP problems, where it differs)
    optlayers-clarabel   ol.CvxpyLayer(solver="clarabel") (interior point + Newton refinement)
    cvxpylayers          cvxpylayers.torch.CvxpyLayer defaults (diffcp + SCS, diffcp defaults)
    cvxpylayers-tight    same, solver_args eps=1e-9, max_iters=1e5, mode="dense" (matched accuracy)
    cvxpylayers-moreau   solver="MOREAU" (moreau's batched interior point), where it applies

Problems:
    portfolio            mean-std portfolio SOCP (n=50 assets, 10 factors): μ batched, F shared
    portfolio-allbatched the same with F batched too (A changes per problem: no factorization reuse)
    qp-BxNxMxP           dense QP ½‖Lx‖² + qᵀx, Gx ≤ h, Ax = b, every datum batched (the QP sizes
                         of the QP-layer benchmark: B=32, n=20, m=20, p=5 and B=128, n=50, m=50, p=10)

The machine may be shared: compare ratios within one run, not absolute times across runs.

    python benchmarks/compare_conic.py                      # everything (a few minutes)
    python benchmarks/compare_conic.py --quick              # CI smoke: tiny problems, 1 repeat
    python benchmarks/compare_conic.py --problems portfolio --batches 64 --repeats 7
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from optlayers._src.conic import problems  # noqa: E402


@dataclasses.dataclass
class Row:
    problem: str
    batch: int
    contestant: str
    construct_ms: float
    fwd_ms: float
    fwdbwd_ms: float
    fwdbwd_cpu_ms: float
    x_err: float
    x_err_scs: float
    grad_err: float
    note: str = ""


def _cvxpy_reference(case, values, batched, B, solver: str):
    import cvxpy as cp

    xs = []
    for i in range(B):
        for p, v, b in zip(case.parameters, values, batched):
            p.value = v[i] if b else v
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if solver == "CLARABEL":
                case.problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=500)
            else:
                case.problem.solve(solver=cp.SCS, eps=1e-12, max_iters=300_000)
        xs.append(np.array(case.variables[0].value))
    return np.stack(xs)


def _diffcp_gradients(case, values, batched, B, W):
    """∇θ <W, x> per parameter (summed over the batch for shared ones), via diffcp at 1e-12."""
    import cvxpy as cp
    import diffcp
    from cvxpy.reductions.solvers.conic_solvers.scs_conif import dims_to_solver_dict

    grads = [np.zeros_like(v) for v in values]
    var = case.variables[0]
    for i in range(B):
        for p, v, b in zip(case.parameters, values, batched):
            p.value = v[i] if b else v
        data, chain, _ = case.problem.get_problem_data(solver="DIFFCP")
        prog = data[cp.settings.PARAM_PROB]
        c, _, A, bvec = prog.apply_parameters()
        x, y, s, _, adjoint = diffcp.solve_and_derivative(
            -A, bvec, c, dims_to_solver_dict(data["dims"]), eps=1e-12, max_iters=300_000, mode="dense")
        vmap = {k: v[0] for k, v in chain.compose_var_id_map().items()}
        col = prog.var_id_to_col[vmap.get(var.id, var.id)]
        dx = np.zeros_like(x)
        dx[col:col + var.size] = W[i].ravel(order="F")
        dA, db, dc = adjoint(dx, np.zeros_like(y), np.zeros_like(s))
        g = prog.apply_param_jac(dc, -dA, db)
        pmap = {k: v[0] for k, v in chain.compose_param_id_map().items()}
        for k, (p, b) in enumerate(zip(case.parameters, batched)):
            gk = np.asarray(g[pmap.get(p.id, p.id)]).reshape(p.shape)
            if b:
                grads[k][i] = gk
            else:
                grads[k] += gk
    return grads


def _contestants(case, quick: bool, qp_like: bool) -> list[tuple[str, Callable]]:
    """(name, build) pairs; build() -> (layer_call(params) -> x, note) or raises ImportError."""
    import optlayers as ol

    out = []

    def ours(**kw):
        def build():
            layer = ol.CvxpyLayer(case.problem, case.parameters, case.variables, **kw)
            return (lambda ps: layer(*ps)[0]), ""
        return build

    out.append(("optlayers", ours()))
    if qp_like:  # (decided by name: constructing a layer here would warm CVXPY's cache)
        out.append(("optlayers-scs", ours(solver="scs")))
    out.append(("optlayers-clarabel", ours(solver="clarabel")))

    def theirs(solver=None, solver_args=None, note=""):
        def build():
            from cvxpylayers.torch import CvxpyLayer

            layer = CvxpyLayer(case.problem, parameters=case.parameters, variables=case.variables, solver=solver)

            def call(ps):
                args = dict(solver_args or {})
                if not torch.is_grad_enabled():
                    args.pop("mode", None)  # diffcp's solve-only path takes no derivative mode
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return layer(*ps, solver_args=args)[0]
            return call, note
        return build

    out.append(("cvxpylayers", theirs(note="diffcp + SCS defaults")))
    out.append(("cvxpylayers-tight", theirs(solver_args=dict(eps=1e-9, max_iters=100_000, mode="dense"),
                                            note="eps=1e-9, mode=dense")))
    out.append(("cvxpylayers-moreau", theirs(solver="MOREAU", note="moreau IPM")))
    return out


def _time(fn, repeats: int, warmup) -> tuple[float, float]:
    """Median wall-clock and CPU (process, all threads) milliseconds of ``fn()``, after one
    ``warmup()`` call (on a different batch, see ``run_case``)."""
    warmup()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def run_case(name: str, case, batched, B: int, repeats: int, quick: bool, only: list[str] | None) -> list[Row]:
    rng = np.random.default_rng(0)
    case.batched = batched
    values = case.sample(rng, batch=B)
    # The warm-up call of each timing sees another batch (batched parameters resampled, shared
    # ones the same), as in a training loop: no contestant is timed on data it has just solved.
    fresh = case.sample(rng, batch=B)
    warm_values = [f if b else v for f, v, b in zip(fresh, values, batched)]
    W = rng.normal(size=(B,) + tuple(case.variables[0].shape))
    x_ref = _cvxpy_reference(case, values, batched, B, "CLARABEL")
    x_ref_scs = _cvxpy_reference(case, values, batched, B, "SCS")
    g_ref = _diffcp_gradients(case, values, batched, B, W)
    g_scale = max(float(np.abs(g).max()) for g in g_ref)
    rows = []
    for cname, build in _contestants(case, quick, qp_like=name.startswith("qp-")):
        if only and cname not in only:
            continue
        try:
            t0 = time.perf_counter()
            call, note = build()
            construct = 1e3 * (time.perf_counter() - t0)
            params = [torch.tensor(v, requires_grad=True) for v in values]
            warm_params = [torch.tensor(v, requires_grad=True) for v in warm_values]
            Wt = torch.tensor(W)

            def fwd(ps=params):
                with torch.no_grad():
                    return call(ps)

            def fwdbwd(ps=params):
                for p in ps:
                    p.grad = None
                x = call(ps)
                (x * Wt).sum().backward()
                return x

            x = fwdbwd().detach().numpy()
            grads = [p.grad.numpy() for p in params]
            x_err = float(np.abs(x - x_ref).max())
            x_err_scs = float(np.abs(x - x_ref_scs).max())
            g_err = max(float(np.abs(g - r).max()) for g, r in zip(grads, g_ref)) / g_scale
            t_f, _ = _time(fwd, repeats, lambda: fwd(warm_params))
            t_fb, c_fb = _time(fwdbwd, repeats, lambda: fwdbwd(warm_params))
            rows.append(Row(name, B, cname, construct, t_f, t_fb, c_fb, x_err, x_err_scs, g_err, note))
        except Exception as err:  # a peer that cannot run this problem only loses its row
            nan = float("nan")
            rows.append(Row(name, B, cname, nan, nan, nan, nan, nan, nan, nan,
                            f"skipped: {type(err).__name__}: {str(err)[:80]}"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="portfolio,portfolio-allbatched,qp-32x20x20x5,qp-128x50x50x10")
    ap.add_argument("--batches", default="1,64", help="batch sizes for the portfolio problems")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default=None, help="comma-separated contestant names")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for everyone")
    ap.add_argument("--quick", action="store_true", help="CI smoke: small problems, one repeat")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = args.only.split(",") if args.only else None
    rows: list[Row] = []
    names = args.problems.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    repeats = 1 if args.quick else args.repeats
    for name in names:
        if name.startswith("portfolio"):
            n, k = (10, 3) if args.quick else (50, 10)
            allb = name == "portfolio-allbatched"
            for B in ([2] if args.quick else batches):
                case = problems.portfolio(n=n, k=k)
                rows += run_case(name, case, (True, allb), B, repeats, args.quick, only)
        elif name.startswith("qp-"):
            B, n, m, p = (int(t) for t in name[3:].split("x"))
            if args.quick:
                B, n, m, p = 2, 5, 5, 2
            case = problems.dense_qp(n, m, p)
            rows += run_case(name, case, (True,) * 6, B, repeats, args.quick, only)
        else:
            raise SystemExit(f"unknown problem {name!r}")
    _print(rows, args.markdown)
    return 0


def _print(rows: list[Row], markdown: bool) -> None:
    header = ["problem", "B", "contestant", "construct ms", "fwd ms", "fwd+bwd ms", "fwd+bwd CPU ms",
              "vs ours (wall / CPU)", "x err (Clarabel) [SCS-1e-12]", "grad err (diffcp)", "note"]
    ours = {(r.problem, r.batch): r for r in rows if r.contestant == "optlayers"}
    lines = []
    for r in rows:
        base = ours.get((r.problem, r.batch))
        ratio = (f"{r.fwdbwd_ms / base.fwdbwd_ms:.2f}x / {r.fwdbwd_cpu_ms / base.fwdbwd_cpu_ms:.2f}x"
                 if base is not None else "n/a")
        lines.append([r.problem, str(r.batch), r.contestant, f"{r.construct_ms:.0f}", f"{r.fwd_ms:.1f}",
                      f"{r.fwdbwd_ms:.1f}", f"{r.fwdbwd_cpu_ms:.1f}", ratio,
                      f"{r.x_err:.1e} [{r.x_err_scs:.1e}]", f"{r.grad_err:.1e}", r.note])
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} torch threads, os.cpu_count()={os.cpu_count()}, "
          f"load average {os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}")


if __name__ == "__main__":
    raise SystemExit(main())
