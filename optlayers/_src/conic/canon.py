"""Canonicalization, once per layer: a DPP CVXPY problem → a cone program affine in the parameters.

CVXPY's parametric canonicalization (``problem.get_problem_data(solver=SCS)`` on a DPP problem)
returns a ``ParamConeProg`` whose data are *linear* functions of the stacked parameter vector
``θ̄ = (θ, 1)`` (the trailing 1 carries the constants). We read those tensors once and store one
sparse matrix

    M  (R × (p+1)),   R = n + nnz(A) + m + nnz(P),     M θ̄ = (c, vals(A), b, vals(P)),

so a batch of B problems is assembled by **one** sparse matmul ``M Θ̄`` with ``Θ̄`` of shape
(p+1, B); ``vals(A)`` are the entries of A in the fixed (union) sparsity pattern, CSC order.
The program is in SCS form (``cones.py``)::

    minimize ½ xᵀPx + cᵀx   subject to   Ax + s = b,  s ∈ K         (A = −A_cvxpy, b = b_cvxpy)

CVXPY writes constraints as ``A_cvxpy x + b_cvxpy ∈ K``; ``P`` is stored in full (both
triangles) and handed to SCS as its upper triangle.

Outputs (the requested variables and constraint duals) are recovered from the solver's ``x``
and ``y`` by maps that are built by *probing CVXPY's own inversion chain*: the chain's
``invert`` is linear in (x, y) and for every supported construct a selection with a scale
(reshape, symmetric unpacking, the 1/√2 of PSD duals), so three probes identify it exactly —
index and scale per output entry — and a random probe verifies it. Outputs therefore follow
CVXPY's conventions for ``variable.value`` and ``constraint.dual_value`` by construction.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from optlayers._src.conic.cones import ConeDims


def _cvxpy():
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "optlayers.CvxpyLayer needs CVXPY and SCS: pip install 'optlayers[conic]'"
        ) from err
    return cp


@dataclasses.dataclass(frozen=True)
class ParamSlot:
    """How one user parameter enters the stacked parameter vector θ.

    ``lower`` selects, from the user's value flattened in Fortran order, the entries CVXPY keeps
    (all of them, or e.g. the upper triangle of a symmetric parameter); they occupy columns
    ``col : col + len(lower)`` of M. ``log``: a GP parameter, entering as log(value).
    """

    name: str
    shape: tuple[int, ...]
    col: int | None           # None: the parameter does not affect the cone program data
    lower: np.ndarray         # int64 indices into the F-flattened value
    log: bool
    # The value constraints the parameter was declared with, which DCP relies on (a negative
    # value of a nonneg parameter that multiplies a convex term makes the program nonconvex):
    # "nonneg", "nonpos", "pos", "neg" or None; "PSD", "NSD" or None.
    sign: str | None = None
    definite: str | None = None

    @property
    def partial(self) -> bool:
        """Whether CVXPY reads only some of the value's entries (e.g. one triangle)."""
        return self.lower.size < (math.prod(self.shape) if self.shape else 1)


@dataclasses.dataclass(frozen=True)
class OutputMap:
    """One requested output: ``value.flatten('F')[i] = scale[i] * src[index[i]]`` (then
    ``exp`` for primal variables of a GP), with ``src`` the solver's ``x`` or ``y``."""

    name: str
    source: str               # "x" or "y"
    shape: tuple[int, ...]
    index: np.ndarray
    scale: np.ndarray
    exp: bool


