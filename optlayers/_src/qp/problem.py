"""Validation and canonicalization of batched QP data — the one place every backend relies on.

The problem, for each index of the batch::

    minimize_x   ½ xᵀ Q x + qᵀ x
    subject to   A x = b          (p rows, may be absent)
                 G x ≤ h          (m rows, may be absent)

Input shapes (``*`` are leading batch dimensions, broadcast like any torch op):

    Q: (*, n, n)   q: (*, n)   G: (*, m, n)   h: (*, m)   A: (*, p, n)   b: (*, p)

Canonical form (:class:`QPData`): the broadcast batch shape is flattened to one dimension ``B``.
A tensor whose batch dimensions are absent (or all ones) stays **shared**: it keeps its core
shape, e.g. ``G`` of shape ``(m, n)``, and is never copied per problem; backends broadcast it.
A tensor that carries the full batch shape is reshaped to ``(B, *core)`` (a view when possible).
A tensor that is only partially broadcast (e.g. batch ``(3, 1)`` against ``(3, 5)``) is expanded
and copied — the rare case. Canonicalization uses differentiable torch ops, so autograd sums
gradients of broadcast inputs over the batch on its own. Absent constraint blocks become
zero-row tensors, so backends need no special cases.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from optlayers._src.tolerances import tolerances_for

_CORE_DIMS = {"Q": 2, "q": 1, "G": 2, "h": 1, "A": 2, "b": 1}
_FIELDS = ("Q", "q", "G", "h", "A", "b")


@dataclasses.dataclass(frozen=True)
class QPData:
    """Canonical batched QP data. Each field is batched ``(B, *core)`` or shared ``(*core)``."""

    Q: torch.Tensor
    q: torch.Tensor
    G: torch.Tensor
    h: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    batch_shape: torch.Size
    present: tuple[bool, bool]  # (inequalities given, equalities given)
    # (min, max of the objective scales, max column-scale spread, min, max of the constraint rows'
    # scales) where the C++ input checks computed them, else None (optlayers/_src/qp/scaling.py).
    scale_stats: tuple[float, float, float, float, float] | None = None

    @property
    def B(self) -> int:
        return math.prod(self.batch_shape)

    @property
    def n(self) -> int:
        return self.q.shape[-1]

    @property
    def m(self) -> int:
        return self.h.shape[-1]

    @property
    def p(self) -> int:
        return self.b.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    def is_batched(self, name: str) -> bool:
        return getattr(self, name).dim() > _CORE_DIMS[name]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f) for f in _FIELDS)

    def take(self, idx: torch.Tensor) -> "QPData":
        """The sub-batch ``idx`` (1-D index tensor); shared fields are kept as they are."""
        fields = {f: (getattr(self, f)[idx] if self.is_batched(f) else getattr(self, f)) for f in _FIELDS}
        return dataclasses.replace(self, batch_shape=torch.Size([idx.numel()]), **fields)

    def detach(self) -> "QPData":
        return dataclasses.replace(self, **{f: getattr(self, f).detach() for f in _FIELDS})


def _check_tensor(name: str, t, ref: torch.Tensor | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"{name} must be float32 or float64; got {t.dtype}. Convert it with {name}.double() or {name}.float()."
        )
    if ref is not None:
        if t.dtype != ref.dtype:
            raise ValueError(
                f"{name} has dtype {t.dtype} but q has {ref.dtype}; all QP data must share one dtype "
                f"(convert with .to({ref.dtype}))."
            )
        if t.device != ref.device:
            raise ValueError(
                f"{name} is on device {t.device} but q is on {ref.device}; all QP data must be on one device."
            )


def _batch_of(name: str, t: torch.Tensor) -> torch.Size:
    core = _CORE_DIMS[name]
    if t.dim() < core:
        want = {1: "(*, n)", 2: "(*, rows, n)"}[core]
        raise ValueError(f"{name} must have at least {core} dimension(s) {want}; got shape {tuple(t.shape)}")
    return t.shape[: t.dim() - core]


def fill_absent(Q, q, G, h, A, b):
    """The six fields with the absent ones as zeros: Q = 0 (n × n, an LP), no inequality or
    equality rows ((0, n) and (0,))."""
    n = q.shape[-1]
    if Q is None:
        Q = q.new_zeros(n, n)
    if G is None:
        G, h = q.new_zeros(0, n), q.new_zeros(0)
    if A is None:
        A, b = q.new_zeros(0, n), q.new_zeros(0)
    return Q, q, G, h, A, b


def canonicalize(
    Q: torch.Tensor | None,
    q: torch.Tensor,
    G: torch.Tensor | None = None,
    h: torch.Tensor | None = None,
    A: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    check_values: bool = True,
) -> QPData:
    """Validate QP data and bring it to canonical form (see the module docstring).

    ``Q=None`` means ``Q = 0`` (a linear program). ``G``/``h`` and ``A``/``b`` must be given in
    pairs or not at all.

    Raises:
        TypeError / ValueError naming the offending argument: wrong types, dtypes, devices or
        shapes; non-finite entries; a ``Q`` that is not symmetric or not positive semidefinite
        (the last three only when ``check_values``).
    """
    _check_tensor("q", q, None)
    _batch_of("q", q)
    n = q.shape[-1]
    if n == 0:
        raise ValueError("q must have at least one entry (n ≥ 1 variables); got shape " f"{tuple(q.shape)}")
    for name, t in (("Q", Q), ("G", G), ("h", h), ("A", A), ("b", b)):
        if t is not None:
            _check_tensor(name, t, q)
    for mat, vec in (("G", "h"), ("A", "b")):
        given = {mat: locals()[mat] is not None, vec: locals()[vec] is not None}
        if given[mat] != given[vec]:
            missing = mat if not given[mat] else vec
            raise ValueError(f"{mat} and {vec} must be given together; {missing} is missing")

    present = (G is not None, A is not None)
    Q, q, G, h, A, b = fill_absent(Q, q, G, h, A, b)
    raw = {"Q": Q, "q": q, "G": G, "h": h, "A": A, "b": b}

    # Core shapes.
    batches = {name: _batch_of(name, t) for name, t in raw.items()}
    if Q.shape[-2:] != (n, n):
        raise ValueError(f"Q must have shape (*, n, n) = (*, {n}, {n}) to match q; got {tuple(Q.shape)}")
    m, p = G.shape[-2], A.shape[-2]
    if G.shape[-1] != n:
        raise ValueError(f"G must have shape (*, m, n) with n = {n} columns (from q); got {tuple(G.shape)}")
    if h.shape[-1] != m:
        raise ValueError(f"h must have shape (*, m) with m = {m} (rows of G); got {tuple(h.shape)}")
    if A.shape[-1] != n:
        raise ValueError(f"A must have shape (*, p, n) with n = {n} columns (from q); got {tuple(A.shape)}")
    if b.shape[-1] != p:
        raise ValueError(f"b must have shape (*, p) with p = {p} (rows of A); got {tuple(b.shape)}")

    nonempty = {tuple(v) for v in batches.values() if len(v)}
    if len(nonempty) <= 1:  # fast path: every batched input has the same batch shape
        batch_shape = torch.Size(nonempty.pop() if nonempty else ())
    else:
        batch_shape = None
    try:
        if batch_shape is None:
            batch_shape = torch.broadcast_shapes(*batches.values())
    except RuntimeError:
        listing = ", ".join(f"{k}: {tuple(v)}" for k, v in batches.items() if len(v))
        raise ValueError(f"the batch dimensions of the QP data do not broadcast together ({listing})") from None

    B = math.prod(batch_shape)
    canon = {}
    for name, t in raw.items():
        core = t.shape[t.dim() - _CORE_DIMS[name]:]
        tb = batches[name]
        # (A reshape to the same shape still records an autograd view node: skip it, it costs
        # a few µs per input on every small-batch call.)
        if tb == batch_shape and len(tb):
            target = (B,) + tuple(core)
            canon[name] = t if t.shape == target else t.reshape(target)
        elif math.prod(tb) == 1:
            canon[name] = t if t.dim() == len(core) else t.reshape(core)  # shared: one copy for the batch
        else:
            canon[name] = t.expand(tuple(batch_shape) + tuple(core)).reshape((B,) + tuple(core))
    # The value checks run on the canonical fields (each batched (B, …) or shared), where the C++
    # pass can also pair every problem's Q, q, G, A for the scale statistics.
    stats, infinite_h = _check_values(canon) if check_values else (None, False)
    if infinite_h:
        canon["G"], canon["h"] = _vacuous_infinite_rows(canon["G"], canon["h"])
    return QPData(batch_shape=torch.Size(batch_shape), present=present, scale_stats=stats, **canon)


def _vacuous_infinite_rows(G: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with ``h_i = ±inf`` as equivalent finite rows: ``0ᵀx ≤ 1`` for +inf (no constraint:
    never active, λ_i = 0) and ``0ᵀx ≤ −1`` for −inf (no x satisfies it: the solver certifies
    primal infeasibility). ``torch.where`` gives those entries of G and h zero gradient — the
    solution does not depend on them. A shared G is expanded to the batch of h (a copy)."""
    inf = torch.isinf(h)
    h_new = torch.where(inf, torch.where(h > 0, 1.0, -1.0).to(h.dtype), h)
    return torch.where(inf.unsqueeze(-1), torch.zeros((), dtype=G.dtype, device=G.device), G), h_new


