"""Finite-difference gradient checks for any function of tensors.

The loss compared is a fixed random linear functional of the outputs,
``L(θ) = Σ_k <w_k, f(θ)_k>`` with seeded weights ``w_k``; its autograd gradient with respect
to every input that requires grad is compared with central differences

    ∂L/∂θ_i  ≈  (L(θ + ε e_i) − L(θ − ε e_i)) / (2ε)          (mode="full"), or
    <∇L, v>  ≈  (L(θ + ε v)  − L(θ − ε v))  / (2ε)             (mode="directional"),

whose truncation error is O(ε²)·|L'''| and rounding error O(u/ε)·|L|, so ε ≈ u^(1/3) balances
them (~6e-6 in float64). Errors are reported normwise, per input:

    full:         ‖g_fd − g_ad‖_∞ / max(‖g_fd‖_∞, ‖g_ad‖_∞, atol/rtol)
    directional:  max_v |d_fd(v) − <g_ad, v>| / max(‖g_ad‖_2 ‖v‖_2, atol/rtol)

so an input passes when its absolute error is at most max(rtol·scale, atol). A non-finite
gradient or finite difference is an error of +inf (a failure), never a pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch


@dataclasses.dataclass
class GradCheckReport:
    """Worst relative error per checked input (keyed by its position in ``inputs``)."""

    errors: dict[int, float]
    rtol: float
    mode: str
    analytic: dict[int, torch.Tensor]
    numeric: dict[int, torch.Tensor]

    @property
    def ok(self) -> bool:
        return all(e <= self.rtol for e in self.errors.values())

    @property
    def worst(self) -> float:
        return max(self.errors.values(), default=0.0)

    def __str__(self) -> str:
        rows = [f"  input {i}: relative error {e:.3e}" for i, e in sorted(self.errors.items())]
        verdict = "PASS" if self.ok else "FAIL"
        return f"check_grad ({self.mode}, rtol={self.rtol:.1e}): {verdict}\n" + "\n".join(rows)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    """The tensors of ``fn``'s output, through nested tuples/lists (non-tensor leaves, e.g. a
    status code or None, are skipped; a nested output used to be dropped silently, so a wrong
    gradient there passed)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        return tuple(t for o in out if isinstance(o, (torch.Tensor, tuple, list)) for t in _as_tuple(o))
    raise TypeError(f"check_grad: fn must return a tensor or a (nested) tuple/list of tensors; got {type(out)}")


def _error(diff: float, scale: float) -> float:
    """``diff / scale``, +inf where either is not finite (``max`` would skip a NaN)."""
    value = diff / scale
    return value if math.isfinite(value) else float("inf")


