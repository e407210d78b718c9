"""Python side of the native ops: loading, fake (meta) kernels and autograd registration.

``torch.ops.optlayers.qp_solve`` and ``torch.ops.optlayers.qp_kkt_solve`` are defined in C++
(``csrc/qp_cpu.cpp``: ``TORCH_LIBRARY`` schemas + CPU kernels; ``csrc/qp_cuda_binding.cpp``: CUDA
kernels). Here we add, once the library is loaded:

- ``register_fake`` for both ops (shapes/dtypes only), so they trace under ``torch.compile``;
- ``register_autograd`` for ``qp_solve``: its backward is the shared KKT adjoint
  (:func:`optlayers._src.qp.backward.kkt_vjp`) with the native K-solve.
"""

from __future__ import annotations

import torch

from optlayers._src.native import build
from optlayers._src.qp import kkt
from optlayers._src.qp.backward import data_of, kkt_vjp
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


def cuda_available() -> bool:
    """Whether the loaded library has CUDA kernels (built when torch sees a GPU and nvcc)."""
    ok, _ = ensure_loaded(warn=False)
    return ok and torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "optlayers::qp_solve", "CUDA"
    )


def solve(data: QPData, tol: float, max_iter: int, polish: bool):
    """Run ``optlayers::qp_solve`` on canonical data: (x, lam, nu, status, iterations)."""
    tl = tolerances_for(data.dtype)
    return torch.ops.optlayers.qp_solve(
        *data.tensors(), data.B, tol, tl.infeasibility_tol, tl.kkt_reg, tl.polish_tol, tl.step_to_boundary,
        max_iter, polish,
    )


def kkt_solve(data: QPData, mask: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve the active-set KKT system K u = rhs in C++ (refactoring K at ``mask``)."""
    return torch.ops.optlayers.qp_kkt_solve(data.Q, data.G, data.A, mask, rhs, tolerances_for(data.dtype).kkt_reg)


def _qp_solve_fake(Q, q, G, h, A, b, batch, tol, inf_tol, kkt_reg, polish_tol, step_to_boundary, max_iter, polish):
    n, m, p = q.shape[-1], h.shape[-1], b.shape[-1]
    return (
        q.new_empty(batch, n),
        q.new_empty(batch, m),
        q.new_empty(batch, p),
        q.new_empty(batch, dtype=torch.int8),
        q.new_empty(batch, dtype=torch.int32),
    )


def _qp_kkt_solve_fake(Q, G, A, mask, rhs, kkt_reg):
    return torch.empty_like(rhs)


def _setup_context(ctx, inputs, output):
    Q, q, G, h, A, b, batch = inputs[:7]
    x, lam, nu, status, _ = output
    ctx.batch = batch
    ctx.mark_non_differentiable(output[3], output[4])
    ctx.save_for_backward(Q, q, G, h, A, b, x, lam, nu, status)


def _backward(ctx, gx, glam, gnu, _gstatus, _giters):
    Q, q, G, h, A, b, x, lam, nu, status = ctx.saved_tensors
    data = data_of(Q, q, G, h, A, b, ctx.batch)
    # Problems that did not solve contribute zero gradient (their outputs may be garbage).
    ok = (status == 0).unsqueeze(-1)
    x, lam, nu = (torch.where(ok, t, torch.zeros_like(t)) for t in (x, lam, nu))
    gx, glam, gnu = (
        torch.zeros_like(t) if g is None else torch.where(ok, g, torch.zeros_like(g))
        for g, t in ((gx, x), (glam, lam), (gnu, nu))
    )
    mask = kkt.classify_active(lam, (h - mv(G, x)))
    grads = kkt_vjp(data, x, lam, nu, mask, gx, glam, gnu, lambda r: kkt_solve(data, mask, r), ctx.needs_input_grad[:6])
    return grads + (None,) * 8


def _register() -> None:
    torch.library.register_fake("optlayers::qp_solve")(_qp_solve_fake)
    torch.library.register_fake("optlayers::qp_kkt_solve")(_qp_kkt_solve_fake)
    torch.library.register_autograd("optlayers::qp_solve", _backward, setup_context=_setup_context)