def _check_values(raw: dict[str, torch.Tensor]) -> tuple[tuple[float, ...] | None, bool]:
    """Finite entries everywhere except ±inf in h; Q symmetric positive semidefinite (within
    tolerance). Returns (scale statistics or None, whether h has infinite entries).

    On CPU with the native ops loaded, one C++ pass does all three checks (the per-call cost of
    the torch version below dominates small batches); the errors are the same either way. That
    pass also returns the scale statistics (``QPData.scale_stats``); None otherwise.
    """
    tol = tolerances_for(raw["q"].dtype)
    fast = _native_checks(raw, tol.psd_tol)
    if fast is not None:
        nonfinite, asym, first_bad, stats = fast
        infinite_h = _raise_if_nonfinite([name for name, bad in zip(_FIELDS, nonfinite) if bad], raw["h"])
        _raise_if_asymmetric(asym, tol)
        if first_bad >= 0:
            _raise_indefinite(raw["Q"].detach())
        return stats, infinite_h
    # One host sync for all six: max |entry| is non-finite iff some entry is NaN or ±Inf.
    names = [k for k, t in raw.items() if t.numel()]
    if not names or raw["Q"].numel() == 0:  # an empty batch (or n = 0): nothing to check
        return None, False
    peaks = torch.stack([raw[k].detach().abs().amax() for k in names])
    finite = torch.isfinite(peaks).tolist()
    infinite_h = _raise_if_nonfinite([name for name, ok in zip(names, finite) if not ok], raw["h"])
    Q = raw["Q"].detach()
    scale = Q.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    _raise_if_asymmetric(float(((Q - Q.mT).abs() / scale).amax()), tol)
    n = Q.shape[-1]
    eye = torch.eye(n, dtype=Q.dtype, device=Q.device)
    # Cholesky of Q + δI succeeds iff λ_min(Q) > -δ (up to rounding): a cheap PSD test.
    _, info = torch.linalg.cholesky_ex(Q + tol.psd_tol * scale * eye)
    if bool((info > 0).any()):
        _raise_indefinite(Q)
    return None, infinite_h


