"""Large sparse QPs, forward and forward+backward: optlayers' OSQP layer vs. osqp's own torch
module and cvxpylayers, in the same run.

Problem (per size n, seeded, identical in every contestant):

    minimize ½ xᵀPx + qᵀx   s.t.   l ≤ Ax ≤ u,        m = n/2 two-sided rows

with P = MᵀM + 0.1·I (M: 3 random entries per row within a band of ±40 columns of the
diagonal, ≈ 7 nonzeros per row of P) and A with 10 random entries per row in such a band;
l, u bracket A x₀ of a random x₀ with random widths, so about half the rows end up active.
Banded-random rather than uniformly random: uniformly random sparse rows give KKT fill-in that
makes every direct method (OSQP's own set-up included) cubic, which is not what sparse users
have (MPC, PDE-constrained, lasso-type problems are banded or nearly so).

Measured per contestant, each in its own subprocess (so a crash, a timeout or an out-of-memory
only costs its row, and peak memory is the process's own):

* ``fwd``: one forward call (median of ``--reps``); ``fwd+bwd``: forward plus the backward of
  L = wᵀx with respect to every input (P and A values, q, l, u), w fixed random.
* ``peak MB``: peak resident memory of the first fwd+bwd call above the process's resident
  memory before it (Linux ``/proc/self/clear_refs`` + ``VmHWM``), i.e. what the call itself
  needs; measured on the first call, before any timing run has grown the allocator's pools.
* ``x err``: ‖x − x_ref‖∞ / max(1, ‖x_ref‖∞) against a tight Clarabel solve (1e-13 tolerances).
  Clarabel is itself accurate to only ~1e-9 relative at these sizes, so two more columns judge
  the solutions without it: ``obj − obj_ref`` (objective minus Clarabel's, relative; negative =
  better than the reference) and ``max viol`` (largest bound violation of Ax).
* ``∇q err vs FD``: max over 2 random directions v of |⟨∇q, v⟩ − FD| / |FD|, where FD is a central
  difference (h = 1e-6) of wᵀx(q + hv) computed with optlayers' polished forward — an exact KKT
  point, as the two columns above show — so the check does not involve anyone's backward.

Contestants:

* ``optlayers`` — ``ol.solve_sparse_qp`` on torch sparse tensors, a *fresh* solver cache per call
  (cold: OSQP set-up + solve + active-set polish; backward reuses the polish's factorization).
* ``optlayers-warm`` — the same call on a cache already holding this pattern (values updated,
  warm start from the solution of a 0.1%-perturbed q): the per-step cost in a training loop.
* ``optlayers-nopolish`` — cold, ``polish=False``: OSQP's solution as it is (the forward then
  costs what OSQP costs; the backward factors the active-set KKT matrix itself).
* ``osqp.nn.torch`` — ``osqp.nn.torch.OSQP`` (osqp's own differentiable module; it sets up its
  solvers on every call; backward via OSQP's ``adjoint_derivative_compute``). P is passed with
  both triangles: with only the upper one its backward fails (shape mismatch in dP).
* ``cvxpylayers`` — ``CvxpyLayer`` with parameters q, l, u (P and A constants: ½xᵀPx with P a
  parameter is not DPP), default solver (diffcp), its default settings.

Both OSQP-based contestants run OSQP at eps_abs = eps_rel = ``--eps`` (default 1e-6).

Run:  python benchmarks/compare_sparse.py            (n = 1,000 / 5,000 / 20,000; ~15 min)
      python benchmarks/compare_sparse.py --quick    (n = 300 / 1,000, a cap of 60 s)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

# Benchmark the checkout this file lives in (not whatever optlayers is installed).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CONTESTANTS = ("optlayers", "optlayers-warm", "optlayers-nopolish", "osqp.nn.torch", "cvxpylayers")


# --------------------------------------------------------------------------------------------
# Problem
# --------------------------------------------------------------------------------------------

def problem(n: int, seed: int = 0, band: int = 40):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    m = n // 2

    def band_random(rows: int, cols: int, k: int):
        r = np.repeat(np.arange(rows), k)
        center = (np.arange(rows) * cols // rows).repeat(k)
        c = np.clip(center + rng.integers(-band, band + 1, rows * k), 0, cols - 1)
        return sp.csc_matrix((rng.standard_normal(rows * k), (r, c)), shape=(rows, cols))

    M = band_random(n, n, 3)
    P = (M.T @ M + 0.1 * sp.eye(n)).tocsr()
    A = band_random(m, n, 10).tocsr()
    A.sum_duplicates()
    x0 = rng.standard_normal(n)
    z0 = A @ x0
    l = z0 - rng.uniform(0, 1, m)
    u = z0 + rng.uniform(0, 1, m)
    q = 3 * rng.standard_normal(n)
    w = rng.standard_normal(n)
    return P, q, A, l, u, w


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------

def _reset_peak() -> int:
    """Reset the peak-RSS counter (Linux) and return the current RSS in bytes (0 if unknown)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS") * 1024
    except OSError:
        return 0


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _peak_mb(base: int) -> float | None:
    if not base:
        return None
    return max(0.0, (_status_kb("VmHWM") * 1024 - base) / 2**20)


