"""SCS backend (O'Donoghue et al., *Conic optimization via operator splitting and homogeneous
self-dual embedding*, 2016; SCS 3 adds the quadratic objective ½xᵀPx directly).

One ``scs.SCS`` workspace per problem; when A and P are shared by the batch (the parameters
that enter them are unbatched, or none do), one workspace per worker thread is factorized once,
kept across calls in the layer's :class:`SolverCache`, and each problem only updates (b, c) —
unless SCS adapted its scale during a solve, in which case the next problem gets a fresh
workspace (so every problem starts from SCS's initial scale, as a fresh solve would).
SCS releases the GIL inside ``solve``, so worker threads solve problems concurrently.
"""

from __future__ import annotations

import numpy as np

from optlayers._src.conic import options as _opt
from optlayers._src.conic.backends import BatchData, RawConeSolution, SolverCache, WarmStart, run_chunks
from optlayers._src.conic.options import ConicOptions
from optlayers._src.qp.options import Backend
from optlayers._src.status import Status

_SOLVED_INACCURATE = 2

# SCS's status_val → ours. "*_inaccurate" means SCS stopped (iteration/time limit) before its
# tolerances held: we report MAX_ITER rather than pretend a certificate or a solution.
_STATUS = {
    1: Status.SOLVED,
    2: Status.MAX_ITER,            # solved_inaccurate
    -1: Status.DUAL_INFEASIBLE,    # unbounded
    -6: Status.MAX_ITER,           # unbounded_inaccurate
    -2: Status.PRIMAL_INFEASIBLE,  # infeasible
    -7: Status.MAX_ITER,           # infeasible_inaccurate
    -3: Status.NUMERICAL_ERROR,    # indeterminate
    -4: Status.NUMERICAL_ERROR,    # failed
    -5: Status.NUMERICAL_ERROR,    # interrupted
}


def _scs():
    try:
        import scs
    except ImportError as err:  # pragma: no cover
        raise ImportError("the 'scs' backend needs SCS: pip install 'optlayers[conic]'") from err
    return scs


def _dense_available() -> bool:
    try:
        import scs._scs_dense  # noqa: F401
    except ImportError:
        return False
    return True


def settings_of(options: ConicOptions, prog=None) -> dict:
    s = {
        "eps_abs": float(options.eps_abs),
        "eps_rel": float(options.eps_rel),
        "eps_infeas": float(options.eps_infeas),
        "max_iters": int(options.max_iters or _opt.SCS_MAX_ITERS),
        "scale": _opt.SCS_SCALE,
        "verbose": bool(options.verbose),
    }
    if prog is not None:
        N = prog.n + prog.m
        nnz = prog.nnz_A + (0 if prog.P_upper is None else prog.P_upper.size)
        dense = nnz >= _opt.SCS_DENSE_MIN_DENSITY * max(1, prog.m * prog.n)
        if N <= _opt.SCS_DENSE_MAX_DIM and dense and _dense_available():
            s["linear_solver"] = "cpu_dense"
    s.update(options.extra_dict())
    return s


def matrices(data: BatchData, i: int):
    """(A, P) of problem i as SciPy CSC matrices (P: upper triangle, or None)."""
    return data.prog.matrices(data.A_of(i), data.P_of(i))


class SCSBackend:
    name = Backend.SCS

    def solve(self, data: BatchData, options: ConicOptions, warm: WarmStart | None,
              cache: SolverCache) -> RawConeSolution:
        scs = _scs()
        prog = data.prog
        B = data.B
        out = RawConeSolution.empty(B, prog.n, prog.m)
        settings = settings_of(options, prog)
        cone = prog.dims.scs_cone()

        def record(i: int, sol: dict) -> None:
            info = sol["info"]
            out.x[i], out.y[i], out.s[i] = sol["x"], sol["y"], sol["s"]
            out.status[i] = _STATUS.get(int(info["status_val"]), Status.NUMERICAL_ERROR)
            out.iterations[i] = int(info["iter"])
            out.solver_status[i] = str(info["status"])
            out.inexact[i] = int(info["status_val"]) == _SOLVED_INACCURATE
            out.scale[i] = float(info.get("scale", np.nan))

        def warm_kwargs(i: int) -> dict:
            if warm is None:
                return {"warm_start": False}
            return {"warm_start": True, "x": warm[0][i].copy(), "y": warm[1][i].copy(), "s": warm[2][i].copy()}

        if data.shared_matrices:
            key = (data.A[0], None if data.P is None else data.P[0], _settings_key(settings))
            A, P = matrices(data, 0)

            def fresh(i: int):
                payload = {"A": A, "b": data.b[i], "c": data.c[i]}
                if P is not None:
                    payload["P"] = P
                return scs.SCS(payload, cone, **settings)

            def work(chunk: range) -> None:
                solver = cache.take(key)
                for i in chunk:
                    if solver is None:
                        solver = fresh(i)
                    else:
                        solver.update(b=data.b[i], c=data.c[i])
                    sol = solver.solve(**warm_kwargs(i))
                    record(i, sol)
                    if int(sol["info"].get("scale_updates", 0)) > 0:
                        # SCS adapted its scale to this problem (and refactorized): a workspace
                        # carrying that scale into the next problems can cost them 4x the
                        # iterations, so the next problem starts from a fresh workspace.
                        solver = None
                if solver is not None:
                    cache.give(key, solver)
        else:
            def work(chunk: range) -> None:
                for i in chunk:
                    A_i, P_i = matrices(data, i)
                    payload = {"A": A_i, "b": data.b[i], "c": data.c[i]}
                    if P_i is not None:
                        payload["P"] = P_i
                    record(i, scs.SCS(payload, cone, **settings).solve(**warm_kwargs(i)))

        run_chunks(B, options.n_jobs, work)
        return out


def _settings_key(settings: dict) -> np.ndarray:
    """Settings are part of a cached workspace's identity (a float array, to compare cheaply)."""
    return np.array([hash(tuple(sorted((k, repr(v)) for k, v in settings.items())))], dtype=np.int64)
