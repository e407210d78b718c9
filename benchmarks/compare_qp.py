"""Dense batched QP layers: optlayers vs. the installed peers, in the same run.

Problem (B problems per batch, every input batched, float64, CPU):

    minimize ½ xᵀQx + qᵀx   s.t.   Ax = b,   Gx ≤ h

drawn by ``optlayers.testing.random_qp(B, n, m, p, seed=...)``, which plants a strictly
complementary solution (x*, λ*, ν*) with a known active set. Sizes (issue #2):

    0: B=1,   n=10,  m=10,  p=3        2: B=128, n=50,  m=50,  p=10
    1: B=32,  n=20,  m=20,  p=5        3: B=8,   n=200, m=200, p=50

For each contestant and size we report
    fwd ms       median wall time of one forward call (inputs require grad: a training forward);
    fwd+bwd ms   median of forward + backward of L = Σ c ⊙ x (c fixed, seeded) w.r.t. every input
                 the contestant differentiates (listed in the "grads" column);
    ratio        contestant time / optlayers time (> 1: optlayers is faster); the optlayers row
                 used is named under the table title (default: fastest optlayers fwd+bwd);
    x err        max |x − x*| against the planted solution;
    grad err     ‖g − g_ref‖ / ‖g_ref‖ (Frobenius, whole batch), for q and h and the worst over
                 all inputs the contestant returns. dQ is compared through its symmetric part
                 ½(dQ + dQᵀ): Q is symmetric, so only that part is defined independently of how a
                 solver reads Q (qpth/optlayers return it symmetrized, others return u xᵀ).

Reference gradient (independent of optlayers' solver): at the planted non-degenerate solution
with active set 𝒜, the KKT system  Qx + q + G_𝒜ᵀλ_𝒜 + Aᵀν = 0,  G_𝒜x = h_𝒜,  Ax = b  defines x,
λ_𝒜, ν locally. With K = [[Q, G_𝒜ᵀ, Aᵀ], [G_𝒜, 0, 0], [A, 0, 0]] (symmetric) and w = K⁻¹(c, 0, 0)
(one ``torch.linalg.solve`` per problem), the implicit function theorem gives

    dL/dq = −w_x          dL/dQ = −½(w_x xᵀ + x w_xᵀ)
    dL/dh_𝒜 = w_λ         dL/dG_𝒜 = −(λ_𝒜 w_xᵀ + w_λ xᵀ)      (inactive rows of h, G: 0)
    dL/db = w_ν           dL/dA = −(ν w_xᵀ + w_ν xᵀ)

evaluated at the planted (x*, λ*, ν*). The printout also reports the planted KKT residual and the
strict-complementarity margin, so the reference can be trusted without trusting random_qp.

Peer settings — the tightest sensible float64 settings each layer exposes:
    optlayers-*     defaults: tol=1e-9, max_iter=50, active-set polish on.
    moreau          moreau.torch.Solver, defaults (solver='auto' → dual active set at these
                    sizes; IPM tolerances 1e-8 unused), device='cpu'.
    moreau-ipm      solver='ipm', tol_gap_abs = tol_gap_rel = tol_feas = 1e-10 (its gradient
                    error does not shrink with tolerance or diff_method; see its row's notes).
                    Conic form: Āx + s = b̄, s ∈ {0}^p × R₊^m with Ā = [A; G], b̄ = [b; h].
    proxsuite(-omp) QPFunction(eps=1e-9, maxIter=1000, eps_backward=1e-9, rho_backward=1e-9,
                    mu_backward=1e-9, omp_parallel=False/True); l = −1e20, u = h.
                    (The default eps_backward=1e-4, rho/mu_backward=1e-6 give ~1e-5 gradient error.)
    qpth            QPFunction(eps=1e-12, maxIter=50, notImprovedLim=3, verbose=-1).
    cvxpylayers     diffcp + SCS, solver_args eps_abs = eps_rel = 1e-9, max_iters=100000,
                    mode='dense' (diffcp's exact derivative; the default 'lsqr' is iterative and
                    gives 5e-2..2e-1 gradient error at sizes 1-2, and is slower). Q enters as its
                    Cholesky factor (½‖Lx‖² is DPP, ½xᵀQx with Q a parameter is not).
    osqp            osqp.nn.torch.OSQP(eps_abs = eps_rel = 1e-9, max_iter=100000); polish is not
                    exposed by the torch module. l ≤ [G; A]x ≤ u with l = [−∞; b], u = [h; b].
Per-structure setup (moreau Solver construction, CVXPY canonicalization, index patterns) happens
once outside the timed region; converting our dense tensors into each peer's format is timed.

Threads: torch keeps its default (os.cpu_count()) unless ``--threads N``. Peers use their own
pools: moreau (rayon, RAYON_NUM_THREADS), proxsuite omp_parallel (os.cpu_count()//2 threads),
osqp.nn.torch (joblib threads, os.cpu_count()), diffcp (ThreadPool, os.cpu_count()).

Usage:
    python benchmarks/compare_qp.py                        # all sizes, every installed contestant
    python benchmarks/compare_qp.py --sizes 0,1 --only optlayers,qpth --markdown
    python benchmarks/compare_qp.py --quick --sizes 0      # CI smoke: one repeat per cell
    python benchmarks/compare_qp.py --sizes 16x30x30x5     # a custom B x n x m x p size
    python benchmarks/compare_qp.py --json results.json --threads 1
    python benchmarks/compare_qp.py --isolate               # each row in its own process
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _peers import INPUTS, Contestant, Skip, Spec, all_contestants  # noqa: E402

SIZES = (Spec(1, 10, 10, 3), Spec(32, 20, 20, 5), Spec(128, 50, 50, 10), Spec(8, 200, 200, 50))
DTYPE = torch.float64
PACKAGES = ("torch", "optlayers", "moreau", "moreau-cpu", "proxsuite", "qpth", "cvxpylayers",
            "diffcp", "scs", "cvxpy", "osqp", "numpy")


@dataclasses.dataclass(frozen=True)
class Timing:
    quick: bool
    target_s: float      # aim for at least this much measured time per cell
    min_repeats: int
    max_repeats: int


# ---------------------------------------------------------------------------------------------
# Reference gradient (active-set KKT at the planted solution; see the module docstring)
# ---------------------------------------------------------------------------------------------

def reference_grads(prob, c: torch.Tensor) -> dict[str, torch.Tensor]:
    Q, q, G, h, A, b = prob.data()
    x, lam, nu, active = prob.x, prob.lam, prob.nu, prob.active
    B, n = q.shape
    m, p = h.shape[-1], b.shape[-1]
    out = {k: torch.zeros_like(v) for k, v in zip(INPUTS, (Q, q, G, h, A, b))}
    for i in range(B):
        act = active[i]
        Ga = G[i][act]
        k = Ga.shape[0]
        K = torch.zeros(n + k + p, n + k + p, dtype=DTYPE)
        K[:n, :n] = Q[i]
        K[:n, n:n + k] = Ga.T
        K[:n, n + k:] = A[i].T
        K[n:n + k, :n] = Ga
        K[n + k:, :n] = A[i]
        w = torch.linalg.solve(K, torch.cat([c[i], torch.zeros(k + p, dtype=DTYPE)]))
        wx, wl, wn = w[:n], w[n:n + k], w[n + k:]
        xi = x[i]
        out["q"][i] = -wx
        out["Q"][i] = -0.5 * (torch.outer(wx, xi) + torch.outer(xi, wx))
        out["h"][i][act] = wl
        out["G"][i][act] = -(torch.outer(lam[i][act], wx) + torch.outer(wl, xi))
        out["b"][i] = wn
        out["A"][i] = -(torch.outer(nu[i], wx) + torch.outer(wn, xi))
    return out


def planted_checks(prob) -> dict[str, float]:
    """KKT residual of the planted solution and its strict-complementarity margin."""
    Q, q, G, h, A, b = prob.data()
    x, lam, nu = prob.x, prob.lam, prob.nu

    def mv(M, v):
        return (M @ v.unsqueeze(-1)).squeeze(-1)

    slack = h - mv(G, x)
    stat = mv(Q, x) + q + mv(G.mT, lam) + mv(A.mT, nu)
    res = max(stat.abs().max(), (mv(A, x) - b).abs().max(), (-slack).clamp(min=0).max(),
              (-lam).clamp(min=0).max(), (lam * slack).abs().max())
    return {"kkt_residual": float(res), "complementarity_margin": float((lam + slack).min())}


# ---------------------------------------------------------------------------------------------
# Running one cell
# ---------------------------------------------------------------------------------------------

def _rel_err(g: torch.Tensor | None, ref: torch.Tensor, name: str) -> float:
    if g is None:
        return 1.0  # claimed but not returned: as wrong as a zero gradient
    g = g.detach()
    if name == "Q":
        g, ref = 0.5 * (g + g.mT), 0.5 * (ref + ref.mT)
    return float((g - ref).norm() / ref.norm().clamp(min=1e-300))


def _median_time(fn, first: float, timing: Timing) -> tuple[float, int]:
    if timing.quick:
        return first, 1
    k = max(timing.min_repeats, math.ceil(timing.target_s / max(first, 1e-9)))
    k = min(k, timing.max_repeats)
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), k


def _short(err: BaseException) -> str:
    msg = " ".join(str(err).split())
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def run_cell(con: Contestant, spec: Spec, prob, c, ref, timing: Timing) -> dict:
    row = {"name": con.name, "grads_wrt": list(con.grads_wrt), "ours": con.is_ours}
    diag: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peers' deprecation chatter; real trouble shows in errors
        try:
            t0 = time.perf_counter()
            solve = con.prepare(spec, diag)
            row["setup_s"] = time.perf_counter() - t0
        except Skip as err:
            return {**row, "skipped": str(err)}
        except Exception as err:  # noqa: BLE001 - a failing peer must not abort the run
            return {**row, "skipped": f"failed in setup: {_short(err)}"}

        data = prob.data()
        inputs = [t.detach().clone().requires_grad_(name in con.grads_wrt) for name, t in zip(INPUTS, data)]
        wrt = [t for t in inputs if t.requires_grad]

        def forward():
            return solve(*inputs)

        def forward_backward():
            x = solve(*inputs)
            grads = torch.autograd.grad((c * x).sum(), wrt, allow_unused=True)
            return x, grads

        try:
            t0 = time.perf_counter()
            x, grads = forward_backward()  # warm-up and accuracy run
            first = time.perf_counter() - t0
            row["x_err"] = float((x.detach() - prob.x).abs().max())
            got = dict(zip([n for n in INPUTS if n in con.grads_wrt], grads))
            row["grad_rel_err"] = {n: _rel_err(got[n], ref[n], n) for n in got}
            row["diagnostics"] = list(diag)
            row["fwdbwd_s"], row["fwdbwd_repeats"] = _median_time(forward_backward, first, timing)
            t0 = time.perf_counter()
            forward()  # warm-up of the forward-only path
            first = time.perf_counter() - t0
            row["fwd_s"], row["fwd_repeats"] = _median_time(forward, first, timing)
        except Exception as err:  # noqa: BLE001
            return {**row, "skipped": f"failed: {_short(err)}"}
    return row


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def _ms(s: float) -> str:
    v = 1e3 * s
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _ratio(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2g}" if v < 0.1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _grads_label(wrt: list[str]) -> str:
    return "all 6" if list(wrt) == list(INPUTS) else ",".join(wrt) or "none"


def table_rows(block: dict) -> tuple[list[str], list[list[str]]]:
    head = ["contestant", "fwd ms", "fwd+bwd ms", "fwd ratio", "fwd+bwd ratio",
            "x err", "grad err q,h", "grad err all", "grads"]
    rows = []
    base = next((r for r in block["results"] if r["name"] == block["baseline"]), None)
    for r in block["results"]:
        if "skipped" in r:
            reason = r["skipped"]
            reason = reason if len(reason) <= 90 else reason[:87] + "..."
            rows.append([r["name"], f"skipped ({reason})"] + [""] * (len(head) - 2))
            continue
        errs = r["grad_rel_err"]
        qh = [errs[k] for k in ("q", "h") if k in errs]
        rf = rb = None
        if base is not None:
            rf, rb = r["fwd_s"] / base["fwd_s"], r["fwdbwd_s"] / base["fwdbwd_s"]
        r["fwd_ratio"], r["fwdbwd_ratio"] = rf, rb
        rows.append([
            r["name"], _ms(r["fwd_s"]), _ms(r["fwdbwd_s"]), _ratio(rf), _ratio(rb),
            f"{r['x_err']:.1e}",
            f"{max(qh):.1e}" if qh else "n/a",
            f"{max(errs.values()):.1e}" if errs else "n/a",
            _grads_label(r["grads_wrt"]),
        ])
    return head, rows


def render_table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|"]
        for r in rows:
            if r[1].startswith("skipped"):
                r = [r[0], r[1]] + [""] * (len(head) - 2)
            lines.append("| " + " | ".join(r) + " |")
        return "\n".join(lines)
    full = [r for r in rows if not r[1].startswith("skipped")]
    widths = [max(len(x) for x in col) for col in zip(head, *full)] if full else [len(h) for h in head]
    widths[0] = max([widths[0]] + [len(r[0]) for r in rows])

    def line(cells):
        return "  ".join(c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append(f"{r[0].ljust(widths[0])}  {r[1]}" if r[1].startswith("skipped") else line(r))
    return "\n".join(out)


def header_lines(args, meta: dict, contestants: list[Contestant], notes: list[str]) -> list[str]:
    md = args.markdown
    bullet = "- " if md else "  "
    lines = [("## " if md else "") + "Dense batched QP layers: optlayers vs. peers", ""]
    lines.append(f"{bullet}command: `{meta['command']}`" if md else f"{bullet}command: {meta['command']}")
    lines.append(f"{bullet}machine: {meta['machine']}; load average {meta['loadavg']}")
    th = meta["threads"]
    lines.append(f"{bullet}threads: torch intra-op {th['torch_intra']}, inter-op {th['torch_inter']}, "
                 f"os.cpu_count() {th['cpu_count']}; env " +
                 ", ".join(f"{k}={v}" for k, v in th["env"].items()) +
                 "; peers use their own pools (see the script header)")
    lines.append(f"{bullet}versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    mode = "quick (1 run per cell)" if args.quick else (
        f"median of k runs, k adaptive for >= {args.target_s:g} s per cell "
        f"(k in [{args.min_repeats}, {args.max_repeats}]), after a warm-up")
    lines.append(f"{bullet}timing: {mode}; float64, CPU, every input batched (distinct data per problem)")
    lines.append("")
    lines.append(("### " if md else "") + "Contestants (settings; notes)")
    for con in contestants:
        text = f"{con.name}: {con.settings}" + (f"; {con.notes}" if con.notes else "")
        lines.append(f"{bullet}{text}")
    for n in notes:
        lines.append(f"{bullet}{n}")
    lines.append("")
    return lines


def block_lines(block: dict, markdown: bool) -> list[str]:
    s = block["spec"]
    title = f"B={s['B']}, n={s['n']}, m={s['m']}, p={s['p']}"
    base = block["baseline"] or "none (no optlayers row ran)"
    chk = block["planted"]
    sub = (f"ratio = time / {base}; planted KKT residual {chk['kkt_residual']:.1e}, "
           f"complementarity margin {chk['complementarity_margin']:.2f}")
    head, rows = table_rows(block)
    lines = [("### " if markdown else "== ") + title + ("" if markdown else " =="), sub, ""]
    lines.append(render_table(head, rows, markdown))
    extra = []
    for r in block["results"]:
        if "skipped" in r and len(r["skipped"]) > 90:
            extra.append(f"{r['name']}: skipped ({r['skipped']})")
        for d in r.get("diagnostics", []):
            extra.append(f"{r['name']}: {d}")
        if "grad_rel_err" in r and r["grad_rel_err"]:
            errs = ", ".join(f"d{k} {v:.1e}" for k, v in r["grad_rel_err"].items())
            extra.append(f"{r['name']}: grad rel err {errs}; repeats fwd {r['fwd_repeats']}, "
                         f"fwd+bwd {r['fwdbwd_repeats']}; untimed setup {1e3 * r['setup_s']:.1f} ms (incl. first import)")
    if extra:
        lines.append("")
        lines.extend(("- " if markdown else "  ") + e for e in extra)
    lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def parse_sizes(text: str | None) -> list[Spec]:
    if not text:
        return list(SIZES)
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if tok.isdigit():
            i = int(tok)
            if not 0 <= i < len(SIZES):
                raise argparse.ArgumentTypeError(f"size index {i} out of range 0..{len(SIZES) - 1}")
            out.append(SIZES[i])
        else:
            parts = tok.lower().split("x")
            if len(parts) != 4 or not all(p.isdigit() for p in parts):
                raise argparse.ArgumentTypeError(
                    f"--sizes takes indices 0..{len(SIZES) - 1} or BxNxMxP (e.g. 16x30x30x5); got {tok!r}")
            out.append(Spec(*map(int, parts)))
    return out


def select(contestants: list[Contestant], only: str | None) -> list[Contestant]:
    """``--only a,b``: a token picks the contestant of that name and its variants ``name-*``."""
    if not only:
        return contestants
    tokens = [t.strip() for t in only.split(",") if t.strip()]
    names = [c.name for c in contestants]
    for t in tokens:
        if not any(n == t or n.startswith(t + "-") for n in names):
            raise SystemExit(f"--only: unknown contestant {t!r}; known: {', '.join(names)}")
    return [c for c in contestants if any(c.name == t or c.name.startswith(t + "-") for t in tokens)]


def run_isolated(name: str, spec: Spec, args) -> dict:
    """One cell (``name`` at ``spec``) timed by a child process of this script; its JSON row.

    The child builds the same seeded problem and reference, so errors are comparable; what it does
    not share is the parent's state: earlier rows' thread pools (OpenMP, rayon, MKL spinning or
    sleeping), caches and allocator, which on a 2-core machine measurably slow the next rows."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cell.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--sizes", f"{spec.B}x{spec.n}x{spec.m}x{spec.p}",
               "--exactly", name, "--json", out, "--seed", str(args.seed), "--target-s", str(args.target_s),
               "--min-repeats", str(args.min_repeats), "--max-repeats", str(args.max_repeats)]
        if args.quick:
            cmd.append("--quick")
        if args.threads is not None:
            cmd += ["--threads", str(args.threads)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0 or not os.path.exists(out):
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"name": name, "ours": name.startswith("optlayers"), "skipped": f"child failed: {tail[0][:200]}"}
        with open(out) as f:
            rows = json.load(f)["sizes"][0]["results"]
    return rows[0] if rows else {"name": name, "ours": name.startswith("optlayers"), "skipped": "not run"}


