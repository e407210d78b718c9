"""Python side of the native ops: loading, fake (meta) kernels and autograd registration.

``torch.ops.optlayers.qp_solve``, ``qp_kkt_solve``, ``qp_backward`` and ``qp_active_set_solve`` are
defined in C++
(``csrc/qp_cpu*.cpp``: ``TORCH_LIBRARY`` schemas + CPU kernels; ``csrc/qp_cuda_binding.cpp``: CUDA
kernels). Here we add, once the library is loaded:

- ``register_fake`` for every op (shapes/dtypes only), so they trace under ``torch.compile``;
- ``register_autograd`` for ``qp_solve``: its backward is the KKT adjoint of
  :func:`optlayers._src.qp.backward.kkt_vjp` — on CPU fused into one C++ op (``qp_backward``,
  same formulas per problem), elsewhere ``kkt_vjp`` itself with the native K-solve; when the
  backward is recorded (``create_graph=True``) it is ``backward.differentiable_vjp`` on the op's
  outputs, so higher derivatives hold too.
"""

from __future__ import annotations

import os

import torch

from optlayers._src.native import build
from optlayers._src.qp import kkt
from optlayers._src.qp.backward import data_of, differentiable_vjp, kkt_vjp
from optlayers._src.qp.linalg import mv
from optlayers._src.qp.problem import QPData
from optlayers._src.tolerances import tolerances_for

_registered = False


def ensure_loaded(*, warn: bool = True) -> tuple[bool, str]:
    """Build/load the native library (cached) and register the Python-side pieces once."""
    global _registered
    ok, why = build.availability(warn=warn)
    if ok and not _registered:
        _register()
        _registered = True
    return ok, why


def loaded() -> bool:
    """Whether the native ops are already loaded in this process (never builds)."""
    return _registered


def check_values(Q, q, G, h, A, b, psd_tol: float):
    """C++ value checks (finiteness, symmetry, PSD) of CPU data; see ``csrc/qp_cpu.cpp::qp_check_cpu``.

    Returns ``(nonfinite: list[bool] for Q, q, G, h, A, b, asymmetry: float, first_indefinite: int,
    scale_stats: see scale_stats)`` (``first_indefinite`` is −1 when every ``Q + psd_tol·scale·I`` has a
    Cholesky factor). The data is canonical (each field batched (B, …) or shared).
    """
    out = torch.ops.optlayers.qp_check(Q.detach(), q.detach(), G.detach(), h.detach(), A.detach(), b.detach(),
                                       psd_tol).tolist()
    return [v != 0 for v in out[:6]], out[6], int(out[7]), tuple(out[8:13])


def scale_stats(Q, q, G, A) -> tuple[float, float, float, float, float]:
    """(min, max of the problems' objective scales, max column-scale spread, min, max of the
    nonzero rows' largest entries in G and A) of canonical CPU data;
    see ``csrc/qp_cpu.cpp::qp_scale_stats_cpu`` and ``optlayers/_src/qp/scaling.py``."""
    return tuple(torch.ops.optlayers.qp_scale_stats(Q.detach(), q.detach(), G.detach(), A.detach()).tolist())


def cuda_available() -> bool:
    """Whether the loaded library has CUDA kernels (built when torch sees a GPU and nvcc)."""
    ok, _ = ensure_loaded(warn=False)
    return ok and torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "optlayers::qp_solve", "CUDA"
    )


def solve(data: QPData, tol: float, max_iter: int, polish: bool, *, differentiable: bool = False):
    """Run ``optlayers::qp_solve`` on canonical data: (x, lam, nu, status, iterations).

    With ``differentiable`` the op is called through :class:`_QPSolveFunction` (same backward as
    the op's registered autograd, without its per-call Python overhead of ~0.3 ms each way).
    """
    grad = differentiable and torch.is_grad_enabled() and any(t.requires_grad for t in data.tensors())
    args = _solve_args(data, tol, max_iter, polish, grad)
    if grad:
        return _QPSolveFunction.apply(*args)[:5]
    return torch.ops.optlayers.qp_solve(*args)[:5]