def _measure(call, reps: int, before=None):
    """(peak MB of a first fwd+bwd call, median fwd s, median fwd+bwd s, last fwd+bwd result).

    ``call(backward)`` runs one forward (and backward); ``before()`` runs untimed before each."""
    before = before or (lambda: None)
    before()
    base = _reset_peak()
    call(True)
    peak = _peak_mb(base)
    fwd, fb = [], []
    for _ in range(reps):
        before()
        t = time.perf_counter()
        call(False)
        fwd.append(time.perf_counter() - t)
    for _ in range(reps):
        before()
        t = time.perf_counter()
        out = call(True)
        fb.append(time.perf_counter() - t)
    return peak, float(np.median(fwd)), float(np.median(fb)), out


def reference(n: int, seed: int):
    import clarabel
    import scipy.sparse as sp

    P, q, A, l, u, _ = problem(n, seed)
    m = A.shape[0]
    Ac = sp.vstack([A, -A]).tocsc()
    b = np.concatenate([u, -l])
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    # Tighter than Clarabel's defaults, with extra iterative refinement: at 1e-10 its solutions
    # of these (mostly active) problems are off by ~1e-8 relative; at 1e-13 they agree with an
    # exact KKT point to ~1e-11.
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-13
    settings.tol_ktratio = 1e-10
    settings.max_iter = 500
    settings.iterative_refinement_reltol = settings.iterative_refinement_abstol = 1e-15
    settings.iterative_refinement_max_iter = 50
    t = time.perf_counter()
    sol = clarabel.DefaultSolver(sp.triu(P).tocsc(), q, Ac, b, [clarabel.NonnegativeConeT(2 * m)], settings).solve()
    return np.asarray(sol.x), time.perf_counter() - t, str(sol.status)


def _torch_inputs(n, seed, P_full_csc_order=False):
    import torch

    P, q, A, l, u, w = problem(n, seed)
    t = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return P, A, t(q), t(l), t(u), torch.tensor(w)