def check_grad(
    fn: Callable[..., object],
    inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    eps: float | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    mode: str = "full",
    num_directions: int = 6,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradCheckReport:
    """Compare autograd gradients of ``fn`` with central finite differences.

    Args:
        fn: ``fn(*inputs)`` returning a tensor or a tuple/list of tensors (any shapes).
        inputs: a tensor or a sequence of tensors; only those with ``requires_grad=True`` are
            checked, the others are passed through unchanged.
        eps: relative finite-difference step: entry θ_i moves by ``eps·max(1, |θ_i|)`` (``mode="full"``;
            directional: ``eps·max(1, ‖θ‖_∞)`` along each direction), so large inputs are not
            perturbed below their rounding; default ``u^(1/3)`` of the dtype (6e-6 in float64).
        rtol: tolerance on the normwise relative error of each checked input.
        atol: absolute tolerance: an input passes when its absolute error is at most
            max(rtol·scale, atol), so a gradient that is exactly zero (e.g. at a vertex of an LP)
            is compared with ``atol`` instead of against finite-difference noise.
        mode: ``"full"`` perturbs every entry (2·numel evaluations per input);
            ``"directional"`` checks ``num_directions`` random directions per input.
        seed: seeds the output weights and the random directions.
        raise_on_failure: raise ``AssertionError`` (with the report) if any input exceeds rtol.

    Returns:
        A :class:`GradCheckReport` with the worst relative error per checked input.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    if mode not in ("full", "directional"):
        raise ValueError(f"check_grad: mode must be 'full' or 'directional'; got {mode!r}")
    if eps is not None and not eps > 0:
        raise ValueError(f"check_grad: eps must be > 0; got {eps}")
    if not rtol > 0 or not atol >= 0:
        raise ValueError(f"check_grad: rtol must be > 0 and atol >= 0; got rtol={rtol}, atol={atol}")
    if mode == "directional" and num_directions < 1:
        raise ValueError(f"check_grad: num_directions must be >= 1; got {num_directions}")
    checked = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("check_grad: no input has requires_grad=True; nothing to check")
    for i in checked:
        if not inputs[i].is_floating_point():
            raise ValueError(f"check_grad: input {i} must be floating point; got {inputs[i].dtype}")

    gen = torch.Generator().manual_seed(seed)
    outputs = _as_tuple(fn(*inputs))
    weights = [
        torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype).to(o.device)
        for o in outputs
    ]

    def loss_of(outs) -> float:
        return sum(float((w * o).sum()) for w, o in zip(weights, outs))

    differentiable = [(w * o).sum() for w, o in zip(weights, outputs) if o.requires_grad]
    if not differentiable:
        raise ValueError("check_grad: no output of fn depends differentiably on the inputs")
    grads = torch.autograd.grad(sum(differentiable), [inputs[i] for i in checked], allow_unused=True)
    analytic = {
        i: (g if g is not None else torch.zeros_like(inputs[i])).detach()
        for i, g in zip(checked, grads)
    }

    def eval_with(i: int, value: torch.Tensor) -> float:
        args = list(inputs)
        args[i] = value
        with torch.no_grad():
            return loss_of(_as_tuple(fn(*args)))

    errors: dict[int, float] = {}
    numeric: dict[int, torch.Tensor] = {}
    for i in checked:
        base = inputs[i].detach()
        rel = eps if eps is not None else float(torch.finfo(base.dtype).eps) ** (1.0 / 3.0)
        g = analytic[i]
        floor = atol / rtol
        if base.numel() == 0:  # nothing to compare
            errors[i], numeric[i] = 0.0, torch.zeros_like(base)
            continue
        if mode == "full":
            fd = torch.zeros_like(base, memory_format=torch.contiguous_format)
            flat = fd.view(-1)
            values = base.reshape(-1)
            for k in range(base.numel()):
                v = abs(float(values[k]))
                step = rel * (max(1.0, v) if v != float("inf") else 1.0)  # (±inf: a missing bound)
                e = torch.zeros_like(base, memory_format=torch.contiguous_format).view(-1)
                e[k] = step
                e = e.view(base.shape)
                flat[k] = (eval_with(i, base + e) - eval_with(i, base - e)) / (2 * step)
            scale = max(float(fd.abs().max()), float(g.abs().max()), floor)
            errors[i] = _error(float((fd - g).abs().max()), scale)
            numeric[i] = fd
        else:
            worst = 0.0
            dirs = []
            finite = base[torch.isfinite(base)]
            step = rel * max(1.0, float(finite.abs().max()) if finite.numel() else 1.0)
            for _ in range(num_directions):
                v = torch.randn(base.shape, generator=gen, dtype=torch.float64).to(base.dtype).to(base.device)
                d_fd = (eval_with(i, base + step * v) - eval_with(i, base - step * v)) / (2 * step)
                d_ad = float((g * v).sum())
                scale = max(float(g.norm()) * float(v.norm()), floor)
                worst = max(worst, _error(abs(d_fd - d_ad), scale))
                dirs.append(d_fd)
            errors[i] = worst
            numeric[i] = torch.tensor(dirs, dtype=torch.float64)
    report = GradCheckReport(errors=errors, rtol=rtol, mode=mode, analytic=analytic, numeric=numeric)
    if raise_on_failure and not report.ok:
        raise AssertionError(str(report))
    return report