def metadata(argv: list[str]) -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    env = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")}
    try:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "command": "python " + " ".join([os.path.relpath(argv[0])] + argv[1:]),
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, python {platform.python_version()}",
        "loadavg": load,
        "threads": {"torch_intra": torch.get_num_threads(), "torch_inter": torch.get_num_interop_threads(),
                    "cpu_count": os.cpu_count(), "env": env},
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", help="comma-separated size indices (0..3) and/or BxNxMxP sizes; default: all four")
    ap.add_argument("--only", help="comma-separated contestants (a name also selects its name-* variants), "
                                   "e.g. optlayers,qpth,proxsuite")
    ap.add_argument("--quick", action="store_true", help="one run per cell, no repeats (CI smoke)")
    ap.add_argument("--json", metavar="PATH", help="also write all results and metadata to PATH")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables (for README)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: leave torch's default)")
    ap.add_argument("--seed", type=int, default=0, help="random_qp seed (default 0)")
    ap.add_argument("--target-s", type=float, default=0.5, help="measured time per cell to aim for (default 0.5)")
    ap.add_argument("--min-repeats", type=int, default=3)
    ap.add_argument("--max-repeats", type=int, default=50)
    ap.add_argument("--baseline", help="optlayers row the ratios divide by (default: fastest optlayers fwd+bwd)")
    ap.add_argument("--isolate", action="store_true",
                    help="time each contestant of each size in a fresh Python process (no thread pools, "
                         "caches or allocator state left over from the rows before it)")
    ap.add_argument("--exactly", help=argparse.SUPPRESS)  # one contestant by exact name (used by --isolate)
    args = ap.parse_args(argv[1:])
    try:
        sizes = parse_sizes(args.sizes)
    except argparse.ArgumentTypeError as err:
        ap.error(str(err))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    timing = Timing(args.quick, args.target_s, max(1, args.min_repeats), max(1, args.max_repeats))

    import optlayers as ol  # noqa: F401 - fail early, with a clear traceback, if we are broken

    contestants, notes = all_contestants()
    contestants = select(contestants, args.only)
    if args.exactly:
        contestants = [c for c in contestants if c.name == args.exactly]
    meta = metadata(argv)
    print("\n".join(header_lines(args, meta, contestants, notes)), flush=True)

    blocks = []
    for spec in sizes:
        prob = ol.testing.random_qp(spec.B, spec.n, spec.m, spec.p, seed=args.seed, dtype=DTYPE)
        c = torch.randn(spec.B, spec.n, generator=torch.Generator().manual_seed(args.seed + 1), dtype=DTYPE)
        ref = reference_grads(prob, c)
        results = []
        for con in contestants:
            if args.isolate:
                results.append(run_isolated(con.name, spec, args))
            else:
                results.append(run_cell(con, spec, prob, c, ref, timing))
        ran = [r for r in results if r["ours"] and "skipped" not in r]
        if args.baseline:
            baseline = args.baseline if any(r["name"] == args.baseline for r in ran) else None
        else:
            baseline = min(ran, key=lambda r: r["fwdbwd_s"])["name"] if ran else None
        block = {"spec": dataclasses.asdict(spec), "seed": args.seed, "baseline": baseline,
                 "planted": planted_checks(prob), "results": results}
        print("\n".join(block_lines(block, args.markdown)), flush=True)
        blocks.append(block)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "args": vars(args), "sizes": blocks}, f, indent=2)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