def run_optlayers(n, seed, eps, reps, warm: bool, polish: bool = True):
    import torch

    import optlayers as ol

    P, A, q0, l0, u0, w = _torch_inputs(n, seed)
    crow_P, col_P = torch.tensor(P.indptr), torch.tensor(P.indices)
    crow_A, col_A = torch.tensor(A.indptr), torch.tensor(A.indices)
    warm_cache = ol.sparse.SolverCache() if warm else None

    def call(backward: bool, perturb: float = 0.0):
        Pv = torch.tensor(P.data, requires_grad=True)
        Av = torch.tensor(A.data, requires_grad=True)
        q, l, u = (t.detach().clone().requires_grad_() for t in (q0, l0, u0))
        qq = q * (1 + perturb) if perturb else q
        cache = warm_cache if warm else ol.sparse.SolverCache()
        sol = ol.solve_sparse_qp(
            ol.sparse.csr_tensor(crow_P, col_P, Pv, P.shape), qq,
            ol.sparse.csr_tensor(crow_A, col_A, Av, A.shape), l, u,
            eps_abs=eps, eps_rel=eps, polish=polish, cache=cache, return_solution=True,
        )
        if backward:
            (w * sol.x).sum().backward()
        return sol, q

    if warm:
        call(False, perturb=1e-3)  # fills the cache (set-up); before each call: a nearby solve
    peak, fwd, fb, (sol, q) = _measure(call, reps, before=(lambda: call(False, perturb=1e-3)) if warm else None)
    info = {"iters": int(sol.iterations), "polished": bool(sol.polished)}
    return sol.x.detach().numpy(), q.grad.numpy(), fwd, fb, peak, info


def run_osqp_nn(n, seed, eps, reps):
    import torch
    from osqp.nn.torch import OSQP

    P, A, q0, l0, u0, w = _torch_inputs(n, seed)
    Pc, Ac = P.tocsc().tocoo(), A.tocsc().tocoo()  # values in CSC order, as its backward returns them
    module = OSQP((Pc.row, Pc.col), P.shape, (Ac.row, Ac.col), A.shape, eps_abs=eps, eps_rel=eps, max_iter=100_000)

    def call(backward: bool):
        Pv = torch.tensor(Pc.data, requires_grad=True)
        Av = torch.tensor(Ac.data, requires_grad=True)
        q, l, u = (t.detach().clone().requires_grad_() for t in (q0, l0, u0))
        x = module(Pv, q, Av, l, u)
        if backward:
            (w * x).sum().backward()
        return x, q

    peak, fwd, fb, (x, q) = _measure(call, reps)
    info = {}
    g = q.grad.numpy()
    if not np.isfinite(g).all():
        info["note"] = f"{int((~np.isfinite(g)).sum())} non-finite entries in ∇q"
    return x.detach().numpy().reshape(-1), g, fwd, fb, peak, info


def run_cvxpylayers(n, seed, eps, reps):
    import cvxpy as cp
    import torch
    from cvxpylayers.torch import CvxpyLayer

    P, A, q0, l0, u0, w = _torch_inputs(n, seed)
    x = cp.Variable(n)
    q_, l_, u_ = cp.Parameter(n), cp.Parameter(A.shape[0]), cp.Parameter(A.shape[0])
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q_ @ x), [A @ x <= u_, A @ x >= l_])
    t_setup = time.perf_counter()
    layer = CvxpyLayer(prob, parameters=[q_, l_, u_], variables=[x])
    t_setup = time.perf_counter() - t_setup

    def call(backward: bool):
        q, l, u = (t.detach().clone().requires_grad_() for t in (q0, l0, u0))
        (xs,) = layer(q, l, u)
        if backward:
            (w * xs).sum().backward()
        return xs, q

    peak, fwd, fb, (xs, q) = _measure(call, reps)
    return (xs.detach().numpy(), q.grad.numpy(), fwd, fb, peak,
            {"note": f"layer construction {t_setup:.1f} s (not timed)"})


