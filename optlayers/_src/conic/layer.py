"""``CvxpyLayer``: a DPP CVXPY problem as a differentiable PyTorch layer.

Pipeline of one call (B problems)::

    parameter tensors ──► θ̄ (B, p+1) ──► one sparse matmul ──► (c, A, b, P) per problem
        ──► SCS / Clarabel (threads, outside autograd) ──► (x, y, s), status
        ──► ConeSolutionMap (implicit derivative, ``derivative.py``) ──► outputs by selection

Autograd sees two Functions, both defined here at module level: :class:`SparseAffine` (the
parameter → data map, whose adjoint is the transposed sparse matrix) and
:class:`ConeSolutionMap` (data → solution, VJP and JVP through the residual-map Jacobian).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch.autograd import forward_ad
from torch.autograd.function import once_differentiable

from optlayers._src.conic import backends
from optlayers._src.conic import options as _opt
from optlayers._src.conic.canon import ConeProgram, canonicalize
from optlayers._src.conic.derivative import DerivativeSystem, ProgramIndex, jvp, refine, vjp
from optlayers._src.conic.options import BackwardMode, ConicOptions, ConicSolver, parse_solver_args
from optlayers._src.first_order import first_order_only
from optlayers._src.conic.qp_route import QPPlan, not_qp_reason
from optlayers._src.qp.options import Backend
from optlayers._src.status import OnFailure, Status, apply_failure_policy
from optlayers._src.tolerances import tolerances_for
from optlayers._src.transforms import refuse_transforms


# ---------------------------------------------------------------------------------------------
# Autograd Functions


class SparseAffine(torch.autograd.Function):
    """``Θ (k, p) ↦ Θ Mᵀ (k, R)`` for a fixed sparse M (R, p); the VJP is ``G M``.

    ``mats`` is a :class:`_SparseMats` (M and Mᵀ as SciPy CSR for CPU, torch CSR per device).
    """

    @staticmethod
    def forward(theta: torch.Tensor, mats: "_SparseMats") -> torch.Tensor:
        return mats.apply(theta, transpose=False)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mats = inputs[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return ctx.mats.apply(grad, transpose=True), None

    @staticmethod
    def jvp(ctx, dtheta, _):
        return ctx.mats.apply(dtheta, transpose=False)


class _SparseMats:
    """M (R, p) stored for fast products on CPU (SciPy CSR) and GPU (torch CSR, per device).

    When every row of M has at most one entry (each datum is one parameter entry times a
    constant — common for DPP problems whose parameters are matrix entries), products are a
    gather and a scatter-add in torch instead (no SciPy round trip; ~10× cheaper for the small
    batches of a training step)."""

    def __init__(self, M: sp.spmatrix):
        self.M = sp.csr_matrix(M)
        self.Mt = sp.csr_matrix(self.M.T)
        self._torch: dict[tuple, torch.Tensor] = {}
        counts = np.diff(self.M.indptr)
        self._select = None
        if counts.size and counts.max() <= 1:
            has = counts == 1
            start = self.M.indptr[:-1][has]
            cols = np.zeros(self.M.shape[0], dtype=np.int64)
            vals = np.zeros(self.M.shape[0])
            cols[has], vals[has] = self.M.indices[start], self.M.data[start]
            self._select = (cols, vals)

    @property
    def shape(self):
        return self.M.shape

    def apply(self, theta: torch.Tensor, transpose: bool) -> torch.Tensor:
        """``theta @ Mᵀ`` (or ``theta @ M`` with ``transpose``), theta (k, p) float64."""
        if self._select is not None:
            key = ("select", theta.device)
            sel = self._torch.get(key)
            if sel is None:
                sel = self._torch[key] = (torch.as_tensor(self._select[0], device=theta.device),
                                          torch.as_tensor(self._select[1], dtype=torch.float64, device=theta.device))
            cols, vals = sel
            if not transpose:
                return theta.index_select(1, cols) * vals
            return theta.new_zeros(theta.shape[0], self.M.shape[1]).index_add_(1, cols, theta * vals)
        mat = self.Mt if transpose else self.M
        if theta.device.type == "cpu":
            th = theta.detach().numpy()
            out = np.asarray(mat @ th.T).T
            return torch.from_numpy(np.ascontiguousarray(out))
        key = (transpose, theta.device)
        T = self._torch.get(key)
        if T is None:
            coo = mat.tocoo()
            T = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, mat.shape,
                                        dtype=torch.float64, device=theta.device).to_sparse_csr()
            self._torch[key] = T
        return (T @ theta.detach().T).T.contiguous()


def _affine(theta: torch.Tensor, mats: _SparseMats) -> torch.Tensor:
    """``theta @ Mᵀ``, differentiable: plain torch ops (a gather) when M is a selection with
    scales (at most one entry per row), else :class:`SparseAffine`."""
    if mats._select is not None:
        return mats.apply(theta, transpose=False)   # index_select * vals: autograd handles it
    return SparseAffine.apply(theta, mats)


class ConeSolutionMap(torch.autograd.Function):
    """``(c, A, b, P; x*, y*, s*) ↦ (x*, y*)`` with the implicit derivative of ``derivative.py``.

    ``c`` (B|1, n), ``A`` (B|1, nnz_A), ``b`` (B|1, m), ``P`` (B|1, nnz_P) or ``None`` are the
    differentiable program data (a leading 1: shared by the batch); ``x`` (B, n), ``y``, ``s``
    (B, m) the solver's solution and ``ok`` (B,) which problems solved — plain inputs.
    ``index`` is the layer's :class:`ProgramIndex` and ``mode`` the :class:`BackwardMode`.
    """

    @staticmethod
    def forward(c, A, b, P, x, y, s, ok, index, mode):
        return x.clone(), y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        c, A, b, P, x, y, s, ok, index, mode = inputs
        ctx.save_for_backward(c, A, b, P, x, y, s, ok)
        ctx.save_for_forward(c, A, b, P, x, y, s, ok)
        ctx.index, ctx.mode = index, mode
        ctx.set_materialize_grads(False)

    @staticmethod
    @first_order_only('CvxpyLayer')
    def backward(ctx, gx, gy):
        c, A, b, P, x, y, s, ok = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        if not any(needs) or (gx is None and gy is None):
            return (None,) * 10
        system = DerivativeSystem(ctx.index, A, P, x, y, s, ok, ctx.mode)
        gc, gA, gb, gP = vjp(system, c, A, b, P, gx, gy, needs)
        return gc, gA, gb, gP, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, dc, dA, db, dP, *_):
        c, A, b, P, x, y, s, ok = ctx.saved_tensors
        system = DerivativeSystem(ctx.index, A, P, x, y, s, ok, ctx.mode)
        return jvp(system, dc, dA, db, dP)


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ConicSolution:
    """Result of a :class:`CvxpyLayer` call with ``return_solution=True``.

    Attributes:
        values: tuple of the requested outputs (as the plain call returns), differentiable.
        status: (*batch) int8 :class:`~optlayers.Status` per problem (0 = solved).
        iterations: (*batch) int32 solver iterations per problem.
        refine_steps: (*batch) int32 Newton refinement steps taken per problem (0: the solver's
            point was accurate enough).
        solver_status: the solver's own status string per problem (flat list).
        backend: name of the solver.
    """

    values: tuple
    status: torch.Tensor
    iterations: torch.Tensor
    refine_steps: torch.Tensor
    solver_status: list[str]
    backend: str

    @property
    def ok(self) -> torch.Tensor:
        return self.status == Status.SOLVED


def _resolve_solver(solver) -> ConicSolver:
    """``None``/``"auto"`` → AUTO; ``"qp"``; ``"scs"``/``cp.SCS``/``"diffcp"`` (cvxpylayers'
    default, SCS underneath) → SCS; ``"clarabel"``/``cp.CLARABEL`` → Clarabel."""
    return ConicSolver.resolve(solver)


def _flatten_f(t: torch.Tensor, lead: int) -> torch.Tensor:
    """Flatten the trailing dims of ``t`` in Fortran (column-major) order, keeping ``lead`` dims."""
    k = t.dim() - lead
    if k <= 1:
        return t.reshape(t.shape[:lead] + (-1,))
    perm = list(range(lead)) + list(range(t.dim() - 1, lead - 1, -1))
    return t.permute(perm).reshape(t.shape[:lead] + (-1,))


def _unflatten_f(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, prod(shape)) in Fortran order → (B, *shape)."""
    if len(shape) <= 1:
        return t.reshape((t.shape[0],) + shape)
    r = t.reshape((t.shape[0],) + tuple(reversed(shape)))
    return r.permute([0] + list(range(len(shape), 0, -1)))


