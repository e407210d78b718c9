"""Public entry points of the sparse QP layer: :func:`solve_sparse_qp`, :class:`SparseQPLayer`,
and the route :func:`optlayers.solve_qp` takes for sparse data (``route.py``)."""

from __future__ import annotations

import dataclasses

import torch
from torch.autograd import forward_ad

from optlayers._src.sparse import scaling
from optlayers._src.sparse.backward import SparseQPSolutionMap
from optlayers._src.sparse.cache import SolverCache, default_cache
from optlayers._src.sparse.options import OSQPOptions
from optlayers._src.sparse.problem import SparseQPData, canonicalize
from optlayers._src.sparse.solver import solve_batch
from optlayers._src.status import OnFailure, Status, apply_failure_policy
from optlayers._src.transforms import refuse_transforms


@dataclasses.dataclass
class SparseQPSolution:
    """Solution of a batch of sparse QPs (``*`` is the broadcast batch shape).

    Attributes:
        x: (*, n) primal solution.
        y: (*, m) multipliers of ``l ≤ Ax ≤ u`` (OSQP's convention): ``y_i > 0`` when row i is at
            its upper bound, ``y_i < 0`` at its lower bound, 0 when inactive; stationarity reads
            ``Px + q + Aᵀy = 0``.
        status: (*,) int8 :class:`~optlayers.Status` codes (0 = solved).
        iterations: (*,) int32 ADMM iterations per problem.
        polished: (*,) bool — whether the active-set polish was accepted (then the solution is
            the exact KKT point, to round-off; otherwise it is OSQP's, to ``eps_abs``/``eps_rel``).
        backend: ``"osqp"``.

    ``x`` and ``y`` are differentiable. Failed problems hold NaN (only with ``on_failure="nan"``).
    """

    x: torch.Tensor
    y: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    polished: torch.Tensor
    backend: str = "osqp"

    @property
    def ok(self) -> torch.Tensor:
        """(*,) bool: which problems solved."""
        return self.status == Status.SOLVED


def _has_tangent(t: torch.Tensor) -> bool:
    return forward_ad.unpack_dual(t).tangent is not None


def run(data: SparseQPData, options: OSQPOptions, cache: SolverCache | None):
    """Solve canonical data; returns (x, y, status, iterations, polished) with the batch shape,
    ``x``/``y`` attached to autograd through the implicit derivative when the data needs it."""
    cache = cache if cache is not None else default_cache()
    scaled = scaling.plan(data)  # None unless the variables' or the objective's scale is far off
    work = data if scaled is None else scaled.apply(data)
    with torch.no_grad():
        raw = solve_batch(work, options, cache)
    dt, dev = data.dtype, data.device
    x = torch.from_numpy(raw.x).to(dtype=dt, device=dev)
    y = torch.from_numpy(raw.y).to(dtype=dt, device=dev)
    ts = work.tensors()
    if (torch.is_grad_enabled() and any(t.requires_grad for t in ts)) or any(_has_tangent(t) for t in ts):
        x, y = SparseQPSolutionMap.apply(*ts, x, y, raw.kkt)
    if scaled is not None:
        x, y = scaled.unscale(x, y)
    shape = tuple(data.batch_shape)
    x = x.reshape(shape + (data.n,))
    y = y.reshape(shape + (data.m,))
    status = torch.from_numpy(raw.status).to(dev).reshape(shape)
    iterations = torch.from_numpy(raw.iterations).to(dev).reshape(shape)
    polished = torch.from_numpy(raw.polished).to(dev).reshape(shape)
    return x, y, status, iterations, polished


def resolve_options(options: OSQPOptions | None, **settings) -> OSQPOptions:
    """``options`` as given, or built from the individual keyword settings (not both)."""
    given = {k: v for k, v in settings.items() if v is not None}
    if options is not None:
        if not isinstance(options, OSQPOptions):
            raise TypeError(f"options must be an optlayers.sparse.OSQPOptions; got {type(options).__name__}")
        if given:
            raise ValueError(
                f"pass either options=OSQPOptions(...) or individual settings ({', '.join(given)}), not both"
            )
        return options
    return OSQPOptions(**given)


_NO_TRANSFORMS = (
    "It batches natively: give the data a leading batch dimension instead of vmap, and take "
    "Jacobians with torch.autograd.functional.jacobian. Dense data with a dense backend "
    "(solve_qp) supports torch.func."
)