@dataclasses.dataclass
class ConeProgram:
    """The parametric cone program of a layer (everything the solve and the derivative need).

    Shapes: ``n`` variables, ``m`` constraint rows (``dims``), ``nnz_A`` / ``nnz_P`` stored
    entries of A / P (P both triangles), ``p`` parameter entries (+1 constant column of M).
    """

    n: int
    m: int
    dims: ConeDims
    M: sp.csr_matrix                 # (R, p+1)
    A_rows: np.ndarray               # (nnz_A,) row of each stored entry (CSC order)
    A_cols: np.ndarray
    A_indptr: np.ndarray             # CSC column pointers of A (n+1,)
    P_rows: np.ndarray | None        # (nnz_P,) full pattern of P, or None (no quadratic term)
    P_cols: np.ndarray | None
    P_upper: np.ndarray | None       # positions (into P values) of the upper-triangle entries
    P_upper_indices: np.ndarray | None  # CSC row indices / pointers of triu(P)
    P_upper_indptr: np.ndarray | None
    params: list[ParamSlot]
    outputs: list[OutputMap]
    gp: bool
    n_theta: int                     # p + 1

    def __post_init__(self) -> None:
        # CSC templates with the fixed patterns (indices sorted); a problem's matrices are shallow
        # copies with its own values (cheaper than SciPy's validating constructor, per problem).
        # (The stored entries are in column-major order of their flat index, so row indices are
        # sorted within each column — the order of the values vectors.)
        self.A_template = sp.csc_matrix((np.zeros(self.nnz_A), self.A_rows, self.A_indptr), shape=(self.m, self.n))
        self.P_template = None
        if self.P_upper is not None:
            self.P_template = sp.csc_matrix(
                (np.zeros(self.P_upper.size), self.P_upper_indices, self.P_upper_indptr), shape=(self.n, self.n)
            )
        for T in (self.A_template, self.P_template):
            if T is not None and not T.has_sorted_indices:  # pragma: no cover - layout invariant
                raise RuntimeError("internal error: unsorted cone program pattern")

    def matrices(self, A_vals: np.ndarray, P_vals: np.ndarray | None):
        """(A, triu(P)) of one problem as SciPy CSC matrices (P: None without a quadratic term)."""
        A = copy.copy(self.A_template)
        A.data = np.ascontiguousarray(A_vals, dtype=np.float64)
        P = None
        if P_vals is not None and self.P_template is not None:
            P = copy.copy(self.P_template)
            P.data = np.ascontiguousarray(P_vals[self.P_upper], dtype=np.float64)
        return A, P

    @property
    def nnz_A(self) -> int:
        return int(self.A_rows.size)

    @property
    def nnz_P(self) -> int:
        return 0 if self.P_rows is None else int(self.P_rows.size)

    def split_sizes(self) -> list[int]:
        """Row blocks of M: c (n), vals(A), b (m), vals(P)."""
        return [self.n, self.nnz_A, self.m, self.nnz_P]

    def rows_depending_on(self, cols: np.ndarray) -> np.ndarray:
        """Rows of M with a nonzero in any of the given parameter columns."""
        sub = self.M[:, cols]
        return np.unique(sub.tocoo().row)


# ---------------------------------------------------------------------------------------------
# Validation and DPP


