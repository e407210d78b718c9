"""Contestants of ``compare_qp.py``: optlayers' dense QP backends and the installed peers.

Every contestant solves the same batch of problems

    minimize ½ xᵀQx + qᵀx   s.t.   Ax = b,   Gx ≤ h            (B problems, all data batched)

and is described by a :class:`Contestant`: ``prepare(spec)`` does the once-per-structure work
that a user would do once outside the training loop (building a solver object, canonicalizing a
CVXPY problem) and returns ``solve(Q, q, G, h, A, b) -> x`` of shape (B, n) — the per-call work
that is timed, *including* the conversion of our dense data to the peer's input format (a user
holding dense tensors pays it too). ``prepare`` imports the peer lazily, so a missing peer only
costs its row.

Peers are run at their tightest sensible float64 settings (see ``compare_qp.py``'s header for
the table of choices and why).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import torch

INPUTS = ("Q", "q", "G", "h", "A", "b")

SolveFn = Callable[..., torch.Tensor]
# A ``solve`` may also set ``solve.ok`` — a (B,) bool tensor, per problem of its last call, of
# whether the peer's own status says solved — where the peer reports one (hard_qps.py reads it).


@dataclasses.dataclass(frozen=True)
class Spec:
    """Problem structure: batch size and dimensions (n variables, m inequalities, p equalities)."""

    B: int
    n: int
    m: int
    p: int


class Skip(Exception):
    """Raised by ``prepare`` when a contestant cannot run here (not installed, not available)."""


@dataclasses.dataclass
class Contestant:
    name: str
    # prepare(spec, diag) -> solve; ``solve`` may write short per-call diagnostics of its most
    # recent call into ``diag`` (e.g. "3/128 not Solved").
    prepare: Callable[[Spec, list[str]], SolveFn]
    grads_wrt: tuple[str, ...] = INPUTS  # inputs the contestant differentiates
    settings: str = ""                   # tolerances/options used, for the printout
    notes: str = ""                      # API quirks worth knowing when reading its numbers
    is_ours: bool = False


# --------------------------------------------------------------------------------------------
# optlayers
# --------------------------------------------------------------------------------------------

def optlayers_contestants() -> tuple[list[Contestant], list[str]]:
    """One contestant per dense QP backend of ``ol.Backend`` (so a future ``"native"`` is picked
    up automatically). Returns (contestants, notes about backends that are not dense QP ones)."""
    import optlayers as ol

    out, notes = [], []
    probe = ol.testing.random_qp(1, 3, 2, 1, seed=0)
    for member in ol.Backend:
        name = member.value
        if name == "auto":
            continue
        try:
            ol.solve_qp(*probe.data(), backend=name)
        except ValueError as err:   # not a dense QP backend (osqp/scs/clarabel): not a contestant
            notes.append(f"optlayers backend {name!r} not benchmarked: {err}")
            continue
        except RuntimeError:        # registered but not available here: its row says why
            pass
        out.append(_optlayers(name))
    return out, notes


def _optlayers(backend: str) -> Contestant:
    def prepare(spec: Spec, diag: list[str]) -> SolveFn:
        import optlayers as ol

        probe = ol.testing.random_qp(1, 3, 2, 1, seed=0)
        try:
            ol.solve_qp(*probe.data(), backend=backend)
        except ol.SolverError:
            raise
        except RuntimeError as err:
            raise Skip(f"backend not available: {err}") from None

        def solve(Q, q, G, h, A, b):
            return ol.solve_qp(Q, q, G, h, A, b, backend=backend)

        return solve

    settings = ("defaults: tol=1e-9 (float64), max_iter=50, polish=True" if backend != "osqp" else
                "defaults of solve_qp(backend='osqp'): OSQP with optlayers' settings and polish (docs/sparse.md)")
    return Contestant(name=f"optlayers-{backend}", prepare=prepare, settings=settings, is_ours=True)


# --------------------------------------------------------------------------------------------
# moreau (Rust batched conic solver; CPU build via moreau-cpu)
# --------------------------------------------------------------------------------------------

def _moreau(variant: str) -> Contestant:
    """``moreau.torch.Solver`` on the conic form  min ½xᵀPx + qᵀx  s.t.  Āx + s = b̄, s ∈ K:
    Ā = [A; G], b̄ = [b; h], K = {0}^p × R₊^m (zero cone first, as moreau orders cones).
    P and Ā are passed as dense CSR patterns (values per problem, row-major)."""

    def prepare(spec: Spec, diag: list[str]) -> SolveFn:
        try:
            import moreau
            from moreau.torch import Solver
        except ImportError as err:
            raise Skip(f"not installed: {err}") from None
        B, n, m, p = spec.B, spec.n, spec.m, spec.p
        rows = m + p
        cols = torch.arange(n)
        P_ro = torch.arange(0, n * n + 1, n)
        P_ci = cols.repeat(n)
        A_ro = torch.arange(0, rows * n + 1, n)
        A_ci = cols.repeat(rows)
        cones = moreau.Cones(num_zero_cones=p, num_nonneg_cones=m)
        if variant == "ipm":
            tight = 1e-10
            ipm = moreau.IPMSettings(tol_gap_abs=tight, tol_gap_rel=tight, tol_feas=tight)
            settings = moreau.Settings(solver="ipm", device="cpu", batch_size=B, ipm_settings=ipm)
        else:
            settings = moreau.Settings(device="cpu", batch_size=B)
        with warnings.catch_warnings():
            # solver="auto" warns that it resolved to the active-set method (documented below).
            warnings.simplefilter("ignore")
            solver = Solver(n, rows, P_ro, P_ci, A_ro, A_ci, cones, settings=settings)

        def solve(Q, q, G, h, A, b):
            sol = solver.solve(
                Q.reshape(B, n * n),
                torch.cat([A, G], -2).reshape(B, rows * n),
                q,
                torch.cat([b, h], -1),
            )
            status = solver.info.status
            solve.ok = torch.tensor([int(s) == int(moreau.SolverStatus.Solved) for s in status])
            bad = [s for s in status if int(s) != int(moreau.SolverStatus.Solved)]
            diag[:] = (
                [f"{len(bad)}/{B} not Solved ({sorted({str(s) for s in bad})})"] if bad else []
            )
            return sol.x

        return solve

    if variant == "ipm":
        return Contestant(
            name="moreau-ipm",
            prepare=prepare,
            settings="solver='ipm', tol_gap_abs=tol_gap_rel=tol_feas=1e-10, device='cpu'",
            notes="its IPM backward is off by 1e-4 (n=10) to 1e-1 (n=200) relative to the exact "
            "gradient while x is accurate to 1e-9, whatever the tolerance (1e-8..1e-12) or "
            "diff_method ('auto'/'exact'; 'smoothed' is worse); equilibrate_enable=False only "
            "shrinks it ~6x at n=20 — a property of the peer's backward, not of a setting",
        )
    return Contestant(
        name="moreau",
        prepare=prepare,
        settings="defaults (solver='auto', device='cpu')",
        notes="solver='auto' picks the dual active-set method for n ≤ 500 (all sizes here); "
        "its gradients are exact at non-degenerate points",
    )


# --------------------------------------------------------------------------------------------
# proxsuite (proxsuite.torch.qplayer.QPFunction)
# --------------------------------------------------------------------------------------------

PROXSUITE_OPTS = dict(eps=1e-9, maxIter=1000, eps_backward=1e-9, rho_backward=1e-9, mu_backward=1e-9)


def _proxsuite(parallel: bool) -> Contestant:
    """``QPFunction(...)(Q, p, A, b, G, l, u)`` solves  l ≤ Gx ≤ u,  Ax = b;  we pass u = h and a
    constant l = −1e20 (proxsuite's "infinite" bound), so dL/dh is proxsuite's dL/du."""

    def prepare(spec: Spec, diag: list[str]) -> SolveFn:
        try:
            from proxsuite.torch.qplayer import QPFunction
        except ImportError as err:
            raise Skip(f"not installed: {err}") from None
        lower = torch.full((spec.B, spec.m), -1e20, dtype=torch.float64)

        def solve(Q, q, G, h, A, b):
            # QPFunction stores omp_parallel in a module-level global, so the layer is rebuilt
            # per call (a class definition, microseconds) to keep the serial/parallel rows apart.
            fn = QPFunction(omp_parallel=parallel, structural_feasibility=True, **PROXSUITE_OPTS)
            x, _, _ = fn(Q, q, A, b, G, lower, h)
            return x

        return solve

    opts = ", ".join(f"{k}={v:g}" for k, v in PROXSUITE_OPTS.items())
    return Contestant(
        name="proxsuite-omp" if parallel else "proxsuite",
        prepare=prepare,
        settings=f"{opts}, omp_parallel={parallel}",
        notes=(
            "omp_parallel uses os.cpu_count()//2 threads (1 on a 2-core box); " if parallel else ""
        )
        + "backward buffers are float32 (torch.empty without dtype), so gradients carry ~1e-8 "
        "relative rounding; structural_feasibility=True is the plain (feasible-QP) layer",
    )


# --------------------------------------------------------------------------------------------
# qpth (qpth.qp.QPFunction, OptNet's batched primal-dual interior point)
# --------------------------------------------------------------------------------------------

QPTH_OPTS = dict(eps=1e-12, maxIter=50, notImprovedLim=3)


def _qpth() -> Contestant:
    def prepare(spec: Spec, diag: list[str]) -> SolveFn:
        try:
            from qpth.qp import QPFunction
        except ImportError as err:
            raise Skip(f"not installed: {err} (pip install --no-deps qpth)") from None
        fn = QPFunction(verbose=-1, **QPTH_OPTS)

        def solve(Q, q, G, h, A, b):
            return fn(Q, q, G, h, A, b)

        return solve

    opts = ", ".join(f"{k}={v:g}" for k, v in QPTH_OPTS.items())
    return Contestant(
        name="qpth",
        prepare=prepare,
        settings=f"{opts}, verbose=-1 (no 'inaccurate solution' prints; errors are measured)",
    )


# --------------------------------------------------------------------------------------------
# cvxpylayers (CvxpyLayer over diffcp + SCS)
# --------------------------------------------------------------------------------------------

# mode="dense": diffcp's exact dense derivative. Its default mode="lsqr" (iterative) leaves
# 5e-2..2e-1 relative gradient error at B=32..128 (n=20..50) here, and is slower.
SCS_ARGS = dict(solve_method="SCS", eps_abs=1e-9, eps_rel=1e-9, max_iters=100_000, mode="dense")


def _cvxpylayers() -> Contestant:
    """½xᵀQx with Q a parameter is not DPP, so the layer takes L with Q = LᵀL (the OptNet
    example of cvxpylayers does the same): objective ½‖Lx‖² + qᵀx, L = cholesky(Q)ᵀ computed in
    torch inside the timed call, so dL/dQ flows through torch.linalg.cholesky's backward."""

    def prepare(spec: Spec, diag: list[str]) -> SolveFn:
        try:
            import cvxpy as cp
            from cvxpylayers.torch import CvxpyLayer
        except ImportError as err:
            raise Skip(f"not installed: {err}") from None
        n, m, p = spec.n, spec.m, spec.p
        x = cp.Variable(n)
        L = cp.Parameter((n, n))
        q_ = cp.Parameter(n)
        G_ = cp.Parameter((m, n))
        h_ = cp.Parameter(m)
        A_ = cp.Parameter((p, n))
        b_ = cp.Parameter(p)
        prob = cp.Problem(
            cp.Minimize(0.5 * cp.sum_squares(L @ x) + q_ @ x), [G_ @ x <= h_, A_ @ x == b_]
        )
        layer = CvxpyLayer(prob, parameters=[L, q_, G_, h_, A_, b_], variables=[x])

        def solve(Q, q, G, h, A, b):
            Lt = torch.linalg.cholesky(Q).mT
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                (sol,) = layer(Lt, q, G, h, A, b, solver_args=dict(SCS_ARGS))
            inacc = sum("naccurate" in str(w.message) for w in caught)
            diag[:] = [f"SCS 'Solved/Inaccurate' on {inacc}/{spec.B}"] if inacc else []
            return sol

        return solve

    opts = ", ".join(f"{k}={v}" for k, v in SCS_ARGS.items())
    return Contestant(
        name="cvxpylayers",
        prepare=prepare,
        settings=f"solver_args: {opts}",
        notes="Q enters as L = cholesky(Q)ᵀ (½‖Lx‖², DPP); dQ via torch's Cholesky backward; "
        "mode='dense' because diffcp's default mode='lsqr' gives 5e-2..2e-1 gradient error here; "
        "diffcp runs the batch on a ThreadPool of os.cpu_count() threads",
    )


# --------------------------------------------------------------------------------------------
# osqp (osqp.nn.torch.OSQP)
# --------------------------------------------------------------------------------------------

OSQP_OPTS = dict(eps_abs=1e-9, eps_rel=1e-9, max_iter=100_000)


def _osqp() -> Contestant:
    """``OSQP(P_idx, P_shape, A_idx, A_shape, ...)(P_val, q, A_val, l, u)`` solves l ≤ Āx ≤ u with
    Ā = [G; A], l = [−∞; b], u = [h; b]; dL/db is the sum of OSQP's dl and du for those rows."""

    def prepare(spec: Spec, diag: list[str]) -> SolveFn:
        try:
            from osqp.nn.torch import OSQP
        except ImportError as err:
            raise Skip(f"not installed: {err}") from None
        n, m, p, B = spec.n, spec.m, spec.p, spec.B
        rows = m + p
        # Index lists must be in CSC (column-major) order: the backward returns dA/dP as CSC
        # data vectors and copies them position by position onto A_val/P_val.
        pc, pr = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        ac, ar = torch.meshgrid(torch.arange(n), torch.arange(rows), indexing="ij")
        P_idx = (pr.flatten().numpy(), pc.flatten().numpy())
        A_idx = (ar.flatten().numpy(), ac.flatten().numpy())
        layer = OSQP(P_idx, (n, n), A_idx, (rows, n), **OSQP_OPTS)
        minus_inf = torch.full((B, m), -float("inf"), dtype=torch.float64)

        def solve(Q, q, G, h, A, b):
            A_bar = torch.cat([G, A], -2)
            return layer(
                Q.mT.reshape(B, n * n),
                q,
                A_bar.mT.reshape(B, rows * n),
                torch.cat([minus_inf, b], -1),
                torch.cat([h, b], -1),
            )

        return solve

    opts = ", ".join(f"{k}={v:g}" for k, v in OSQP_OPTS.items())
    return Contestant(
        name="osqp",
        prepare=prepare,
        settings=f"{opts} (polish is not exposed by osqp.nn.torch)",
        notes="P_idx/A_idx must be in CSC order or dA/dG come back permuted; raises on any "
        "unsolved problem; batch runs on joblib threads (os.cpu_count())",
    )


# --------------------------------------------------------------------------------------------

def all_contestants() -> tuple[list[Contestant], list[str]]:
    """Every contestant in table order, plus notes about what was left out and why."""
    ours, notes = [], []
    try:
        ours, notes = optlayers_contestants()
    except Exception as err:  # noqa: BLE001 - a broken import must not abort the peers' run
        notes.append(f"optlayers skipped ({type(err).__name__}: {err})")
    peers = [
        _moreau("auto"),
        _moreau("ipm"),
        _proxsuite(parallel=False),
        _proxsuite(parallel=True),
        _qpth(),
        _cvxpylayers(),
        _osqp(),
    ]
    return ours + peers, notes