def _raise_if_nonfinite(names: list[str], h: torch.Tensor) -> bool:
    """Raise for the first field with NaN or ±inf entries — except h, where ±inf is allowed
    (a missing bound, or an impossible one); returns whether h has such entries."""
    for name in names:
        if name == "h" and not bool(torch.isnan(h).any()):
            continue
        what = "NaN entries" if name == "h" else "NaN or Inf entries"
        hint = " (h may hold ±inf: +inf for no bound)" if name == "h" else ""
        raise ValueError(f"{name} contains {what}; the QP data must be finite{hint}")
    return "h" in names


def _native_checks(raw: dict[str, torch.Tensor], psd_tol: float):
    """The C++ checks when they apply (CPU data, native ops already loaded), else None."""
    if raw["q"].device.type != "cpu":
        return None
    from optlayers._src.native import ops

    if not ops.loaded():
        return None
    return ops.check_values(*(raw[f] for f in _FIELDS), psd_tol)


def _raise_if_asymmetric(asym: float, tol) -> None:
    if asym > tol.symmetry_tol:
        raise ValueError(
            f"Q must be symmetric; max |Q - Qᵀ| relative to max |Q| is {asym:.2e} "
            f"(tolerance {tol.symmetry_tol:.0e}). Pass 0.5 * (Q + Q.mT)."
        )


def _raise_indefinite(Q: torch.Tensor) -> None:
    lam_min = float(torch.linalg.eigvalsh(Q).amin())
    raise ValueError(
        f"Q must be positive semidefinite; its smallest eigenvalue is {lam_min:.3e}. "
        "The QP is not convex — check the sign of Q or add a multiple of the identity."
    )