class _Unset:
    """'not computed yet' — one object, also after pickling or deep-copying a layer."""

    def __reduce__(self):
        return "_UNSET"


_UNSET = _Unset()


_SIGN_TESTS = {
    "nonneg": (lambda t: t >= 0, "nonnegative"),
    "nonpos": (lambda t: t <= 0, "nonpositive"),
    "pos": (lambda t: t > 0, "positive"),
    "neg": (lambda t: t < 0, "negative"),
}


def _check_declared(t: torch.Tensor, slot, label: str) -> None:
    """The value constraints a parameter was declared with (``nonneg=True``, ``PSD=True``, …),
    which the problem's convexity (DCP) relies on — as CVXPY checks ``Parameter.value``. A
    negative ``λ`` in ``λ·sum_squares(x)`` or an indefinite ``S`` in ``quad_form(x, S)`` makes the
    program nonconvex, and the solvers then return *some* stationary point marked solved.
    PSD/NSD: the eigenvalues of the triangle CVXPY reads (the upper one) must be ≥ −tol·max|S|
    (resp. ≤), tol the dtype's ``psd_tol`` — one ``eigvalsh`` per batch element."""
    if slot.sign is not None:
        test, word = _SIGN_TESTS[slot.sign]
        if not bool(test(t).all()):
            raise ValueError(f"{label} was declared {slot.sign}=True: its values must be {word} (the problem's "
                             "convexity relies on it)")
    if slot.definite is not None and t.numel():
        scale = t.abs().amax(dim=(-2, -1)).clamp_min(1.0)
        eig = torch.linalg.eigvalsh(t.detach(), UPLO="U")
        tol = tolerances_for(t.dtype).psd_tol
        bad = (eig[..., 0] < -tol * scale) if slot.definite == "PSD" else (eig[..., -1] > tol * scale)
        if bool(bad.any()):
            word = "positive" if slot.definite == "PSD" else "negative"
            raise ValueError(f"{label} was declared {slot.definite}=True: its values must be symmetric {word} "
                             f"semidefinite (the problem's convexity relies on it)")


