"""Forward pass of the sparse QP layer: OSQP per problem (cached solvers, warm starts), then the
active-set polish with the reduced KKT factorization that the backward reuses.

Everything here works on detached numpy float64 copies of the canonical data (OSQP computes in
float64); ``api.py`` converts back to the caller's dtype and device.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from optlayers._src.sparse import kkt as kkt_mod
from optlayers._src.sparse import options as opts
from optlayers._src.sparse.cache import SolverCache, _Slot, import_osqp, value_digest
from optlayers._src.sparse.options import OSQPOptions
from optlayers._src.sparse.problem import SparseQPData
from optlayers._src.status import Status


def _numpy(t) -> np.ndarray:
    return t.detach().to("cpu", dtype=torch.float64).numpy()


def _row(a: np.ndarray, b: int) -> np.ndarray:
    return a if a.ndim == 1 else a[b]


@dataclasses.dataclass
class NumpyData:
    """float64 numpy copies of the canonical values (shared 1-D or batched 2-D)."""

    P: np.ndarray
    q: np.ndarray
    A: np.ndarray
    l: np.ndarray
    u: np.ndarray

    @staticmethod
    def of(data: SparseQPData) -> "NumpyData":
        return NumpyData(*(_numpy(t) for t in data.tensors()))


class KKTState:
    """Reduced-KKT factorizations of every problem of a batch, made on demand and shared between
    problems (and calls) with the same values of P, A and the same active set (``cache.py``).

    ``sign``: (B, m) int8 active sets (:func:`kkt.classify`); ``ok``: (B,) bool solved problems.
    """

    def __init__(self, data: SparseQPData, values: NumpyData, entry, cache: SolverCache, sign: np.ndarray, ok: np.ndarray):
        self.P_pattern, self.A_pattern = data.P_pattern, data.A_pattern
        self.values = values
        self.entry = entry
        self.cache = cache
        self.sign = sign
        self.ok = ok
        B = sign.shape[0]
        self._factors: list = [None] * B
        shared = values.P.ndim == 1 and values.A.ndim == 1
        self._mat_digest = [value_digest(values.P) + value_digest(values.A)] * B if shared else None

    def _digest(self, b: int) -> bytes:
        if self._mat_digest is None:
            self._mat_digest = [None] * self.sign.shape[0]
        if self._mat_digest[b] is None:
            self._mat_digest[b] = value_digest(_row(self.values.P, b)) + value_digest(_row(self.values.A, b))
        return self._mat_digest[b]

    def set_sign(self, b: int, sign: np.ndarray) -> None:
        if not np.array_equal(sign != 0, self.sign[b] != 0):
            self._factors[b] = None
        self.sign[b] = sign

    def factor(self, b: int) -> kkt_mod.ReducedKKT:
        f = self._factors[b]
        if f is not None:
            return f
        key = self._digest(b) + value_digest(np.packbits(self.sign[b] != 0))
        f = self.entry.get_factor(key)
        if f is None:
            f = kkt_mod.ReducedKKT(self.P_pattern, _row(self.values.P, b), self.A_pattern, _row(self.values.A, b), self.sign[b].copy())
            self.cache.stats.factorizations += 1
            self.entry.put_factor(key, f)
        else:
            self.cache.stats.factor_reuses += 1
            if not np.array_equal(f.sign, self.sign[b]):
                f = f.with_sign(self.sign[b])
        self._factors[b] = f
        return f


@dataclasses.dataclass
class RawSparseSolution:
    x: np.ndarray          # (B, n)
    y: np.ndarray          # (B, m)
    status: np.ndarray     # (B,) int8
    iterations: np.ndarray  # (B,) int32
    polished: np.ndarray   # (B,) bool
    kkt: KKTState


def _status_map(osqp) -> dict:
    S = osqp.SolverStatus
    return {
        S.OSQP_SOLVED: Status.SOLVED,
        S.OSQP_SOLVED_INACCURATE: Status.MAX_ITER,
        S.OSQP_PRIMAL_INFEASIBLE: Status.PRIMAL_INFEASIBLE,
        S.OSQP_PRIMAL_INFEASIBLE_INACCURATE: Status.PRIMAL_INFEASIBLE,
        S.OSQP_DUAL_INFEASIBLE: Status.DUAL_INFEASIBLE,
        S.OSQP_DUAL_INFEASIBLE_INACCURATE: Status.DUAL_INFEASIBLE,
        S.OSQP_MAX_ITER_REACHED: Status.MAX_ITER,
        S.OSQP_TIME_LIMIT_REACHED: Status.MAX_ITER,
    }


_NOT_CONVEX = (
    "the quadratic term (P, or Q in solve_qp) is not positive semidefinite: OSQP found the problem "
    "non-convex{where}. Check its sign or add a multiple of the identity."
)


def solve_batch(data: SparseQPData, options: OSQPOptions, cache: SolverCache) -> RawSparseSolution:
    """Solve every problem of the (detached) batch; see the module docstring."""
    osqp = import_osqp()
    smap = _status_map(osqp)
    vals = NumpyData.of(data)
    entry = cache.entry(data.P_pattern, data.A_pattern, options)
    B, n, m = data.B, data.n, data.m
    settings = options.osqp_settings()
    X = np.zeros((B, n))
    Y = np.zeros((B, m))
    status = np.full(B, int(Status.NUMERICAL_ERROR), np.int8)
    iters = np.zeros(B, np.int32)
    polished = np.zeros(B, bool)
    sign = np.zeros((B, m), np.int8)
    state = KKTState(data, vals, entry, cache, sign, status == int(Status.SOLVED))
    A_csr_shared = None

    for b in range(B):
        Pb, qb, Ab, lb, ub = (_row(a, b) for a in (vals.P, vals.q, vals.A, vals.l, vals.u))
        if not (np.isfinite(Pb).all() and np.isfinite(qb).all() and np.isfinite(Ab).all()
                and not np.isnan(lb).any() and not np.isnan(ub).any()):
            # Non-finite data that check_inputs=False let through: a failed problem (OSQP would
            # call a NaN in P "non-convex", and iterate to its limit on a NaN bound).
            status[b] = int(Status.NUMERICAL_ERROR)
            continue
        if np.any(lb > ub):
            # An empty interval (possible only with check_inputs=False): infeasible by definition;
            # OSQP would reject the data (and keep the previous values on update).
            status[b] = int(Status.PRIMAL_INFEASIBLE)
            continue
        slot = entry.slots[b] if b < len(entry.slots) else None
        reused = slot is not None
        retried_iters = 0
        try:
            if slot is not None and not _update(slot, Pb, Ab, qb, lb, ub, settings, cache):
                slot = None  # OSQP rejected the new values: set up afresh (reports the reason)
            if slot is None:
                slot = _set_up(osqp, entry, b, data, Pb, qb, Ab, lb, ub, options, settings, cache)
            res = _solve_reused(slot, settings) if reused else slot.solver.solve(raise_error=False)
            if reused and res.info.status_val != osqp.SolverStatus.OSQP_SOLVED:
                # A reused solver must not lose a problem that a fresh one solves: on a nearly
                # inconsistent problem (float32 rows pinning a vertex, equal up to rounding) the
                # state a solver carries from its last solve — iterate, adapted ρ — made identical
                # repeated calls go 64 → 4 → 0 of 64 solved (a warm start from zero did not help).
                cache.stats.solves += 1
                retried_iters = res.info.iter
                slot = _set_up(osqp, entry, b, data, Pb, qb, Ab, lb, ub, options, settings, cache)
                res = slot.solver.solve(raise_error=False)
            if res.info.status_val == osqp.SolverStatus.OSQP_SOLVED:
                slot.last_iter = int(res.info.iter)
        except osqp.OSQPException as exc:
            where = f" at batch index {b}" if B > 1 else ""
            code = exc.args[0] if exc.args else None
            if code == osqp.SolverError.OSQP_DATA_VALIDATION_ERROR:
                # Non-finite data that check_inputs=False let through: a failed problem.
                status[b] = int(Status.NUMERICAL_ERROR)
                continue
            if code == osqp.SolverError.OSQP_NONCVX_ERROR:
                # OSQP refuses set-up / refactorization of a non-convex problem.
                raise ValueError(_NOT_CONVEX.format(where=where)) from None
            name = osqp.SolverError(code).name if code in set(osqp.SolverError) else str(code)
            raise RuntimeError(f"OSQP failed to set up the problem{where}: {name}") from None
        cache.stats.solves += 1
        code = res.info.status_val
        if code == osqp.SolverStatus.OSQP_NON_CVX:
            raise ValueError(_NOT_CONVEX.format(where=f" at batch index {b}" if B > 1 else ""))
        st = smap.get(code, Status.NUMERICAL_ERROR)
        iters[b] = retried_iters + res.info.iter
        x = np.array(res.x, dtype=np.float64)
        y = np.array(res.y, dtype=np.float64)
        if st in (Status.PRIMAL_INFEASIBLE, Status.DUAL_INFEASIBLE, Status.NUMERICAL_ERROR) or not (
            np.all(np.isfinite(x)) and np.all(np.isfinite(y))
        ):
            if st is Status.SOLVED or st is Status.MAX_ITER:
                st = Status.NUMERICAL_ERROR
            status[b] = int(st)
            slot.cold = True
            continue
        slot.cold = False
        Ab_csr = None
        if data.A.dim() == 1:
            if A_csr_shared is None:
                A_csr_shared = kkt_mod.csc(data.A_pattern, Ab).tocsr()
            Ab_csr = A_csr_shared
        else:
            Ab_csr = kkt_mod.csc(data.A_pattern, Ab).tocsr()
        sign[b] = kkt_mod.classify(x, y, Ab_csr @ x, lb, ub)
        if options.polish:
            for attempt in range(opts.POLISH_RETRIES + 1):
                try:
                    f = state.factor(b)
                except RuntimeError:  # the regularized KKT matrix could not be factored: no polish
                    break
                xp, yp, accepted = kkt_mod.polish(f, qb, Ab_csr, lb, ub)
                if accepted:
                    x, y = xp, yp
                    st = Status.SOLVED
                    polished[b] = True
                    eq = lb == ub
                    if eq.any():  # bound side of equality rows follows the polished y
                        s = sign[b].copy()
                        s[eq] = np.where(y[eq] >= 0, 1, -1)
                        state.set_sign(b, s)
                    break
                if attempt == opts.POLISH_RETRIES or st is not Status.SOLVED:
                    break
                # Wrong active-set guess: resume ADMM (warm) at tighter tolerances and retry.
                tight = options.tightened(opts.POLISH_RETRY_FACTOR ** (attempt + 1)).osqp_settings()
                slot.solver.update_settings(**{**tight, "warm_starting": True})
                _reset_status(slot, qb)
                res = slot.solver.solve(raise_error=False)
                slot.solver.update_settings(**settings)
                cache.stats.solves += 1
                iters[b] += res.info.iter
                xr = np.array(res.x, dtype=np.float64)
                yr = np.array(res.y, dtype=np.float64)
                if not (np.all(np.isfinite(xr)) and np.all(np.isfinite(yr))):
                    slot.cold = True
                    break
                if _converged(osqp, res, tight["max_iter"]):
                    x, y = xr, yr  # a better unpolished answer
                else:
                    # Not an answer (it stopped at its limit), but its active set may still be the
                    # right guess for the next polish, whose own test decides; the next call
                    # starts from zero.
                    slot.cold = True
                state.set_sign(b, kkt_mod.classify(xr, yr, Ab_csr @ xr, lb, ub))
            if not polished[b]:  # the backward's active set is the returned point's
                state.set_sign(b, kkt_mod.classify(x, y, Ab_csr @ x, lb, ub))
        X[b], Y[b] = x, y
        status[b] = int(st)
    state.ok = status == int(Status.SOLVED)
    return RawSparseSolution(X, Y, status, iters, polished, state)


def _reset_status(slot: _Slot, qb: np.ndarray) -> None:
    """Make OSQP forget its last status before a resumed solve. OSQP 1.1 resets ``info.status``
    only on a data update: a solve after ``update_settings`` alone that stops at its iteration
    limit reports the *previous* solve's "solved" (a 3-variable LP shows it; in the polish retry
    below it had returned SOLVED with x diverging to 1e33). Re-setting q (same values) is the
    cheapest data update; it keeps the iterate."""
    binding = getattr(slot.solver, "_solver", None)
    if binding is not None and hasattr(binding, "update_data_vec"):
        binding.update_data_vec(q=qb, l=None, u=None)
    else:  # pragma: no cover - other OSQP versions
        slot.solver.update(q=qb)


def _converged(osqp, res, max_iter: int) -> bool:
    """OSQP says solved and the solve did not stop at its iteration limit (a second guard against
    the stale status above)."""
    return res.info.status_val == osqp.SolverStatus.OSQP_SOLVED and res.info.iter < max_iter


def _solve_reused(slot: _Slot, settings: dict):
    """A cached solver's solve with its iteration budget capped at ``REUSE_ITER_FACTOR`` times its
    last successful solve's (see ``options.py``); a failure goes on to a fresh solver."""
    full = settings["max_iter"]
    cap = full if slot.last_iter is None else min(full, max(opts.REUSE_MIN_ITER, opts.REUSE_ITER_FACTOR * slot.last_iter))
    if cap == full:
        return slot.solver.solve(raise_error=False)
    slot.solver.update_settings(max_iter=cap)
    try:
        return slot.solver.solve(raise_error=False)
    finally:
        slot.solver.update_settings(max_iter=full)