def _solve_args(data: QPData, tol: float, max_iter: int, polish: bool, keep: bool) -> tuple:
    """qp_solve's arguments for ``data`` with the dtype's tolerances; the polish LU is kept where
    ``keep`` asks for it and :func:`_keep_factor` says it pays."""
    tl = tolerances_for(data.dtype)
    return (*data.tensors(), data.B, tol, tl.infeasibility_tol, tl.kkt_reg, tl.polish_tol, tl.polish_start,
            tl.step_to_boundary, max_iter, polish, keep and polish and _keep_factor(data))


# Keep the polish LU for the backward (one factorization less per problem) when it is worth its
# memory. The factor is stored at the full size N0 = n + m + p (zeroed, N0² + N0 + m + 1 scalars a
# problem), but the LU it saves is of the compact system, N = n + k + p ≥ n + p. So the rule looks
# at n + p, the part of N that is always there: from 48 on (below, refactoring costs less than
# ~10 µs a problem and writing the N0² slots costs more — measured on 4,800 grasp QPs, n = 12,
# m = 41: fwd+bwd 616 ms keeping vs 477 ms refactoring, one thread; at n = 200, p = 50 keeping
# wins, 72 vs 88 ms), and up to 2²⁴ scalars for the batch (128 MiB in float64). CPU only (the
# CUDA kernels refactor).
_KEEP_MIN_N = 48
_KEEP_MAX_SCALARS = 1 << 24


def _factor_size(n: int, m: int, p: int) -> int:
    """Scalars per problem of a kept factor (csrc/optlayers/qp_ipm.h::factor_size)."""
    N = n + m + p
    return N * N + N + m + 1


def _lanes_likely(data: QPData) -> bool:
    """Whether the CPU op will take its batch-interleaved float64 path (csrc/qp_cpu_common.h::use_lanes),
    which polishes and differentiates whole blocks by its own KKT solve: there is no LU to
    keep, and asking for one would send the block to the serial polish. A mirror of the C++ rule
    (float64, m > 0, n ≤ 80, m + p ≤ 128, at least two blocks: B ≥ 16 with 8 lanes; with 4-wide
    vectors the op already takes lanes from B = 8, where keeping is then just not needed)."""
    forced = os.environ.get("OPTLAYERS_CPU_LANES", "")
    if forced.startswith("0") or data.dtype != torch.float64 or data.m == 0:
        return False
    if forced.startswith("1"):
        return data.m + data.p <= 1024
    return data.n <= 80 and data.m + data.p <= 128 and data.B >= 16


def _keep_factor(data: QPData) -> bool:
    fits = data.B * _factor_size(data.n, data.m, data.p) <= _KEEP_MAX_SCALARS
    return data.device.type == "cpu" and data.n + data.p >= _KEEP_MIN_N and fits and not _lanes_likely(data)