def worker(args) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    if args.mem_cap_gb:
        import resource

        cap = int(args.mem_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = {"name": args.worker, "n": args.n}
    if args.worker == "reference":
        x, secs, status = reference(args.n, args.seed)
        np.save(os.path.join(args.refdir, f"x_ref_{args.n}.npy"), x)
        out.update(seconds=secs, status=status)
    else:
        fn = {
            "optlayers": lambda: run_optlayers(args.n, args.seed, args.eps, args.reps, warm=False),
            "optlayers-warm": lambda: run_optlayers(args.n, args.seed, args.eps, args.reps, warm=True),
            "optlayers-nopolish": lambda: run_optlayers(args.n, args.seed, args.eps, args.reps, warm=False, polish=False),
            "osqp.nn.torch": lambda: run_osqp_nn(args.n, args.seed, args.eps, args.reps),
            "cvxpylayers": lambda: run_cvxpylayers(args.n, args.seed, args.eps, args.reps),
        }[args.worker]
        x, g, fwd, fb, peak, info = fn()
        np.save(os.path.join(args.refdir, f"grad_q_{args.worker}_{args.n}.npy"), g)
        x_ref = np.load(os.path.join(args.refdir, f"x_ref_{args.n}.npy"))
        err = float(np.abs(x - x_ref).max() / max(1.0, np.abs(x_ref).max()))
        P, q, A, l, u, _ = problem(args.n, args.seed)
        f = lambda v: 0.5 * v @ (P @ v) + q @ v  # noqa: E731
        z = A @ x
        gap = float((f(x) - f(x_ref)) / max(1.0, abs(f(x_ref))))
        viol = float(np.maximum(np.maximum(l - z, z - u), 0.0).max())
        out.update(fwd_s=fwd, fwdbwd_s=fb, peak_mb=peak, x_err=err, obj_gap=gap, viol=viol, **info)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def spawn(name, n, args, refdir) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--n", str(n), "--seed", str(args.seed),
           "--eps", str(args.eps), "--reps", str(reps_for(n, args)), "--refdir", refdir,
           "--mem-cap-gb", str(args.mem_cap_gb)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cap)
    except subprocess.TimeoutExpired:
        return {"name": name, "n": n, "skipped": f"did not finish within the {args.cap:.0f} s cap"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["wall_s"] = time.perf_counter() - t
            return res
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    if "MemoryError" in proc.stderr or "std::bad_alloc" in proc.stderr or "Cannot allocate" in proc.stderr:
        tail = f"out of memory (cap {args.mem_cap_gb:g} GiB): {tail}"
    return {"name": name, "n": n, "skipped": f"failed (exit {proc.returncode}): {tail[:160]}"}


def reps_for(n, args) -> int:
    return args.reps if args.reps else (3 if n <= 5000 else 1)


def fmt_s(v) -> str:
    return "—" if v is None else (f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2f} s")


def fd_directions(n: int, seed: int, k: int = 2, h: float = 1e-6):
    """Central differences of wᵀx(q) along k random directions v, computed with optlayers'
    polished forward (an exact KKT point; see the ``obj gap``/``viol`` columns). Returns (V, d)."""
    import warnings

    import torch

    import optlayers as ol

    warnings.filterwarnings("ignore")
    P, q, A, l, u, w = problem(n, seed)
    Pt = torch.sparse_csr_tensor(torch.tensor(P.indptr), torch.tensor(P.indices), torch.tensor(P.data), P.shape)
    At = torch.sparse_csr_tensor(torch.tensor(A.indptr), torch.tensor(A.indices), torch.tensor(A.data), A.shape)
    cache = ol.sparse.SolverCache()
    f = lambda qv: float(w @ ol.solve_sparse_qp(Pt, torch.tensor(qv), At, torch.tensor(l), torch.tensor(u), cache=cache).numpy())  # noqa: E731
    rng = np.random.default_rng(seed + 1)
    V = rng.standard_normal((k, n))
    return V, np.array([(f(q + h * v) - f(q - h * v)) / (2 * h) for v in V])


def table(rows, refdir, n, ours_fb, fd=None) -> list[str]:
    head = ["method", "fwd", "fwd+bwd", "fwd+bwd vs optlayers", "peak MB (fwd+bwd)", "x err vs Clarabel",
            "obj − obj_ref", "max viol", "∇q err vs FD", "notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['name']} | — | — | — | — | — | — | — | — | {r['skipped']} |")
            continue
        gpath = os.path.join(refdir, f"grad_q_{r['name']}_{n}.npy")
        gd = "—"
        if fd is not None and os.path.exists(gpath):
            g = np.load(gpath)
            V, d = fd
            gd = f"{float(np.max(np.abs(V @ g - d) / np.abs(d))):.1e}" if np.isfinite(g).all() else "non-finite"
        ratio = "—"
        if ours_fb and r["name"] != "optlayers":
            ratio = f"{r['fwdbwd_s'] / ours_fb:.2f}× the time" if r["fwdbwd_s"] >= ours_fb else f"{ours_fb / r['fwdbwd_s']:.2f}× faster"
        notes = []
        if "iters" in r:
            notes.append(f"{r['iters']} ADMM iters, polished={r['polished']}")
        if r.get("note"):
            notes.append(r["note"])
        peak = "—" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        out.append(f"| {r['name']} | {fmt_s(r['fwd_s'])} | {fmt_s(r['fwdbwd_s'])} | {ratio} | {peak} | "
                   f"{r['x_err']:.1e} | {r['obj_gap']:.1e} | {r['viol']:.1e} | {gd} | {'; '.join(notes)} |")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 300, 1000 and a 60 s cap")
    parser.add_argument("--sizes", default=None, help="comma-separated n (default 1000,5000,20000)")
    parser.add_argument("--only", default=None, help="comma-separated contestants (default all)")
    parser.add_argument("--cap", type=float, default=None, help="seconds per contestant and size (default 300, quick 60)")
    parser.add_argument("--eps", type=float, default=1e-6, help="OSQP eps_abs = eps_rel for both OSQP contestants")
    parser.add_argument("--reps", type=int, default=0, help="timed repetitions (default 3 for n ≤ 5000, else 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mem-cap-gb", type=float, default=16.0, help="address-space cap per contestant process")
    parser.add_argument("--json", default=None, help="write all results to this file")
    parser.add_argument("--no-fd", action="store_true", help="skip the finite-difference gradient check")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--refdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([300, 1000] if args.quick else [1000, 5000, 20000])
    if args.cap is None:
        args.cap = 60.0 if args.quick else 300.0
    names = args.only.split(",") if args.only else list(CONTESTANTS)
    unknown = set(names) - set(CONTESTANTS)
    if unknown:
        parser.error(f"unknown contestants {sorted(unknown)}; choose from {CONTESTANTS}")

    import importlib.metadata as md

    versions = []
    for pkg in ("optlayers", "torch", "osqp", "qdldl", "cvxpylayers", "diffcp", "clarabel", "scipy"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} (not installed)")
    print(f"# compare_sparse: {' '.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {', '.join(versions)}")
    print(f"# OSQP eps_abs = eps_rel = {args.eps:g}; time cap {args.cap:g} s, memory cap {args.mem_cap_gb:g} GiB per contestant")
    results = []
    with tempfile.TemporaryDirectory() as refdir:
        for n in sizes:
            ref = spawn("reference", n, argparse.Namespace(**{**vars(args), "cap": max(args.cap, 600.0)}), refdir)
            if "skipped" in ref:
                print(f"\n## n = {n}: reference solve failed: {ref['skipped']}")
                continue
            P, q, A, *_ = problem(n, args.seed)
            print(f"\n## n = {n}, m = {A.shape[0]}: nnz(P) = {P.nnz} ({P.nnz / n:.1f}/row), nnz(A) = {A.nnz} "
                  f"({A.nnz / A.shape[0]:.1f}/row); Clarabel reference {ref['seconds']:.2f} s ({ref['status']})\n")
            rows = [spawn(name, n, args, refdir) for name in names]
            ours = next((r for r in rows if r["name"] == "optlayers" and "skipped" not in r), None)
            fd = fd_directions(n, args.seed) if not args.no_fd else None
            for line in table(rows, refdir, n, ours["fwdbwd_s"] if ours else None, fd):
                print(line)
            sys.stdout.flush()
            results.append({"n": n, "m": int(A.shape[0]), "nnz_P": int(P.nnz), "nnz_A": int(A.nnz), "reference": ref, "results": rows})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "sizes": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