def solve_sparse_qp(
    P: torch.Tensor | None,
    q: torch.Tensor,
    A: torch.Tensor | None = None,
    l: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    *,
    return_solution: bool = False,
    on_failure: OnFailure | str = "raise",
    check_inputs: bool = True,
    eps_abs: float | None = None,
    eps_rel: float | None = None,
    max_iter: int | None = None,
    polish: bool | None = None,
    warm_start: bool | None = None,
    time_limit: float | None = None,
    options: OSQPOptions | None = None,
    cache: SolverCache | None = None,
) -> torch.Tensor | SparseQPSolution:
    """Solve a batch of sparse convex QPs with OSQP, differentiably::

        minimize_x  ½ xᵀ P x + qᵀ x    subject to   l ≤ A x ≤ u

    Two-sided rows are native: ``l_i = −inf`` or ``u_i = +inf`` for one-sided rows, ``l_i = u_i``
    for equalities.

    Args:
        P: (n, n) or (*, n, n) symmetric positive semidefinite, given with both triangles, as a
            torch sparse COO or CSR tensor (or dense: then every entry is treated as a
            structural nonzero), or ``None`` for an LP. A batched sparse tensor must have one
            sparsity pattern for the whole batch (values may differ; store explicit zeros to
            align patterns).
        q: (*, n) dense.
        A: (m, n) or (*, m, n), sparse COO/CSR or dense, or ``None`` (no constraints).
        l, u: (*, m) dense bounds (``None`` = −inf / +inf); ``l ≤ u`` elementwise.
            Leading batch dimensions ``*`` broadcast; data without them is shared by the batch
            (its gradient is the sum over the batch).
        return_solution: return a :class:`SparseQPSolution` (x, y, status, iterations, ...).
        on_failure: ``"raise"`` raises :class:`~optlayers.SolverError` naming the failed batch
            indices (infeasible, unbounded, iteration limit); ``"nan"`` NaN-fills them.
        check_inputs: check finiteness, ``l ≤ u``, symmetry and the diagonal sign of ``P``
            (positive semidefiniteness itself is checked by OSQP's factorization).
        eps_abs, eps_rel, max_iter, polish, warm_start, time_limit: the most used settings of
            :class:`~optlayers.sparse.OSQPOptions` (defaults 1e-6, 1e-6, 10,000, True, True,
            None); pass ``options=OSQPOptions(...)`` for all of them instead.
        cache: the :class:`~optlayers.sparse.SolverCache` holding OSQP solvers by sparsity
            pattern (default: a module-level cache). Calls with the same pattern update values
            and warm-start instead of setting up a new solver.

    Returns:
        ``x`` of shape (*, n), or a :class:`SparseQPSolution`.

    Gradients with respect to every input (the stored values of sparse inputs, every entry of
    dense ones) come from one back-solve per problem with the sparse LDLᵀ factorization of the
    active-set KKT matrix made by the polish; see ``optlayers/_src/sparse/backward.py``.
    """
    opts = resolve_options(
        options, eps_abs=eps_abs, eps_rel=eps_rel, max_iter=max_iter, polish=polish,
        warm_start=warm_start, time_limit=time_limit,
    )
    policy = OnFailure.resolve(on_failure)
    refuse_transforms("solve_sparse_qp (the OSQP route)", (P, q, A, l, u), _NO_TRANSFORMS)
    data = canonicalize(P, q, A, l, u, check_values=check_inputs)
    x, y, status, iterations, polished = run(data, opts, cache)
    x, y = apply_failure_policy(status, (x, y), policy, what="sparse QP")
    if not return_solution:
        return x
    return SparseQPSolution(x=x, y=y, status=status, iterations=iterations, polished=polished)


class SparseQPLayer(torch.nn.Module):
    """A batched sparse QP as a layer: ``layer(P, q, A, l, u) -> x`` (see :func:`solve_sparse_qp`).

    Options are fixed at construction. The layer owns its :class:`~optlayers.sparse.SolverCache`
    (``layer.cache``), so its OSQP solvers are reused — and warm-started — from one call to the
    next without interference from other layers.
    """

    def __init__(
        self,
        *,
        return_solution: bool = False,
        on_failure: OnFailure | str = "raise",
        check_inputs: bool = True,
        eps_abs: float | None = None,
        eps_rel: float | None = None,
        max_iter: int | None = None,
        polish: bool | None = None,
        warm_start: bool | None = None,
        time_limit: float | None = None,
        options: OSQPOptions | None = None,
        cache: SolverCache | None = None,
    ):
        super().__init__()
        self.options = resolve_options(
            options, eps_abs=eps_abs, eps_rel=eps_rel, max_iter=max_iter, polish=polish,
            warm_start=warm_start, time_limit=time_limit,
        )
        self.on_failure = OnFailure.resolve(on_failure)
        self.check_inputs = check_inputs
        self.return_solution = return_solution
        self.cache = cache if cache is not None else SolverCache()

    def forward(self, P, q, A=None, l=None, u=None):
        return solve_sparse_qp(
            P, q, A, l, u,
            return_solution=self.return_solution,
            on_failure=self.on_failure,
            check_inputs=self.check_inputs,
            options=self.options,
            cache=self.cache,
        )

    def extra_repr(self) -> str:
        return f"on_failure={self.on_failure.value!r}, {self.options}"