def kkt_solve(data: QPData, mask: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve the active-set KKT system K u = rhs in C++ (refactoring K at ``mask``)."""
    return torch.ops.optlayers.qp_kkt_solve(data.Q, data.G, data.A, mask, rhs, tolerances_for(data.dtype).kkt_reg)


def has_active_set_solve(data: QPData) -> bool:
    """Whether ``qp_active_set_solve`` (the warm start's guessed active sets in one native pass)
    takes ``data``: on CPU any problem; on CUDA those of the small kernel (n ≤ 16, 1 ≤ m ≤ 128,
    p = 0: one thread per problem). Elsewhere the warm start goes through ``active_set.py`` and
    ``qp_kkt_solve``."""
    if data.device.type == "cpu":
        return True
    return data.device.type == "cuda" and cuda_available() and 1 <= data.n <= 16 and 1 <= data.m <= 128 and data.p == 0


def active_set_solve(data: QPData, guess: torch.Tensor, rounds: int, keep_factor: bool = False):
    """Per problem, the KKT system of the guessed active set (``guess`` (B, m), nonzero = active)
    through the interior point's polish: solve, acceptance test, multiplier repair and
    ``rounds − 1`` corrected guesses (csrc/qp_cpu_derivatives.cpp::qp_active_set_solve_cpu). Returns
    (x, lam, nu, status, factor): SOLVED where accepted, MAX_ITER (zeros) elsewhere; ``factor``
    the accepted polish LUs for ``qp_backward`` with ``keep_factor`` where :func:`_keep_factor`
    says keeping pays, else empty."""
    tl = tolerances_for(data.dtype)
    keep = keep_factor and _keep_factor(data)
    return torch.ops.optlayers.qp_active_set_solve(*data.tensors(), guess, tl.kkt_reg, tl.polish_tol, rounds, keep)


def solve_keeping(data: QPData, tol: float, max_iter: int, polish: bool):
    """``qp_solve`` without autograd, also returning the kept polish LUs where :func:`_keep_factor`
    says keeping pays (else an empty factor): (x, lam, nu, status, iterations, factor)."""
    return torch.ops.optlayers.qp_solve(*_solve_args(data, tol, max_iter, polish, True))


def fused_backward(data: QPData, x, lam, nu, status, factor, gx, glam, gnu, needs) -> tuple:
    """Reverse-mode gradients of a solution (x, λ, ν) by the fused C++ backward (``qp_backward``:
    active set, KKT solve and gradient outer products per problem; CPU tensors only), for
    solutions that did not come from ``qp_solve``'s own autograd (the warm start's). ``status``
    (B,) int8: problems not SOLVED contribute nothing; ``factor``: kept polish LUs (qp_solve's
    layout) or empty; ``needs``: which of (Q, q, G, h, A, b) want a gradient (the others come back
    empty)."""
    return torch.ops.optlayers.qp_backward(*data.tensors(), x, lam, nu, status, factor, gx, glam, gnu,
                                           tolerances_for(x.dtype).kkt_reg, needs_mask(needs))


def _qp_solve_fake(Q, q, G, h, A, b, batch, tol, inf_tol, kkt_reg, polish_tol, polish_start, step_to_boundary, max_iter,
                   polish, keep_factor):
    n, m, p = q.shape[-1], h.shape[-1], b.shape[-1]
    return (
        q.new_empty(batch, n),
        q.new_empty(batch, m),
        q.new_empty(batch, p),
        q.new_empty(batch, dtype=torch.int8),
        q.new_empty(batch, dtype=torch.int32),
        q.new_empty(batch, _factor_size(n, m, p)) if keep_factor else q.new_empty(0),
    )


def _qp_kkt_solve_fake(Q, G, A, mask, rhs, kkt_reg):
    return torch.empty_like(rhs)


def _qp_backward_fake(Q, q, G, h, A, b, x, lam, nu, status, factor, gx, glam, gnu, kkt_reg, needs=63):
    return tuple(torch.empty_like(t) if (needs >> k) & 1 else t.new_empty(0)
                 for k, t in enumerate((Q, q, G, h, A, b)))


def needs_mask(needs) -> int:
    """qp_backward's bitmask of the wanted gradients (bit k: input k of Q, q, G, h, A, b)."""
    return sum(1 << k for k, need in enumerate(needs) if need)


def _qp_active_set_solve_fake(Q, q, G, h, A, b, guess, kkt_reg, polish_tol, rounds, keep_factor):
    batch, n, m, p = guess.shape[0], q.shape[-1], h.shape[-1], b.shape[-1]
    return (q.new_empty(batch, n), q.new_empty(batch, m), q.new_empty(batch, p),
            q.new_empty(batch, dtype=torch.int8),
            q.new_empty(batch, _factor_size(n, m, p)) if keep_factor else q.new_empty(0))


def _has_fused_backward(device: torch.device) -> bool:
    """The fused C++ backward (``qp_backward``) exists for CPU tensors; CUDA uses kkt_solve."""
    return device.type == "cpu"


def _setup_context(ctx, inputs, output):
    Q, q, G, h, A, b, batch = inputs[:7]
    x, lam, nu, status, _, factor = output
    ctx.batch = batch
    ctx.n_options = len(inputs) - 6  # batch, tolerances, max_iter, polish, keep_factor: no gradients
    ctx.mark_non_differentiable(output[3], output[4], output[5])
    ctx.save_for_backward(Q, q, G, h, A, b, x, lam, nu, status, factor)


def _backward(ctx, gx, glam, gnu, _gstatus, _giters, _gfactor):
    Q, q, G, h, A, b, x, lam, nu, status, factor = ctx.saved_tensors
    needs = ctx.needs_input_grad[:6]
    differentiable = torch.is_grad_enabled() and ctx.batch > 0  # create_graph=True: higher derivatives
    if _has_fused_backward(x.device) and not differentiable:
        # One C++ pass per problem: active set, KKT solve and the gradient outer products
        # (csrc/optlayers/qp_ipm.h::kkt_backward, the fused form of backward.kkt_vjp).
        grads = torch.ops.optlayers.qp_backward(
            Q, q, G, h, A, b, x, lam, nu, status, factor, gx, glam, gnu, tolerances_for(x.dtype).kkt_reg,
            needs_mask(needs),
        )
        return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * ctx.n_options
    data = data_of(Q, q, G, h, A, b, ctx.batch)
    # Problems that did not solve contribute zero gradient (their outputs may be garbage).
    ok = (status == 0).unsqueeze(-1)
    x, lam, nu = (torch.where(ok, t, torch.zeros_like(t)) for t in (x, lam, nu))
    gx, glam, gnu = (
        torch.zeros_like(t) if g is None else torch.where(ok, g, torch.zeros_like(g))
        for g, t in ((gx, x), (glam, lam), (gnu, nu))
    )
    mask = kkt.classify_active(lam.detach(), (h - mv(G, x)).detach())
    if differentiable:
        # The backward on the graph (x, λ, ν are this op's outputs; backward.py's module docstring).
        return differentiable_vjp(data, x, lam, nu, mask, gx, glam, gnu, needs, native=True) + (None,) * ctx.n_options
    grads = kkt_vjp(data, x, lam, nu, mask, gx, glam, gnu, lambda r: kkt_solve(data, mask, r), needs)
    return grads + (None,) * ctx.n_options


class _QPSolveFunction(torch.autograd.Function):
    """``qp_solve`` with the backward of :func:`_backward` — the op's registered autograd formula,
    wired through a plain ``autograd.Function`` because ``register_autograd``'s generic wrapper
    costs ~0.3 ms of Python per call (it dominates small batches). ``torch.ops.optlayers.qp_solve``
    called directly stays differentiable through the registration below."""

    @staticmethod
    def forward(ctx, *args):
        # (Old-style forward(ctx, …): a separate setup_context makes apply() bind arguments through
        # inspect.signature on every call.) Below the autograd key: skip the registered formula's
        # own no-grad wrapper.
        with torch._C._AutoDispatchBelowADInplaceOrView():
            out = torch.ops.optlayers.qp_solve(*args)
        _setup_context(ctx, args, out)
        return out

    @staticmethod
    def backward(ctx, *grads):
        return _backward(ctx, *grads)


def _register() -> None:
    torch.library.register_fake("optlayers::qp_solve")(_qp_solve_fake)
    torch.library.register_fake("optlayers::qp_kkt_solve")(_qp_kkt_solve_fake)
    torch.library.register_fake("optlayers::qp_backward")(_qp_backward_fake)
    torch.library.register_fake("optlayers::qp_active_set_solve")(_qp_active_set_solve_fake)
    torch.library.register_autograd("optlayers::qp_solve", _backward, setup_context=_setup_context)