def _set_up(osqp, entry, b: int, data: SparseQPData, Pb, qb, Ab, lb, ub, options: OSQPOptions, settings: dict,
            cache: SolverCache) -> _Slot:
    """A new OSQP solver for batch slot ``b`` of ``entry`` (replacing the slot's old one)."""
    solver = osqp.OSQP(algebra="builtin")
    solver.setup(
        kkt_mod.csc(data.P_pattern, Pb), qb, kkt_mod.csc(data.A_pattern, Ab), lb, ub,
        **options.setup_settings(),
    )
    cache.stats.setups += 1
    slot = _Slot(solver, Pb.copy(), Ab.copy(), dict(settings))
    if b < len(entry.slots):
        entry.slots[b] = slot
    else:
        entry.slots.append(slot)
    return slot


def _update(slot: _Slot, Pb, Ab, qb, lb, ub, settings: dict, cache: SolverCache) -> bool:
    """Bring a cached solver to the new values; False if OSQP rejected them.

    OSQP's Python ``update`` discards the C return code (a P that is no longer positive
    semidefinite, or non-finite data, is reported on stderr and the old values are silently
    kept), so the updates go through the binding, whose return code we check.
    """
    new_P = Pb.size and not np.array_equal(slot.P, Pb)
    new_A = Ab.size and not np.array_equal(slot.A, Ab)
    if new_P or new_A:
        binding = getattr(slot.solver, "_solver", None)
        Px = Pb if new_P else None
        Ax = Ab if new_A else None
        if binding is not None and hasattr(binding, "update_data_mat"):
            code = binding.update_data_mat(P_x=Px, P_i=None, A_x=Ax, A_i=None)
            if code:
                return False
        else:  # pragma: no cover - other OSQP versions
            slot.solver.update(**{k: v for k, v in (("Px", Px), ("Ax", Ax)) if v is not None})
        slot.P, slot.A = Pb.copy(), Ab.copy()
        cache.stats.matrix_updates += 1
    binding = getattr(slot.solver, "_solver", None)
    if binding is not None and hasattr(binding, "update_data_vec"):
        inf = slot.solver.constant("OSQP_INFTY")  # what OSQP's own update clamps ±inf to
        code = binding.update_data_vec(q=qb, l=np.maximum(lb, -inf), u=np.minimum(ub, inf))
        if code:
            return False
    else:  # pragma: no cover - other OSQP versions
        slot.solver.update(q=qb, l=lb, u=ub)
    cache.stats.vector_updates += 1
    if slot.settings != settings:
        slot.solver.update_settings(**settings)
        slot.settings = dict(settings)
    if slot.cold and settings["warm_starting"]:
        slot.solver.warm_start(x=np.zeros_like(qb), y=np.zeros_like(lb))
    return True