def _describe(expr: Any, limit: int = 120) -> str:
    text = str(expr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_problem(problem, parameters, variables) -> None:
    cp = _cvxpy()
    if not isinstance(problem, cp.Problem):
        raise ValueError(f"problem must be a cvxpy.Problem; got {type(problem).__name__}")
    if not isinstance(parameters, (list, tuple)):
        raise ValueError(f"parameters must be a list or tuple of cvxpy.Parameter; got {type(parameters).__name__}")
    if not isinstance(variables, (list, tuple)):
        raise ValueError(f"variables must be a list or tuple of cvxpy.Variable; got {type(variables).__name__}")
    if len(variables) == 0:
        raise ValueError("variables must name at least one variable (or constraint dual) to return")
    if len(parameters) == 0:
        raise ValueError(
            "parameters is empty: a CvxpyLayer maps parameter tensors to solutions, and this problem "
            "has none to differentiate with respect to; solve it with CVXPY directly, or make the "
            "data you want gradients for a cvxpy.Parameter"
        )
    for i, p in enumerate(parameters):
        if not isinstance(p, cp.Parameter):
            raise ValueError(f"parameters[{i}] must be a cvxpy.Parameter; got {type(p).__name__}")
        if p.is_complex():
            raise ValueError(f"parameters[{i}] ({p.name()}) is complex; complex parameters are not supported")
    ids = [p.id for p in parameters]
    if len(set(ids)) != len(ids):
        raise ValueError("parameters lists the same cvxpy.Parameter twice")
    in_problem = {p.id: p for p in problem.parameters()}
    missing = [p.name() for pid, p in in_problem.items() if pid not in ids]
    extra = [p.name() for p in parameters if p.id not in in_problem]
    if missing or extra:
        msg = "parameters must list exactly the parameters of the problem"
        if missing:
            msg += f"; missing: {missing}"
        if extra:
            msg += f"; not in the problem: {extra}"
        raise ValueError(msg)
    for v in problem.variables():
        if v.is_complex():
            raise ValueError(f"variable {v.name()} is complex; complex variables are not supported")
        if v.attributes.get("integer") or v.attributes.get("boolean"):
            raise ValueError(
                f"variable {v.name()} is {'integer' if v.attributes.get('integer') else 'boolean'}; "
                "CvxpyLayer differentiates convex programs, whose solution map is continuous — "
                "mixed-integer problems are not supported (relax the variable to an interval)"
            )


def _dpp_error(problem, gp: bool, cvx_message: str) -> ValueError:
    """A ValueError naming the parts of the problem that are not DPP, plus CVXPY's explanation."""
    ctx = "dgp" if gp else "dcp"
    parts = []
    if not problem.objective.is_dpp(ctx):
        parts.append(f"  objective: {_describe(problem.objective)}")
    for i, con in enumerate(problem.constraints):
        if not con.is_dpp(ctx):
            parts.append(f"  constraints[{i}]: {_describe(con)}")
    where = ("\nNot DPP:\n" + "\n".join(parts)) if parts else ""
    return ValueError(
        "CvxpyLayer needs a problem that follows the DPP rules (disciplined parametrized "
        f"programming{', log-log form' if gp else ''}), so that it can be canonicalized once with "
        "its data affine in the parameters. A product of two parameters, or a parameter inside a "
        "nonlinear atom, breaks DPP; introduce a new parameter for the product (e.g. a "
        f"Parameter for a*b) and compute it in PyTorch.{where}\nCVXPY says: {cvx_message}"
    )


def _problem_data(problem, gp: bool):
    """``get_problem_data(SCS)`` under DPP enforcement; parametric quad_form in the objective is
    accepted (CVXPY's quad-form DPP scope) since the program keeps a quadratic objective."""
    cp = _cvxpy()
    from cvxpy.utilities import scopes

    try:
        if gp:
            if not problem.is_dgp(dpp=True):
                if problem.is_dgp():
                    raise cp.error.DPPError("The problem is log-log convex (DGP) but not DPP.")
                raise ValueError(
                    "gp=True needs a log-log convex problem (DGP); "
                    f"problem.is_dgp() is False for: {_describe(problem)}"
                )
            return problem.get_problem_data(solver=cp.SCS, gp=True, enforce_dpp=True)
        if not problem.is_dcp():
            # Let CVXPY explain which sub-expressions break DCP.
            problem.get_problem_data(solver=cp.SCS, enforce_dpp=True)
        if problem.is_dpp():
            return problem.get_problem_data(solver=cp.SCS, enforce_dpp=True)
        constraints_dpp = all(c.is_dpp() for c in problem.constraints)
        if constraints_dpp:
            with scopes.quad_form_dpp_scope():
                if problem.is_dpp():
                    return problem.get_problem_data(solver=cp.SCS, enforce_dpp=True)
        return problem.get_problem_data(solver=cp.SCS, enforce_dpp=True)  # raises DPPError
    except cp.error.DPPError as err:
        raise _dpp_error(problem, gp, str(err)) from None
    except cp.error.DCPError as err:
        raise ValueError(
            "CvxpyLayer needs a convex problem that follows CVXPY's DCP rules (or DGP with "
            f"gp=True). CVXPY says: {err}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Parameter slots


def _param_slots(problem, parameters, chain, param_prob, gp: bool) -> list[ParamSlot]:
    from cvxpy.reductions.cvx_attr2constr import lower_value

    id_map = {k: v[0] for k, v in chain.compose_param_id_map().items()}
    logged: set[int] = set()
    if gp:
        first = chain.reductions[0]
        mapping = getattr(getattr(first, "canon_methods", None), "_parameters", None)
        if mapping is not None:
            logged = {p.id for p in mapping}
        else:  # pragma: no cover - depends on CVXPY internals
            logged = {p.id for p in parameters if p.is_pos()}
    slots = []
    for p in parameters:
        pid = id_map.get(p.id, p.id)
        col = param_prob.param_id_to_col.get(pid)
        size = int(math.prod(p.shape)) if p.shape else 1
        if getattr(p, "_has_dim_reducing_attr", False):
            probe = np.arange(size, dtype=np.float64).reshape(p.shape, order="F")
            lower = np.asarray(lower_value(p, probe), dtype=np.float64).ravel(order="F")
            if not np.array_equal(lower, np.round(lower)):
                raise ValueError(f"parameter {p.name()}: unsupported attribute combination {p.attributes}")
            lower = lower.astype(np.int64)
        else:
            lower = np.arange(size, dtype=np.int64)
        if col is not None:
            expect = param_prob.param_id_to_size[pid]
            if expect != lower.size:
                raise ValueError(
                    f"parameter {p.name()}: CVXPY stores {expect} entries but {lower.size} were "
                    f"derived from its attributes {p.attributes}; this attribute is not supported"
                )
        attrs = p.attributes
        sign = next((a for a in ("nonneg", "nonpos", "pos", "neg") if attrs.get(a)), None)
        definite = next((a for a in ("PSD", "NSD") if attrs.get(a)), None)
        slots.append(ParamSlot(name=p.name(), shape=tuple(p.shape), col=col, lower=lower, log=p.id in logged,
                               sign=sign, definite=definite))
    return slots


# ---------------------------------------------------------------------------------------------
# Data tensors → M and patterns


def _data_maps(param_prob, n: int, m: int):
    """Split CVXPY's parameter tensors into (c, vals(A), b, vals(P)) row blocks and patterns."""
    n_theta = param_prob.total_param_size + 1
    const_col = param_prob.param_id_to_col[-1]
    if const_col != n_theta - 1:  # pragma: no cover - CVXPY layout assumption
        raise RuntimeError("unexpected CVXPY parameter layout (constant column not last)")
    q = sp.csr_matrix(param_prob.q)
    Mc = q[:n]
    Atens = sp.csr_matrix(param_prob.A)  # rows: i + j*m of the (m, n+1) matrix [A_cvx | b]
    Atens.eliminate_zeros()
    nz_rows = np.unique(Atens.tocoo().row)
    is_b = nz_rows >= n * m
    a_rows = nz_rows[~is_b]
    MA = -Atens[a_rows]                   # SCS form: A = −A_cvxpy
    A_i, A_j = a_rows % m, a_rows // m    # ascending flat index = CSC (column-major) order
    b_rows = np.arange(n * m, n * m + m)
    Mb = Atens[b_rows]
    A_indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(A_indptr, A_j + 1, 1)
    A_indptr = np.cumsum(A_indptr)
    blocks = [Mc, MA, Mb]
    P_rows = P_cols = P_upper = P_up_ind = P_up_ptr = None
    if param_prob.P is not None:
        Ptens = sp.csr_matrix(param_prob.P)   # rows: i + j*n of the (n, n) matrix P
        Ptens.eliminate_zeros()
        p_rows = np.unique(Ptens.tocoo().row)
        if p_rows.size:
            P_rows, P_cols = p_rows % n, p_rows // n
            blocks.append(Ptens[p_rows])
            P_upper = np.nonzero(P_rows <= P_cols)[0]          # CSC order is kept
            P_up_ind = P_rows[P_upper]
            P_up_ptr = np.zeros(n + 1, dtype=np.int64)
            np.add.at(P_up_ptr, P_cols[P_upper] + 1, 1)
            P_up_ptr = np.cumsum(P_up_ptr)
    M = sp.vstack(blocks, format="csr")
    M.sort_indices()
    return M, A_i, A_j, A_indptr, P_rows, P_cols, P_upper, P_up_ind, P_up_ptr, n_theta


# ---------------------------------------------------------------------------------------------
# Output maps by probing CVXPY's inversion chain


def _resolve_outputs(problem, variables) -> list[tuple[str, Any, Any]]:
    """Each requested item → ("x", variable, None) or ("y", constraint, dual variable)."""
    cp = _cvxpy()
    primal = {v.id: v for v in problem.variables()}
    duals = {}
    for con in problem.constraints:
        for dv in con.dual_variables:
            duals[dv.id] = (con, dv)
    cons = {c.id: c for c in problem.constraints}
    out = []
    for i, v in enumerate(variables):
        if isinstance(v, cp.Variable) and v.id in primal:
            out.append(("x", v, None))
        elif isinstance(v, cp.Variable) and v.id in duals:
            con, dv = duals[v.id]
            out.append(("y", con, dv))
        elif isinstance(v, cp.constraints.constraint.Constraint) and v.id in cons:
            if len(v.dual_variables) != 1:
                raise ValueError(
                    f"variables[{i}]: constraint {_describe(v)} has {len(v.dual_variables)} dual "
                    "variables; pass the one you want, e.g. constraint.dual_variables[0]"
                )
            out.append(("y", v, v.dual_variables[0]))
        else:
            raise ValueError(
                f"variables[{i}] must be a variable of the problem, a constraint of the problem "
                f"(for its dual), or one of its constraint.dual_variables; got {_describe(v)}"
            )
    return out


def _invert(chain, inverse_data, x: np.ndarray, y: np.ndarray):
    raw = {
        "x": x, "y": y, "s": np.zeros_like(y),
        "info": {"status_val": 1, "solve_time": 0.0, "setup_time": 0.0, "iter": 0, "pobj": 0.0},
    }
    return chain.invert(raw, inverse_data)


def _read(items, sol, gp: bool) -> list[np.ndarray]:
    """The value of each item (F-flattened) in an inverted solution; log of GP primal values."""
    vals = []
    for source, obj, dv in items:
        if source == "x":
            v = sol.primal_vars[obj.id]
            # (a diag=True variable's value is a SciPy sparse diagonal matrix)
            v = np.asarray(v.toarray() if sp.issparse(v) else v, dtype=np.float64)
            if gp:
                with np.errstate(divide="ignore"):
                    v = np.log(v)
            vals.append(v.ravel(order="F"))
        else:
            old = [d.value for d in obj.dual_variables]
            try:
                obj.save_dual_value(sol.dual_vars[obj.id])
                v = np.asarray(dv.value, dtype=np.float64)
            finally:
                for d, o in zip(obj.dual_variables, old):
                    d.value = o
            vals.append(v.ravel(order="F"))
    return vals


def _output_maps(problem, items, chain, inverse_data, n: int, m: int, gp: bool) -> list[OutputMap]:
    """Identify each output's selection map with three probes (ones, ramp, random) of (x, y)."""
    rng = np.random.default_rng(0)
    probes = [
        (np.ones(n), np.ones(m)),
        (np.arange(1.0, n + 1.0), np.arange(1.0, m + 1.0)),
        (rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, m)),
    ]
    results = [_read(items, _invert(chain, inverse_data, x, y), gp) for x, y in probes]
    maps: list[OutputMap] = []
    for k, (src, obj, dv) in enumerate(items):
        f1, f2, f3 = results[0][k], results[1][k], results[2][k]
        rand = probes[2][0] if src == "x" else probes[2][1]
        scale = f1
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = np.where(scale != 0, f2 / np.where(scale != 0, scale, 1.0), 1.0) - 1.0
        index = np.rint(pos).astype(np.int64)
        ok = bool(np.allclose(pos, index, atol=1e-6)) and index.min(initial=0) >= 0 and index.max(initial=0) < rand.size
        if ok:
            ok = bool(np.allclose(scale * rand[index], f3, rtol=1e-10, atol=1e-12))
        shown = obj.name() if src == "x" else f"the dual of {_describe(obj, 60)}"
        if not ok:
            raise ValueError(
                f"variables[{k}]: cannot return {shown}: CVXPY recovers it from the cone program "
                "by a map that is not a selection of entries; this construct is not supported"
            )
        shape = tuple(obj.shape) if src == "x" else tuple(dv.shape)
        maps.append(OutputMap(name=shown, source=src, shape=shape, index=index, scale=scale,
                              exp=gp and src == "x"))
    return maps


# ---------------------------------------------------------------------------------------------


def canonicalize(problem, parameters: Sequence, variables: Sequence, gp: bool = False) -> ConeProgram:
    """Canonicalize ``problem`` once into a :class:`ConeProgram` (see the module docstring).

    Raises ``ValueError`` (naming the argument / the non-DPP parts) for anything unsupported.
    """
    _check_problem(problem, parameters, variables)
    items = _resolve_outputs(problem, variables)
    data, chain, inverse_data = _problem_data(problem, gp)
    cp = _cvxpy()
    param_prob = data[cp.settings.PARAM_PROB]
    d = data["dims"]
    if getattr(d, "p3d", None) or getattr(d, "pnd", None):
        raise ValueError(
            "the problem uses power cones (e.g. through cp.power, cp.geo_mean, pnorm with p ∉ "
            "{1, 2, inf}); CvxpyLayer supports zero, nonnegative, second-order, PSD and "
            "exponential cones"
        )
    dims = ConeDims(zero=int(d.zero), nonneg=int(d.nonneg), soc=tuple(int(k) for k in d.soc),
                    psd=tuple(int(k) for k in d.psd), exp=int(d.exp))
    n = int(param_prob.x.size)
    m = int(dims.size)
    if m != param_prob.constr_size:  # pragma: no cover - CVXPY layout assumption
        raise RuntimeError("unexpected CVXPY cone layout")
    M, A_i, A_j, A_indptr, P_rows, P_cols, P_upper, P_ind, P_ptr, n_theta = _data_maps(param_prob, n, m)
    slots = _param_slots(problem, parameters, chain, param_prob, gp)
    outputs = _output_maps(problem, items, chain, inverse_data, n, m, gp)
    return ConeProgram(
        n=n, m=m, dims=dims, M=M, A_rows=A_i.astype(np.int64), A_cols=A_j.astype(np.int64),
        A_indptr=A_indptr, P_rows=P_rows, P_cols=P_cols, P_upper=P_upper,
        P_upper_indices=P_ind, P_upper_indptr=P_ptr, params=slots, outputs=outputs, gp=gp,
        n_theta=n_theta,
    )