class CvxpyLayer(torch.nn.Module):
    r"""A DPP CVXPY problem as a differentiable layer — drop-in for ``cvxpylayers.torch.CvxpyLayer``.

    The problem is canonicalized **once**, here, into a cone program (zero, nonnegative,
    second-order, PSD and exponential cones, with an optional quadratic objective)

    .. math:: \min_x\ \tfrac12 x^\top P(\theta) x + c(\theta)^\top x \quad
              \text{s.t.}\ A(\theta)x + s = b(\theta),\ s \in \mathcal K

    whose data are affine in the parameters θ and stored as one sparse matrix; each call
    assembles the batch with one sparse matmul, solves it — LPs/QPs (zero and nonnegative
    cones only) with the batched dense interior point ``ol.solve_qp`` in one call (the "qp"
    route, ``qp_route.py``), other programs with SCS or Clarabel in parallel threads — and
    returns the requested variables (and constraint duals). Gradients flow to every parameter
    tensor, reverse and forward mode: through ``solve_qp``'s KKT backward on the qp route, else
    through our implicit derivative of the cone program's residual map
    (``optlayers/_src/conic/derivative.py``).

    Args:
        problem: a ``cvxpy.Problem`` that is DPP (``problem.is_dpp()``; with ``gp=True``,
            ``problem.is_dgp(dpp=True)``). A parametric ``quad_form(x, S)`` in the objective
            is accepted too (its P enters the program's quadratic term).
        parameters: the problem's ``cvxpy.Parameter`` s, all of them, in the order the tensors
            will be passed to the call.
        variables: what to return, in order: variables of the problem, and for duals either a
            constraint of the problem (if it has one dual variable) or one of its
            ``constraint.dual_variables`` (the cvxpylayers 1.x spelling).
        gp: the problem is a log-log convex (geometric) program; parameters are passed in
            natural (positive) units, log-transformed inside, and primal outputs are
            exponentiated back (duals are those of the log-log transformed problem).
        solver: ``"auto"`` (default), ``"qp"``, ``"scs"`` or ``"clarabel"`` (strings,
            :class:`~optlayers.conic.ConicSolver` or ``ol.Backend``; cvxpylayers' ``cp.SCS`` /
            ``cp.CLARABEL`` / ``"diffcp"`` spellings are accepted). ``"auto"`` solves LP/QP
            programs (zero and nonnegative cones only) of moderate size with the batched dense
            interior point ``ol.solve_qp`` (``"qp"``, differentiated through its KKT backward)
            and everything else with SCS; see ``docs/conic.md``.
        solver_args: default solver settings (the same keys as per call, see ``forward``).
        backward: ``"auto"`` (default), ``"dense"`` or ``"iterative"`` (see
            :class:`~optlayers._src.conic.options.BackwardMode`).
        on_failure: ``"raise"`` (default) raises :class:`~optlayers.SolverError` naming the
            failed batch indices; ``"nan"`` returns NaN for them (read the status with
            ``return_solution=True``).
        return_solution: return a :class:`ConicSolution` (values, status, iterations) instead
            of the plain tuple.
        n_jobs: worker threads for the batch (default: all CPUs).
        warm_start: start each problem from the previous call's solution of the same batch
            index (SCS only; used when the batch size matches).
        verbose: print the solver's log.

    Call: ``layer(*params, solver_args=None, warm_start=None)`` → tuple of tensors.
        Each ``params[i]`` has the shape of ``parameters[i]`` (unbatched, shared by the batch)
        or ``(*batch, *parameters[i].shape)``; the batch shapes of the batched ones broadcast.
        Outputs have shape ``(*batch, *variable.shape)`` — no batch dimensions if no parameter
        had any. float32 and float64 (the solve is in float64; outputs follow the inputs'
        dtype and device). The gradient of an unbatched parameter is the sum over the batch.
    """

    def __init__(
        self,
        problem,
        parameters: Sequence,
        variables: Sequence,
        gp: bool = False,
        solver: ConicSolver | Backend | str | None = None,
        solver_args: dict[str, Any] | None = None,
        *,
        backward: BackwardMode | str = "auto",
        on_failure: OnFailure | str = "raise",
        return_solution: bool = False,
        n_jobs: int | None = None,
        warm_start: bool = False,
        verbose: bool = False,
    ):
        super().__init__()
        backend = _resolve_solver(solver)
        base = ConicOptions(backend=backend, backward=BackwardMode.resolve(backward), n_jobs=n_jobs,
                            warm_start=bool(warm_start), verbose=bool(verbose))
        self.options = parse_solver_args(solver_args or {}, base=base)
        self.on_failure = OnFailure.resolve(on_failure)
        self.return_solution = bool(return_solution)
        # (not list(...): a bare Parameter is iterable and must fail as "not a list")
        self.program: ConeProgram = canonicalize(problem, parameters, variables, gp=bool(gp))
        self._mats_cache: dict[tuple, tuple] = {}
        self._lower: dict[tuple, Any] = {}
        self._index: dict[torch.device, ProgramIndex] = {}
        self._solver_cache = backends.SolverCache()
        self._warm: tuple | None = None
        self._scs_scale: float | None = None
        self._qp_plan: Any = _UNSET
        if self.options.backend in (ConicSolver.AUTO, ConicSolver.QP):
            self._route(self.options)  # builds the QP plan; a 'qp' layer of an SOCP fails here

    # -- helpers ----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        p = self.program
        solver = repr(self.options.backend.value)
        try:
            chosen = self._route(self.options).backend
        except ValueError:  # pragma: no cover - the constructor already checked
            chosen = self.options.backend
        if chosen is not self.options.backend:
            solver += f" -> {chosen.value!r}"
        if chosen is ConicSolver.QP:
            solver += f" ({self.qp_plan().describe()})"
        return (f"n={p.n}, m={p.m}, cones={p.dims.describe()}, solver={solver}, "
                f"backward={self.options.backward.value!r}, on_failure={self.on_failure.value!r}")

    def _index_on(self, device: torch.device) -> ProgramIndex:
        idx = self._index.get(device)
        if idx is None:
            idx = self._index[device] = ProgramIndex.of(self.program, device)
        return idx

    def _orders(self, batched: tuple[bool, ...]) -> tuple[list[int], list[int]]:
        """Parameters entering θ's batched and shared column groups, in parameter order."""
        params = self.program.params
        order_b = [i for i, is_b in enumerate(batched) if is_b and params[i].col is not None]
        order_s = [i for i, is_b in enumerate(batched) if not is_b and params[i].col is not None]
        return order_b, order_s

    def _mats(self, batched: tuple[bool, ...], qp: bool):
        """Sparse maps of the batched and of the shared parameter columns, for the cone
        program's data (c, vals(A), b, vals(P)) or, with ``qp``, for the qp route's blocks
        (``QPPlan.data_map``); cached per pattern. Returns ``(Mb, Ms, sizes, varying)``:
        ``varying[k]`` tells whether block k depends on a batched parameter."""
        key = (batched, qp)
        got = self._mats_cache.get(key)
        if got is not None:
            return got
        prog = self.program
        cols_b, cols_s = [], []
        for slot, is_b in zip(prog.params, batched):
            if slot.col is None:
                continue
            rng = list(range(slot.col, slot.col + slot.lower.size))
            (cols_b if is_b else cols_s).extend(rng)
        cols_s.append(prog.n_theta - 1)  # the constant column
        if qp:
            M, sizes = self.qp_plan().data_map()
        else:
            M, sizes = prog.M, prog.split_sizes()
        Mc = M.tocsc()
        Mb = _SparseMats(Mc[:, cols_b]) if cols_b else None
        Ms = _SparseMats(Mc[:, cols_s])
        bounds = np.cumsum([0] + list(sizes))
        varying = [False] * len(sizes)
        if Mb is not None:
            rows = np.unique(Mb.M.tocoo().row)
            for k in range(len(sizes)):
                varying[k] = bool(((rows >= bounds[k]) & (rows < bounds[k + 1])).any())
            if len(cols_s) == 1:
                # Every parameter is batched: fold the constant column into the batched map
                # (θ_b gets a column of ones) when that keeps it a selection — then the varying
                # blocks need no "+ shared part" and the constant blocks are cached constants.
                folded = _SparseMats(Mc[:, cols_b + cols_s])
                if folded._select is not None:
                    Mb = folded
                    Ms = None
        got = (Mb, Ms, list(sizes), tuple(varying))
        self._mats_cache[key] = got
        return got

    def _assemble(self, theta_s, theta_b, batched, qp: bool) -> list[torch.Tensor]:
        """θ̄ → data blocks with one sparse matmul per column group; a block is (B, k) if it
        depends on a batched parameter, else (1, k)."""
        Mb, Ms, sizes, varying = self._mats(batched, qp)
        if Ms is None:  # constant column folded into Mb (see _mats); theta_s is [[1]]
            data_b = _affine(torch.cat([theta_b, theta_s.expand(theta_b.shape[0], 1)], 1), Mb).split(sizes, 1)
            const = self._constant_blocks(batched, qp, Mb, sizes, theta_s.device)
            return [db if v else cs for db, cs, v in zip(data_b, const, varying)]
        data_s = _affine(theta_s, Ms).split(sizes, 1)                             # (1, ·)
        if Mb is None:
            return list(data_s)
        data_b = _affine(theta_b, Mb).split(sizes, 1)                             # (B, ·)
        return [ds + db if v else ds for ds, db, v in zip(data_s, data_b, varying)]

    def _constant_blocks(self, batched, qp: bool, Mb: _SparseMats, sizes, device) -> tuple:
        """The (1, k) data blocks of a folded map at θ_b = 0 (its constant column), cached."""
        key = ("const", batched, qp, device)
        got = self._lower.get(key)
        if got is None:
            const = np.asarray(Mb.M[:, -1].todense()).reshape(1, -1)
            got = self._lower[key] = torch.as_tensor(const, dtype=torch.float64, device=device).split(sizes, 1)
        return got

    # -- call -------------------------------------------------------------------------------
    def forward(self, *params: torch.Tensor, solver_args: dict[str, Any] | None = None,
                warm_start: bool | None = None):
        """Solve the problem for the given parameter values (see the class docstring).

        ``solver_args`` (per call, overriding the layer's): ``eps`` (both ``eps_abs`` and
        ``eps_rel``), ``eps_abs``, ``eps_rel``, ``eps_infeas``, ``max_iters``,
        ``solve_method``/``solver`` (``"auto"``, ``"qp"``, ``"SCS"``, ``"Clarabel"``),
        ``mode``/``backward`` (``"dense"``, ``"iterative"``; diffcp's ``"lsqr"``/``"lsmr"``
        mean iterative), ``n_jobs``, ``warm_start``, ``verbose``, and any setting of the solver
        itself.

        Not under ``torch.func`` transforms (a clear ``NotImplementedError``): the layer batches
        natively, so give the parameters a leading batch dimension instead of ``vmap``.
        """
        refuse_transforms("CvxpyLayer", params, (
            "It batches natively: give the parameters a leading batch dimension instead of vmap, "
            "and take Jacobians with torch.autograd.functional.jacobian."))
        options = self.options.with_args(solver_args)
        if warm_start is not None:
            options = dataclasses.replace(options, warm_start=bool(warm_start))
        options = self._route(options)
        if options.backend is ConicSolver.SCS and self._scs_scale is not None and "scale" not in options.extra_dict():
            options = dataclasses.replace(options, extra=options.extra + (("scale", self._scs_scale),))
        prog = self.program
        values, batch_shape, dtype, device = self._check(params)
        B = math.prod(batch_shape) if batch_shape else 1
        if B == 0:
            return self._empty_batch(values, tuple(batch_shape), dtype, device, options)
        batched = tuple(v.dim() > len(slot.shape) for v, slot in zip(values, prog.params))

        # θ̄ = (θ_batched | θ_shared, 1) → data with one sparse matmul per column group.
        order_b, order_s = self._orders(batched)
        one = torch.ones(1, 1, dtype=torch.float64, device=device)
        theta_s = torch.cat([self._column_values(values[i], i, 0) for i in order_s] + [one], 1)
        theta_b = torch.cat([self._column_values(values[i], i, B) for i in order_b], 1) if order_b else None
        self._check_finite(theta_s, theta_b, values)

        if options.backend is ConicSolver.QP:
            x, y, status, iterations, refine_steps, solver_status = self._forward_qp(theta_s, theta_b, batched, B, options)
        else:
            c, A, b, P = self._assemble(theta_s, theta_b, batched, qp=False)
            if prog.P_rows is None:
                P = None
            x, y, status, iterations, refine_steps, solver_status = self._forward_cone(c, A, b, P, B, options)

        outs = []
        for k, om in enumerate(prog.outputs):
            src = x if om.source == "x" else y
            idx, scale = self._output_index(k, device)
            val = src.index_select(1, idx)
            val = _unflatten_f(val if scale is None else val * scale, om.shape)
            if om.exp:
                val = torch.exp(val)
            outs.append(val.to(dtype).reshape(tuple(batch_shape) + om.shape))
        status = status.to(torch.int8).reshape(tuple(batch_shape))
        outs = apply_failure_policy(status, outs, self.on_failure, what="conic")
        if not self.return_solution:
            return tuple(outs)
        return ConicSolution(
            values=tuple(outs), status=status,
            iterations=iterations.to(device=device, dtype=torch.int32).reshape(tuple(batch_shape)),
            refine_steps=refine_steps.reshape(tuple(batch_shape)),
            solver_status=list(solver_status), backend=options.backend.value,
        )

    def _empty_batch(self, values, batch_shape: tuple[int, ...], dtype, device, options):
        """A batch without problems: empty outputs, still on the graph of the parameters that
        require grad (so a loss that sums them backpropagates zero gradients, not an error)."""
        anchor = sum((v.sum() * 0 for v in values if v.requires_grad), torch.zeros((), dtype=dtype, device=device))
        outs = tuple(anchor.to(dtype).expand(batch_shape + om.shape).clone() for om in self.program.outputs)
        if not self.return_solution:
            return outs
        empty = torch.zeros(batch_shape, dtype=torch.int32, device=device)
        return ConicSolution(values=outs, status=empty.to(torch.int8), iterations=empty, refine_steps=empty.clone(),
                             solver_status=[], backend=options.backend.value)

    def _output_index(self, k: int, device: torch.device):
        """Index (and scale, ``None`` if all ones) tensors of output k on ``device`` (cached)."""
        key = ("out", k, device)
        got = self._lower.get(key)
        if got is None:
            om = self.program.outputs[k]
            scale = None if np.all(om.scale == 1.0) else torch.as_tensor(om.scale, dtype=torch.float64, device=device)
            got = self._lower[key] = (torch.as_tensor(om.index, dtype=torch.long, device=device), scale)
        return got

    # -- routes -----------------------------------------------------------------------------
    def qp_plan(self) -> QPPlan | None:
        """The program as a dense QP (``qp_route.QPPlan``), or ``None`` if it has other cones."""
        if self._qp_plan is _UNSET:
            self._qp_plan = None if not_qp_reason(self.program) else QPPlan(self.program)
        return self._qp_plan

    def _route(self, options: ConicOptions) -> ConicOptions:
        """Resolve ``"auto"`` (and check ``"qp"``) for this program; returns the options with the
        concrete solver."""
        solver = options.backend
        if solver is ConicSolver.QP:
            if self.qp_plan() is None:
                raise ValueError(not_qp_reason(self.program))
            return options
        if solver is ConicSolver.SCS and self.program.m == 0:
            raise ValueError(
                "the problem's cone program has no constraint rows, which SCS cannot take; use "
                "solver='auto' or 'qp' (the dense QP solver) or 'clarabel'"
            )
        if solver is not ConicSolver.AUTO:
            return options
        scs_only, qp_keys = options.scs_only_settings(), options.qp_settings()
        if scs_only and qp_keys:
            raise ValueError(
                f"solver_args mixes SCS settings {scs_only} with qp settings {qp_keys}; pass "
                "solver='scs' or solver='qp' and only that solver's settings"
            )
        if qp_keys:
            if self.qp_plan() is None:
                raise ValueError(f"solver_args {qp_keys} are settings of the qp solver, but " + not_qp_reason(self.program))
            return dataclasses.replace(options, backend=ConicSolver.QP)
        plan = self.qp_plan()
        if not scs_only and plan is not None and (plan.fits_auto() or self.program.m == 0):
            # (no constraint rows: SCS cannot take the program; any size goes to the qp route)
            return dataclasses.replace(options, backend=ConicSolver.QP)
        return dataclasses.replace(options, backend=ConicSolver.SCS)

    def _forward_qp(self, theta_s, theta_b, batched, B: int, options: ConicOptions):
        """The qp route (``qp_route.py``): one batched ``solve_qp``, differentiable as is.

        Problems it leaves at the iteration limit or with a numerical error (no certificate) are
        re-solved by SCS (with SCS's default iteration cap), so that they get SCS's
        infeasibility/unboundedness certificates or its solution (then differentiated by
        ``derivative.py``)."""
        device = theta_s.device
        plan = self.qp_plan()
        blocks = self._assemble(theta_s, theta_b, batched, qp=True)
        x, y, status, iterations, kernel = plan.solve(blocks, B, options)
        st = status.cpu().numpy()
        names = {int(v): f"qp/{kernel}: {Status(int(v)).name.lower()}" for v in np.unique(st)}
        solver_status = [names[v] for v in st.tolist()]
        refine_steps = torch.zeros(B, dtype=torch.int32, device=device)
        retry = np.nonzero((st == Status.MAX_ITER) | (st == Status.NUMERICAL_ERROR))[0]
        if retry.size and self.program.m > 0:  # (SCS cannot take a program without rows)
            sel = torch.as_tensor(retry, device=device)
            c, A, b, P = (t if t.shape[0] == 1 else t[sel] for t in self._assemble(theta_s, theta_b, batched, qp=False))
            if self.program.P_rows is None:
                P = None
            # (SCS's own iteration cap: an interior-point cap means nothing to ADMM.)
            scs_opts = dataclasses.replace(
                options, backend=ConicSolver.SCS, warm_start=False, max_iters=None,
                extra=tuple((k, v) for k, v in options.extra if k in _opt.SCS_SETTINGS),
            )
            xs, ys, sts, its, rs, ss = self._forward_cone(c, A, b, P, int(retry.size), scs_opts, remember=False)
            x = x.index_copy(0, sel, xs)
            y = y.index_copy(0, sel, ys)
            status = status.index_copy(0, sel, sts.to(status.dtype))
            iterations = iterations.index_copy(0, sel, its.to(device=device, dtype=iterations.dtype))
            refine_steps = refine_steps.index_copy(0, sel, rs)
            for k, i in enumerate(retry):
                solver_status[i] += f" -> scs: {ss[k]}"
        return x, y, status, iterations, refine_steps, solver_status

    def _forward_cone(self, c, A, b, P, B: int, options: ConicOptions, remember: bool = True):
        """SCS / Clarabel on every problem (threads), Newton refinement, and the implicit
        derivative of ``derivative.py`` attached by :class:`ConeSolutionMap`."""
        device = c.device
        with torch.no_grad():
            raw = self._solve(c, A, b, P, B, options)
        # SCS returns NaN iterates for infeasible/unbounded SDPs (with the right status); a
        # non-finite point is never a solution, nor a starting point for the refinement.
        finite = np.isfinite(raw.x).all(1) & np.isfinite(raw.y).all(1) & np.isfinite(raw.s).all(1)
        if not finite.all():
            raw.status[(raw.status == Status.SOLVED) & ~finite] = Status.NUMERICAL_ERROR
            raw.inexact = raw.inexact & finite
        x = torch.as_tensor(raw.x, dtype=torch.float64, device=device)
        y = torch.as_tensor(raw.y, dtype=torch.float64, device=device)
        s = torch.as_tensor(raw.s, dtype=torch.float64, device=device)
        status = torch.as_tensor(raw.status, device=device)
        ok = status == Status.SOLVED
        if remember:
            self._remember_scale(raw)
        refine_steps = torch.zeros(B, dtype=torch.int32, device=device)
        if options.refine:
            # Problems the solver left "inaccurate" (iteration limit with a solution estimate) are
            # refined too, and count as solved when the refinement certifies them.
            rescue = torch.as_tensor(raw.inexact, device=device) & ~ok
            with torch.no_grad():
                x, y, s, refine_steps, rel = refine(
                    self._index_on(device), c.detach(), A.detach(), b.detach(),
                    None if P is None else P.detach(), x, y, s, ok | rescue, options.backward,
                )
            certified = rescue & (rel <= _opt.REFINE_TOL)
            if bool(certified.any()):
                status = torch.where(certified, torch.full_like(status, Status.SOLVED), status)
                ok = status == Status.SOLVED
        if options.warm_start and remember:
            self._warm = tuple(t.detach().cpu().numpy().copy() for t in (x, y, s))
        if not bool(ok.all()):
            x = torch.where(ok.unsqueeze(1), x, torch.zeros_like(x))
            y = torch.where(ok.unsqueeze(1), y, torch.zeros_like(y))
            s = torch.where(ok.unsqueeze(1), s, torch.zeros_like(s))
        if self._needs_derivative(c, A, b, P):
            x, y = ConeSolutionMap.apply(c, A, b, P, x, y, s, ok, self._index_on(device), options.backward)
        iterations = torch.as_tensor(raw.iterations)
        return x, y, status, iterations, refine_steps, list(raw.solver_status)

    def _remember_scale(self, raw) -> None:
        """Scale memory (SCS): the next call starts at this call's median adapted scale."""
        good = (raw.status == Status.SOLVED) & np.isfinite(raw.scale) & (raw.scale > 0)
        if good.any():
            grid = _opt.SCS_SCALE_GRID
            self._scs_scale = float(10 ** (np.round(grid * np.median(np.log10(raw.scale[good]))) / grid))

    def _needs_derivative(self, *ts) -> bool:
        ts = [t for t in ts if t is not None]
        if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
            return True
        return any(forward_ad.unpack_dual(t).tangent is not None for t in ts)

    def _solve(self, c, A, b, P, B: int, options: ConicOptions):
        prog = self.program

        def np_rows(t: torch.Tensor, rows: int) -> np.ndarray:
            a = t.detach().to("cpu", torch.float64).numpy()
            return a if a.shape[0] == rows else np.broadcast_to(a, (rows,) + a.shape[1:])

        data = backends.BatchData(
            c=np_rows(c, B), A=np.ascontiguousarray(A.detach().cpu().numpy()), b=np_rows(b, B),
            P=None if P is None else np.ascontiguousarray(P.detach().cpu().numpy()), prog=prog,
        )
        warm = None
        if options.warm_start and self._warm is not None and self._warm[0].shape[0] == B:
            warm = self._warm
        return backends.get(options.backend).solve(data, options, warm, self._solver_cache)

    def _column_values(self, value: torch.Tensor, i: int, B: int) -> torch.Tensor:
        """Parameter i's entries as columns of θ: (B, k) batched (B > 0) or (1, k) shared."""
        slot = self.program.params[i]
        v = value.to(torch.float64).reshape((B or 1,) + slot.shape)
        flat = _flatten_f(v, 1)
        key = (i, v.device)
        lower = self._lower.get(key)
        if lower is None:
            full = np.array_equal(slot.lower, np.arange(flat.shape[1]))
            lower = self._lower[key] = False if full else torch.as_tensor(slot.lower, device=v.device)
        if lower is not False:
            flat = flat[:, lower]
        return torch.log(flat) if slot.log else flat

    def _check_finite(self, theta_s, theta_b, values) -> None:
        """Non-finite parameter values raise, naming the parameter (checked on θ, two
        reductions, instead of once per parameter)."""
        ok = torch.isfinite(theta_s).all()
        fine = bool(ok if theta_b is None else ok & torch.isfinite(theta_b).all())
        slots = self.program.params
        if fine and all(slot.col is not None and not slot.partial for slot in slots):
            return
        for i, (t, slot) in enumerate(zip(values, slots)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"params[{i}] ({slot.name}) has non-finite entries (NaN or Inf)")

    def _check(self, params: Sequence) -> tuple[list[torch.Tensor], tuple[int, ...], torch.dtype, torch.device]:
        """Validate the call's tensors; broadcast batched ones to the common batch shape."""
        slots = self.program.params
        if len(params) != len(slots):
            raise ValueError(
                f"CvxpyLayer expects {len(slots)} parameter tensors (one per cvxpy.Parameter, in the "
                f"order of `parameters`: {[s.name for s in slots]}); got {len(params)}"
            )
        dtypes, devices, batches = set(), set(), []
        for i, (t, slot) in enumerate(zip(params, slots)):
            label = f"params[{i}] ({slot.name})"
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{label} must be a torch.Tensor; got {type(t).__name__}")
            if t.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"{label} must be float32 or float64; got {t.dtype}")
            k = len(slot.shape)
            if t.dim() < k or tuple(t.shape[t.dim() - k:]) != slot.shape:
                raise ValueError(
                    f"{label} must have shape {slot.shape} (unbatched) or (*batch, {', '.join(map(str, slot.shape))})"
                    f" (batched); got {tuple(t.shape)}"
                )
            batches.append(tuple(t.shape[: t.dim() - k]))
            dtypes.add(t.dtype)
            devices.add(t.device)
            if slot.log and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{label} has non-finite entries (NaN or Inf)")
            if slot.log and not bool((t > 0).all()):
                raise ValueError(f"{label} must be positive: gp=True takes the log of this parameter")
            _check_declared(t, slot, label)
        if len(dtypes) > 1:
            raise ValueError(f"all parameter tensors must share one dtype; got {sorted(map(str, dtypes))}")
        if len(devices) > 1:
            raise ValueError(f"all parameter tensors must be on one device; got {sorted(map(str, devices))}")
        try:
            batch_shape = torch.broadcast_shapes(*batches) if batches else ()
        except RuntimeError:
            raise ValueError(
                "the batch dimensions of the parameter tensors do not broadcast: "
                + ", ".join(f"params[{i}] ({s.name}): {b}" for i, (s, b) in enumerate(zip(slots, batches)))
            ) from None
        values = []
        for t, slot, bs in zip(params, slots, batches):
            if bs and bs != tuple(batch_shape):
                t = t.expand(tuple(batch_shape) + slot.shape)
            values.append(t)
        return values, tuple(batch_shape), dtypes.pop(), devices.pop()
