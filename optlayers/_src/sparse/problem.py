"""Validation and canonicalization of sparse QP data into OSQP's form — the one place the sparse
path reads user input.

Problem, per index of the batch::

    minimize_x  ½ xᵀ P x + qᵀ x     subject to   l ≤ A x ≤ u

(``l_i = −∞`` / ``u_i = +∞`` for one-sided rows, ``l_i = u_i`` for equalities). The dense-style
form of :func:`optlayers.solve_qp` (``Ax = b``, ``Gx ≤ h``) maps onto it by stacking
``A_osqp = [A; G]``, ``l = [b; −∞]``, ``u = [b; h]``.

Inputs. Each matrix may be a torch sparse COO or CSR tensor, or a dense tensor:

* sparse ``(r, c)``: shared by the whole batch; sparse ``(*batch, r, c)`` (batched CSR, or COO
  with all dimensions sparse): one sparsity pattern for all problems, different values;
* dense ``(*batch, r, c)``: treated as having *every* entry structurally nonzero, so its gradient
  is dense and exact (pass a sparse tensor to exploit sparsity).

Explicit zeros in sparse inputs are kept in the pattern (their gradient is generally nonzero);
duplicate COO entries are summed. Only the symmetric part of P matters (the objective is
½xᵀPx), and P must be given with *both* triangles, like the dense ``Q``.

Canonical form (:class:`SparseQPData`): CSC patterns as numpy arrays (``Pattern``; P's is its
upper triangle, as OSQP wants) and the *values* as torch tensors, ``(nnz,)`` when shared or
``(B, nnz)`` when batched. The values are computed from the inputs with differentiable torch
ops (a gather or an ``index_add`` that folds P's lower triangle onto its upper one with weight
½ off the diagonal), so autograd maps gradients of the canonical values back to the inputs —
to the ``values()`` of a sparse input, the entries of a dense one — and never densifies.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math

import numpy as np
import scipy.sparse as sp
import torch

from optlayers._src.sparse import options as opts

_SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr)
_OTHER_SPARSE = (torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def broadcast_shapes(*shapes) -> torch.Size:
    """``torch.broadcast_shapes`` without its first-call import of sympy (~1 s); raises
    ``RuntimeError`` when the shapes do not broadcast."""
    try:
        return torch.Size(np.broadcast_shapes(*(tuple(s) for s in shapes)))
    except ValueError as err:
        raise RuntimeError(str(err)) from None


def is_sparse(t) -> bool:
    """Whether ``t`` is a torch sparse tensor (any sparse layout)."""
    return isinstance(t, torch.Tensor) and t.layout != torch.strided


def _digest(*arrays) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.data)
    return h.digest()


@dataclasses.dataclass(frozen=True, eq=False)
class Pattern:
    """A CSC sparsity pattern. ``rows``/``cols`` give the (row, column) of every stored slot in
    CSC order; ``key`` is a digest of the pattern (equal patterns ⇔ equal keys)."""

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    cols: np.ndarray
    key: bytes

    @property
    def rows(self) -> np.ndarray:
        return self.indices

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @staticmethod
    def from_sorted(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> "Pattern":
        """From unique slots already sorted in CSC order (by column, then row)."""
        counts = np.bincount(cols, minlength=shape[1])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = rows.astype(np.int64)
        cols = cols.astype(np.int64)
        return Pattern(shape, indptr, rows, cols, _digest(np.asarray(shape), indptr, rows))


@dataclasses.dataclass(frozen=True)
class SparseQPData:
    """Canonical sparse QP data (see the module docstring). Values are shared ``(nnz,)`` /
    ``(n,)`` / ``(m,)`` or batched ``(B, ·)``; patterns are shared by the whole batch."""

    P_pattern: Pattern  # upper triangle of P, n × n
    A_pattern: Pattern  # m × n
    P: torch.Tensor
    q: torch.Tensor
    A: torch.Tensor
    l: torch.Tensor
    u: torch.Tensor
    batch_shape: torch.Size

    @property
    def B(self) -> int:
        return math.prod(self.batch_shape)

    @property
    def n(self) -> int:
        return self.P_pattern.shape[0]

    @property
    def m(self) -> int:
        return self.A_pattern.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.P, self.q, self.A, self.l, self.u

    def is_batched(self, name: str) -> bool:
        return getattr(self, name).dim() == 2


# ---------------------------------------------------------------------------------------------
# Matrix inputs → (rows, cols, values)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Entries:
    """A matrix input as coordinate entries: ``values`` is (*batch, k), rows/cols (k,) numpy."""

    name: str
    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    values: torch.Tensor
    batch: torch.Size


def _check_dtype_device(name: str, t: torch.Tensor, ref: torch.Tensor | None) -> None:
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"{name} must be float32 or float64; got {t.dtype}. Convert it with {name}.double() or {name}.float()."
        )
    if ref is not None and t.dtype != ref.dtype:
        raise ValueError(
            f"{name} has dtype {t.dtype} but q has {ref.dtype}; all QP data must share one dtype "
            f"(convert with .to({ref.dtype}))."
        )
    if ref is not None and t.device != ref.device:
        raise ValueError(f"{name} is on device {t.device} but q is on {ref.device}; all QP data must be on one device.")


def _same_across_batch(name: str, arr: torch.Tensor) -> np.ndarray:
    """``arr`` (Bflat, k) index arrays must be equal in every batch row; returns row 0."""
    if arr.shape[0] > 1 and not bool((arr == arr[:1]).all()):
        raise ValueError(
            f"{name}: every problem of a batched sparse tensor must have the same sparsity pattern "
            "(different values are fine). Store explicit zeros to give them one common pattern, "
            "or solve the groups with different patterns in separate calls."
        )
    return arr[0].cpu().numpy().astype(np.int64)


def _entries(name: str, M, ref: torch.Tensor) -> _Entries:
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (dense, sparse COO or sparse CSR); got {type(M).__name__}")
    _check_dtype_device(name, M, ref)
    if M.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (*, rows, n); got shape {tuple(M.shape)}")
    shape = (int(M.shape[-2]), int(M.shape[-1]))
    batch = torch.Size(M.shape[:-2])
    if M.layout == torch.strided:
        r, c = np.indices(shape).reshape(2, -1)
        return _Entries(name, shape, r.astype(np.int64), c.astype(np.int64), M.reshape(batch + (-1,)), batch)
    if M.layout in _OTHER_SPARSE:
        raise TypeError(
            f"{name} has layout {M.layout}; sparse QP data must be sparse COO or CSR "
            f"(convert with {name}.to_sparse_csr() or {name}.to_sparse_coo()) or dense."
        )
    if M.dense_dim() != 0:
        raise ValueError(
            f"{name} is a hybrid sparse tensor (dense_dim={M.dense_dim()}); store the batch as leading "
            "sparse (COO) or batch (CSR) dimensions instead."
        )
    Bf = math.prod(batch)
    if M.layout == torch.sparse_csr:
        crow = M.crow_indices().reshape(Bf, -1)
        col = M.col_indices().reshape(Bf, -1)
        crow0 = _same_across_batch(name, crow)
        col0 = _same_across_batch(name, col)
        rows = np.repeat(np.arange(shape[0], dtype=np.int64), np.diff(crow0))
        return _Entries(name, shape, rows, col0, M.values().reshape(batch + (-1,)), batch)
    # COO: all dimensions sparse (checked above). Coalescing sorts the entries and sums
    # duplicates; explicit zeros are kept.
    Mc = M if M.is_coalesced() else M.coalesce()
    idx = Mc.indices()
    vals = Mc.values()
    if Bf == 1:
        return _Entries(name, shape, idx[-2].cpu().numpy(), idx[-1].cpu().numpy(), vals.reshape(batch + (-1,)), batch)
    lin = torch.zeros(idx.shape[1], dtype=torch.int64, device=idx.device)
    for d in range(len(batch)):
        lin = lin * batch[d] + idx[d]
    counts = torch.bincount(lin, minlength=Bf)
    if not bool((counts == counts[0]).all()):
        raise ValueError(
            f"{name}: every problem of a batched sparse tensor must have the same sparsity pattern "
            f"(found {int(counts.min())} to {int(counts.max())} stored entries per problem). Store "
            "explicit zeros to give them one common pattern, or solve them in separate calls."
        )
    k = int(counts[0])
    rc = idx[-2:].reshape(2, Bf, k)  # coalesced ⇒ sorted by batch, then row, then column
    rows = _same_across_batch(name, rc[0])
    cols = _same_across_batch(name, rc[1])
    return _Entries(name, shape, rows, cols, vals.reshape(batch + (k,)), batch)


# ---------------------------------------------------------------------------------------------
# Plans: input entries → canonical CSC slots (memoized per input pattern)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    pattern: Pattern
    slot: torch.Tensor  # (k,) canonical slot of every input entry
    weight: torch.Tensor | None  # (k,) or None (all ones)
    perm: torch.Tensor | None  # when the map is a permutation: canonical = values[..., perm]
    lower: np.ndarray | None  # P only: entries strictly below the diagonal (for the symmetry check)


_PLAN_CACHE: "collections.OrderedDict[bytes, _Plan]" = collections.OrderedDict()
_PLAN_CACHE_SIZE = 32


def _plan(kind: str, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, device) -> _Plan:
    key = _digest(np.frombuffer(kind.encode(), np.uint8), np.asarray(shape), rows, cols) + str(device).encode()
    hit = _PLAN_CACHE.get(key)
    if hit is not None:
        _PLAN_CACHE.move_to_end(key)
        return hit
    nr, nc = shape
    lower = None
    weight = None
    if kind == "P":
        # Fold onto the upper triangle: (r, c) ↦ (min, max), weight ½ off the diagonal, so the
        # canonical value is the symmetric part ½(P_ij + P_ji).
        i, j = np.minimum(rows, cols), np.maximum(rows, cols)
        lower = rows > cols
        w = np.where(rows == cols, 1.0, 0.5)
        weight = torch.as_tensor(w, device=device)
    else:
        i, j = rows, cols
    lin = j.astype(np.int64) * max(nr, 1) + i.astype(np.int64)  # CSC order: column-major
    uniq, inv = np.unique(lin, return_inverse=True)
    pattern = Pattern.from_sorted(shape, uniq % max(nr, 1), uniq // max(nr, 1))
    perm = None
    if uniq.shape[0] == lin.shape[0] and weight is None:
        order = np.empty_like(inv)
        order[inv] = np.arange(inv.shape[0])
        perm = torch.as_tensor(order, device=device)
    plan = _Plan(pattern, torch.as_tensor(inv.reshape(-1), device=device), weight, perm, lower)
    _PLAN_CACHE[key] = plan
    if len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
        _PLAN_CACHE.popitem(last=False)
    return plan


def _apply_plan(plan: _Plan, values: torch.Tensor) -> torch.Tensor:
    """Canonical slot values (*batch, nnz) from input entry values (*batch, k), differentiably."""
    if plan.perm is not None:
        return values[..., plan.perm]
    src = values if plan.weight is None else values * plan.weight.to(values.dtype)
    out = values.new_zeros(values.shape[:-1] + (plan.pattern.nnz,))
    return out.index_add(-1, plan.slot, src)


# ---------------------------------------------------------------------------------------------
# Canonicalization
# ---------------------------------------------------------------------------------------------


def _vector(name: str, v, size: int, ref: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(v).__name__}")
    if v.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor; got layout {v.layout} (use {name}.to_dense())")
    _check_dtype_device(name, v, ref)
    if v.dim() < 1 or v.shape[-1] != size:
        raise ValueError(f"{name} must have shape (*, {size}) ({what}); got {tuple(v.shape)}")
    return v


def _to_batch(t: torch.Tensor, batch: torch.Size, full: torch.Size, core: int) -> torch.Tensor:
    """Shared (core dims) if its batch is trivial, else (B, *core) (expanded if partial)."""
    B = math.prod(full)
    core_shape = t.shape[t.dim() - core:]
    if math.prod(batch) == 1:
        return t.reshape(core_shape)
    if batch == full:
        return t.reshape((B,) + tuple(core_shape))
    return t.expand(tuple(full) + tuple(core_shape)).reshape((B,) + tuple(core_shape))


def _stack_rows(blocks: list[_Entries], n: int, ref: torch.Tensor) -> _Entries:
    """Vertically stack matrix inputs (row offsets), broadcasting their batch dimensions."""
    if len(blocks) == 1:
        return blocks[0]
    batch = broadcast_shapes(*(b.batch for b in blocks))
    rows, cols, vals, off = [], [], [], 0
    for b in blocks:
        rows.append(b.rows + off)
        cols.append(b.cols)
        vals.append(b.values.expand(tuple(batch) + b.values.shape[-1:]) if b.batch != batch else b.values)
        off += b.shape[0]
    if not vals:
        v = ref.new_zeros(0)
    else:
        v = torch.cat(vals, -1)
    return _Entries("A", (off, n), np.concatenate(rows), np.concatenate(cols), v, batch)


def _empty(name: str, shape: tuple[int, int], ref: torch.Tensor) -> _Entries:
    z = np.zeros(0, np.int64)
    return _Entries(name, shape, z, z, ref.new_zeros(0), torch.Size())


def canonicalize(P, q, A=None, l=None, u=None, *, check_values: bool = True, names=None) -> SparseQPData:
    """Validate OSQP-form data ``(P, q, A, l, u)`` and canonicalize it (module docstring).

    ``A`` may be a list of matrix inputs stacked vertically (used by the ``solve_qp`` route);
    ``names`` maps canonical names to the user's argument names in error messages.

    Raises:
        TypeError / ValueError naming the offending argument.
    """
    names = names or {}
    nm = lambda k: names.get(k, k)  # noqa: E731
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"{nm('q')} must be a torch.Tensor; got {type(q).__name__}")
    if q.layout != torch.strided:
        raise TypeError(f"{nm('q')} must be a dense tensor; got layout {q.layout} (use .to_dense())")
    _check_dtype_device(nm("q"), q, None)
    if q.dim() < 1 or q.shape[-1] == 0:
        raise ValueError(f"{nm('q')} must have shape (*, n) with n ≥ 1; got {tuple(q.shape)}")
    n = int(q.shape[-1])

    Pe = _entries(nm("P"), P, q) if P is not None else _empty(nm("P"), (n, n), q)
    if Pe.shape != (n, n):
        raise ValueError(f"{nm('P')} must have shape (*, n, n) = (*, {n}, {n}) to match q; got {tuple(P.shape)}")

    # ``A`` is one matrix, or a list of (argument name, matrix) blocks stacked vertically.
    blocks = list(A) if isinstance(A, (list, tuple)) else ([(nm("A"), A)] if A is not None else [])
    ents = []
    for key, blk in blocks:
        e = _entries(key, blk, q)
        if e.shape[1] != n:
            raise ValueError(f"{key} must have shape (*, rows, n) with n = {n} columns (from q); got {tuple(blk.shape)}")
        ents.append(e)
    Ae = _stack_rows(ents, n, q) if ents else _empty(nm("A"), (0, n), q)
    m = Ae.shape[0]

    if m and (l is None and u is None):
        raise ValueError(f"{nm('A')} is given but neither l nor u: pass at least one bound per row")
    if l is None:
        l = q.new_full((m,), -math.inf)
    if u is None:
        u = q.new_full((m,), math.inf)
    l = _vector(nm("l"), l, m, q, f"one lower bound per row of {nm('A')}")
    u = _vector(nm("u"), u, m, q, f"one upper bound per row of {nm('A')}")

    batches = {nm("P"): Pe.batch, nm("q"): q.shape[:-1], nm("A"): Ae.batch, nm("l"): l.shape[:-1], nm("u"): u.shape[:-1]}
    try:
        batch_shape = torch.Size(broadcast_shapes(*batches.values()))
    except RuntimeError:
        listing = ", ".join(f"{k}: {tuple(v)}" for k, v in batches.items() if len(v))
        raise ValueError(f"the batch dimensions of the QP data do not broadcast together ({listing})") from None

    dev = q.device
    Pplan = _plan("P", (n, n), Pe.rows, Pe.cols, dev)
    Aplan = _plan("A", (m, n), Ae.rows, Ae.cols, dev)
    if check_values:
        _check_values(nm, Pe, Pplan, Ae, q, l, u)
    Pv = _apply_plan(Pplan, Pe.values) if Pplan.pattern.nnz else Pe.values.new_zeros(Pe.batch + (0,))
    Av = _apply_plan(Aplan, Ae.values) if Aplan.pattern.nnz else Ae.values.new_zeros(Ae.batch + (0,))
    return SparseQPData(
        P_pattern=Pplan.pattern,
        A_pattern=Aplan.pattern,
        P=_to_batch(Pv, Pe.batch, batch_shape, 1),
        q=_to_batch(q, q.shape[:-1], batch_shape, 1),
        A=_to_batch(Av, Ae.batch, batch_shape, 1),
        l=_to_batch(l, l.shape[:-1], batch_shape, 1),
        u=_to_batch(u, u.shape[:-1], batch_shape, 1),
        batch_shape=batch_shape,
    )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def _check_values(nm, Pe: _Entries, Pplan: _Plan, Ae: _Entries, q, l, u) -> None:
    """Finite data; no NaN bounds, l ≤ u, l < +∞, u > −∞; P symmetric with a nonnegative diagonal.

    Runs on numpy copies (one pass over the values each), not on the autograd graph.
    """
    for name, v in ((nm("P"), Pe.values), (nm("A"), Ae.values), (nm("q"), q)):
        if v.numel() and not np.isfinite(_np(v)).all():
            raise ValueError(f"{name} contains NaN or Inf entries; the QP data must be finite")
    ld, ud = _np(l), _np(u)
    for name, v in ((nm("l"), ld), (nm("u"), ud)):
        if np.isnan(v).any():
            raise ValueError(f"{name} contains NaN")
    if ld.size and (ld == np.inf).any():
        raise ValueError(f"{nm('l')} contains +inf; lower bounds must be finite or -inf")
    if ud.size and (ud == -np.inf).any():
        raise ValueError(f"{nm('u')} contains -inf; upper bounds must be finite or +inf")
    if ld.size and ud.size:
        bad = ld > ud
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{nm('l')} must be ≤ {nm('u')} elementwise; first violation at index {where} "
                "(an empty interval: fix the bounds — this is an input error, not an infeasible problem)"
            )
    if Pplan.pattern.nnz == 0:
        return
    vals = _np(Pe.values).reshape(-1, Pe.rows.shape[0])  # (batch, k)
    rows, cols = Pe.rows, Pe.cols
    diag = rows == cols
    if diag.any() and (vals[:, diag] < 0).any():
        raise ValueError(
            f"{nm('P')} has a negative diagonal entry, so it is not positive semidefinite; the QP is not "
            "convex — check the sign of P."
        )
    lower, upper = rows > cols, rows < cols
    if not lower.any() and not upper.any():
        return
    # Symmetry: per folded slot, (sum of upper-triangle entries) − (sum of lower-triangle ones).
    slot = Pplan.slot.cpu().numpy()
    sgn = np.where(upper, 1.0, np.where(lower, -1.0, 0.0))
    S = sp.csr_matrix((sgn, (slot, np.arange(slot.shape[0]))), shape=(Pplan.pattern.nnz, slot.shape[0]))
    asym = float(np.abs(S @ vals.T).max(initial=0.0)) / max(1.0, float(np.abs(vals).max(initial=0.0)))
    tol = opts.SYMMETRY_TOL if Pe.values.dtype == torch.float64 else opts.SYMMETRY_TOL_FLOAT32
    if asym > tol:
        hint = ""
        if not lower.any() or not upper.any():
            hint = (" It has entries in only one triangle: pass the full symmetric matrix (both triangles), "
                    "not only its upper part.")
        raise ValueError(
            f"{nm('P')} must be symmetric; max |P - Pᵀ| relative to max |P| is {asym:.2e} (tolerance {tol:.0e}).{hint} "
            "Pass 0.5 * (P + P.T)."
        )
