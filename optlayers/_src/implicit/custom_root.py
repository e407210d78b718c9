"""Implicit differentiation of the root of an optimality condition.

Maths (Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022, §2).
Let ``x*(θ)`` solve ``F(x, θ) = 0`` with ``A = ∂F/∂x (x*, θ)`` nonsingular and
``B = ∂F/∂θ (x*, θ)``. The implicit function theorem gives

    ∂x*/∂θ = -A⁻¹ B.

Neither ``A`` nor ``B`` is formed: both are applied through autodiff of ``F``.

- Reverse mode (VJP), for a cotangent ``v`` of ``x*``:  solve ``Aᵀ u = v`` (matvec
  ``u ↦ Aᵀu`` is a VJP of ``F`` in ``x``), then ``v ∂x*/∂θ = -uᵀ B`` (a VJP of ``F`` in ``θ``).
- Forward mode (JVP), for a tangent ``θ̇``:  ``w = B θ̇`` (a JVP of ``F`` in ``θ``), then solve
  ``A ẋ = -w`` (matvec ``v ↦ A v``, a JVP of ``F`` in ``x``).

JVPs of ``F`` are computed as "VJPs of VJPs" (the VJP ``u ↦ Jᵀu`` is linear in ``u``; its own
VJP at any ``u`` with cotangent ``v`` is ``J v``), because torch cannot nest a ``torch.func.jvp``
inside a classic forward-AD (``torch.autograd.forward_ad``) computation. The linearization is
built once per solve and reused by every matvec.

Higher order. The autograd Function saves its *output* ``x*`` (not the detached solver result)
for backward. With ``create_graph=True`` the backward runs with grad enabled, so every
operation in it (the VJPs of ``F`` and the iterations of the linear solver, which use
differentiable torch ops only) is recorded, including the dependence on ``x*(θ)`` through the
saved output's own implicit backward: the backward pass is differentiable, and
Hessian-vector products of bilevel objectives are exact up to the linear solver's tolerance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from typing import Any, Callable, Sequence

import torch

from optlayers._src.implicit.pytree import TreeDef, describe_leaves, flatten, flatten_up_to, tree_sub
from optlayers._src.linear_solve.gmres import gmres

LinearSolver = Callable[..., Any]

# Default linear solver: restarted GMRES, valid for any nonsingular ∂F/∂x (cg would require a
# symmetric positive definite one, e.g. the Hessian of a strongly convex objective).
DEFAULT_SOLVE: LinearSolver = gmres


# ----------------------------------------------------------------------------------------------
# The optimality function on flat lists of tensors.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _RootSpec:
    """Everything the autograd Function needs besides tensors: how to call ``F`` on flat leaves.

    ``arg_leaves`` are the leaves of ``(args, kwargs)`` with ``None`` at the positions
    ``theta_index`` of the differentiable tensors θ, which are passed separately.
    """

    optimality_fun: Callable[..., Any]
    solve: LinearSolver
    x_def: TreeDef
    x_shapes: tuple[tuple[int, ...], ...]
    args_def: TreeDef
    arg_leaves: tuple[Any, ...]
    theta_index: tuple[int, ...]

    @property
    def num_x(self) -> int:
        return self.x_def.num_leaves

    def call(self, x_leaves: Sequence[torch.Tensor], theta: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``F(x, θ)`` as a tuple of leaves, checked to have the solution's structure."""
        leaves = list(self.arg_leaves)
        for i, t in zip(self.theta_index, theta):
            leaves[i] = t
        args, kwargs = self.args_def.unflatten(leaves)
        out = self.optimality_fun(self.x_def.unflatten(list(x_leaves)), *args, **kwargs)
        out_leaves, out_def = flatten(out)
        shapes = tuple(tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in out_leaves)
        if out_def != self.x_def or shapes != self.x_shapes:
            raise ValueError(
                "optimality_fun must return a pytree with the same structure and shapes as the "
                f"solution (F(x, θ) = 0 has as many equations as unknowns): solution "
                f"{self.x_def} with leaves {[tuple(s) for s in self.x_shapes]}, got {out_def} with "
                f"leaves {describe_leaves(out_leaves)}"
            )
        return tuple(out_leaves)


def _linearize_transpose(f: Callable[..., tuple], primals: Sequence[torch.Tensor]):
    """``(f(primals), u ↦ J_fᵀ u)`` with ``J_f`` the Jacobian at ``primals``."""
    out, vjp_fn = torch.func.vjp(f, *primals)
    return out, vjp_fn


def _linearize(f: Callable[..., tuple], primals: Sequence[torch.Tensor]):
    """``(f(primals), v ↦ J_f v)`` by the double-VJP trick (see module docstring)."""
    out, vjp_fn = torch.func.vjp(f, *primals)
    zeros = tuple(torch.zeros_like(o) for o in out)
    _, vjp_of_vjp = torch.func.vjp(lambda *u: vjp_fn(u), *zeros)
    return out, lambda v: vjp_of_vjp(tuple(v))


def _check_finite(values: Sequence[torch.Tensor]) -> None:
    from optlayers._src.linear_solve._common import in_vmap

    if in_vmap():
        return
    for v in values:
        if not bool(torch.isfinite(v.detach()).all()):
            raise ValueError(
                "optimality_fun returned non-finite values (NaN/Inf) at the solution; the "
                "implicit derivative is undefined there. Check the solver's output and F."
            )


def _root_vjp_flat(spec: _RootSpec, x, theta, cotangent, which: Sequence[int]):
    """``-Bᵀ A⁻ᵀ v`` for the θ leaves ``which`` (flat lists in, list out, aligned with which)."""
    theta = list(theta)
    out, vjp_x = _linearize_transpose(lambda *xs: spec.call(xs, theta), x)
    _check_finite(out)
    # Solve Aᵀ u = v (u lives in F's output space, which has x's structure).
    u = spec.solve(lambda uu: list(vjp_x(tuple(uu))), list(cotangent))

    def f_theta(*ts):
        full = list(theta)
        for i, t in zip(which, ts):
            full[i] = t
        return spec.call(x, full)

    _, vjp_t = torch.func.vjp(f_theta, *[theta[i] for i in which])
    return [-g for g in vjp_t(tuple(u))]


def _root_jvp_flat(spec: _RootSpec, x, theta, theta_dot):
    """``-A⁻¹ B θ̇`` (flat lists; ``theta_dot`` entries may be None = zero tangent)."""
    theta = list(theta)
    which = [i for i, t in enumerate(theta_dot) if t is not None]
    if not which:
        return [torch.zeros_like(xi) for xi in x]

    def f_theta(*ts):
        full = list(theta)
        for i, t in zip(which, ts):
            full[i] = t
        return spec.call(x, full)

    out, jvp_t = _linearize(f_theta, [theta[i] for i in which])
    _check_finite(out)
    w = jvp_t([theta_dot[i] for i in which])
    _, jvp_x = _linearize(lambda *xs: spec.call(xs, theta), x)
    return list(spec.solve(lambda v: list(jvp_x(v)), [-wi for wi in w]))


# ----------------------------------------------------------------------------------------------
# The autograd Function: inputs (spec, *solution leaves, *θ leaves), outputs the solution leaves.
# ----------------------------------------------------------------------------------------------


class _ImplicitRoot(torch.autograd.Function):
    """Identity on the (detached) solver output, with the implicit-function-theorem derivative.

    ``forward(spec, *x, *θ)`` returns copies of ``x``; ``x`` has no derivative of its own (the
    solver ran on detached data), all derivatives flow to ``θ`` through ``-A⁻¹B``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(spec: _RootSpec, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.clone() for t in tensors[: spec.num_x])

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec = inputs[0]
        x = inputs[1 : 1 + spec.num_x]
        theta = inputs[1 + spec.num_x :]
        ctx.spec = spec
        # Saving the outputs (not the inputs x) makes double backward see x*(θ).
        ctx.save_for_backward(*theta, *output)
        ctx.save_for_forward(*x, *theta)

    @staticmethod
    def backward(ctx, *grad_outputs):
        spec: _RootSpec = ctx.spec
        saved = ctx.saved_tensors
        m = len(saved) - spec.num_x
        theta, x = saved[:m], saved[m:]
        needs = ctx.needs_input_grad[1 + spec.num_x :]
        which = [i for i, need in enumerate(needs) if need]
        grads: list[torch.Tensor | None] = [None] * m
        if which:
            for i, g in zip(which, _root_vjp_flat(spec, x, theta, grad_outputs, which)):
                grads[i] = g
        return (None,) + (None,) * spec.num_x + tuple(grads)

    @staticmethod
    def jvp(ctx, *tangents):
        spec: _RootSpec = ctx.spec
        saved = ctx.saved_tensors
        x, theta = saved[: spec.num_x], saved[spec.num_x :]
        theta_dot = tangents[1 + spec.num_x :]
        return tuple(_root_jvp_flat(spec, x, theta, theta_dot))


# ----------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------


def _is_theta(leaf: Any) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.is_floating_point()


def _signature(fn) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins / C functions without a signature
        return None


def _check_signatures(optimality_fun, solver) -> None:
    """Decoration-time check: F(x, *args, **kw) and solver(init, *args, **kw) must match."""
    sig_f, sig_s = _signature(optimality_fun), _signature(solver)
    if sig_f is None or sig_s is None:
        return
    var = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    params_f = list(sig_f.parameters.values())
    params_s = list(sig_s.parameters.values())
    for name, params in (("optimality_fun", params_f), ("solver", params_s)):
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        ):
            raise TypeError(
                f"custom_root: {name} must take the solution (or the initial guess, for the "
                f"solver) as its first positional argument; its signature is {name}{sig_f if name == 'optimality_fun' else sig_s}"
            )
    if any(p.kind in var for p in params_f + params_s):
        return  # *args / **kwargs: only the call-time check applies
    kw = inspect.Parameter.KEYWORD_ONLY
    pos_f = [p.name for p in params_f[1:] if p.kind != kw]
    pos_s = [p.name for p in params_s[1:] if p.kind != kw]
    kw_f = sorted(p.name for p in params_f if p.kind == kw)
    kw_s = sorted(p.name for p in params_s if p.kind == kw)
    # Positional arguments are matched by position (names may differ: builders in
    # ol.optimality use generic names); keyword-only ones by name.
    if len(pos_f) != len(pos_s) or kw_f != kw_s:
        raise TypeError(
            "custom_root: the signatures of optimality_fun and the solver do not match. "
            "They must take the same arguments after the first (the solution x for "
            "optimality_fun, the initial guess for the solver), since each call "
            "solver(init, *args, **kwargs) is differentiated through optimality_fun(x, *args, "
            f"**kwargs). Got optimality_fun{sig_f} (arguments {pos_f}, keyword-only {kw_f}) and "
            f"solver{sig_s} (arguments {pos_s}, keyword-only {kw_s})."
        )


def _bind_check(optimality_fun, sig_f, init, args, kwargs) -> None:
    if sig_f is None:
        return
    try:
        sig_f.bind(init, *args, **kwargs)
    except TypeError as e:
        raise TypeError(
            f"custom_root: optimality_fun{sig_f} cannot be called with the solver's arguments "
            f"(x, then {len(args)} positional argument(s) and keyword(s) {sorted(kwargs)}): {e}. "
            "optimality_fun(x, *args, **kwargs) must accept exactly what the decorated "
            "solver(init, *args, **kwargs) receives."
        ) from None


def _make_spec(optimality_fun, solve, sol, args, kwargs):
    x_leaves, x_def = flatten(sol)
    for leaf in x_leaves:
        if not _is_theta(leaf):
            raise TypeError(
                "custom_root: the solver must return a floating-point tensor or a pytree of "
                f"them (the solution); got leaves {describe_leaves(x_leaves)}"
            )
    if not x_leaves:
        raise ValueError("custom_root: the solver returned a solution with no tensor leaves")
    arg_leaves, args_def = flatten((tuple(args), dict(kwargs)))
    theta_index = tuple(i for i, leaf in enumerate(arg_leaves) if _is_theta(leaf))
    theta = [arg_leaves[i] for i in theta_index]
    static = tuple(None if i in set(theta_index) else leaf for i, leaf in enumerate(arg_leaves))
    spec = _RootSpec(
        optimality_fun=optimality_fun,
        solve=solve,
        x_def=x_def,
        x_shapes=tuple(tuple(leaf.shape) for leaf in x_leaves),
        args_def=args_def,
        arg_leaves=static,
        theta_index=theta_index,
    )
    return spec, x_leaves, theta, arg_leaves


def custom_root(
    optimality_fun: Callable[..., Any],
    solve: LinearSolver | None = None,
    has_aux: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding implicit differentiation to a root-finding / optimization solver.

    ``optimality_fun(x, *args, **kwargs)`` is the optimality condition ``F(x, θ)``; the
    decorated ``solver(init, *args, **kwargs)`` returns ``x*`` with ``F(x*, θ) = 0``. The
    wrapped solver returns the same value; autograd then gives, for every floating-point tensor
    θ among ``args``/``kwargs`` (at any depth of nested tuples/lists/dicts),

        ∂x*/∂θ = -(∂F/∂x)⁻¹ ∂F/∂θ        (Blondel et al. 2022, eq. 2)

    in reverse mode (``.backward()``, ``torch.autograd.grad``, ``torch.func.grad/vjp/jacrev``)
    and in forward mode (``torch.autograd.forward_ad``, ``torch.func.jvp/jacfwd``), computed
    matrix-free from VJPs of ``F`` and one linear solve. The backward pass is itself
    differentiable (``create_graph=True``: Hessian-vector products of bilevel objectives).

    Shapes: ``x`` is a tensor or pytree of tensors of any shapes (batch dimensions included);
    ``F(x, θ)`` must return the same structure and shapes. For a batch of independent
    problems pass a solver configured with ``batch_dims`` so that each converges on its own,
    e.g. ``solve=functools.partial(ol.linear_solve.cg, batch_dims=1)``.

    The solver runs on detached inputs (no graph through its iterations, whatever it does);
    non-tensor and integer arguments are passed through unchanged to both functions. Tensors
    that ``F`` reads from a closure (not passed as arguments) get no gradient.

    Args:
        optimality_fun: ``F(x, *args, **kwargs) -> pytree like x``.
        solve: linear solver ``solve(matvec, b) -> x`` (any of :mod:`optlayers.linear_solve`,
            configured with ``functools.partial``); default :func:`~optlayers.linear_solve.gmres`.
            In reverse mode it solves ``(∂F/∂x)ᵀ u = v``, in forward mode ``(∂F/∂x) ẋ = -B θ̇``:
            use ``cg`` only when ``∂F/∂x`` is symmetric positive definite.
        has_aux: the solver returns ``(x, aux)``; ``aux`` is returned unchanged and not
            differentiated.

    Returns:
        A decorator ``solver -> wrapped_solver`` with the same call signature.

    Raises:
        TypeError: at decoration if ``F`` and the solver do not take the same number of
            positional arguments after the first (or different keyword-only ones), and at call
            time if ``F`` cannot be called with the solver's arguments (e.g. a keyword argument
            that ``F`` does not have).
        ValueError: in backward/forward mode if ``F`` does not return the solution's structure
            or returns non-finite values at the solution.

    Example::

        def F(w, lam, X, y):                        # gradient of the ridge objective
            return X.T @ (X @ w - y) + lam * w

        @ol.custom_root(F, solve=ol.linear_solve.cg)
        def ridge(init, lam, X, y):
            return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1]), X.T @ y)
    """
    if not callable(optimality_fun):
        raise TypeError(f"custom_root: optimality_fun must be callable; got {type(optimality_fun).__name__}")
    if solve is None:
        solve = DEFAULT_SOLVE
    if not callable(solve):
        raise TypeError(f"custom_root: solve must be a callable linear solver; got {type(solve).__name__}")
    sig_f = _signature(optimality_fun)

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(solver):
            raise TypeError(f"custom_root: the decorated solver must be callable; got {type(solver).__name__}")
        _check_signatures(optimality_fun, solver)

        @functools.wraps(solver)
        def wrapped(init, *args, **kwargs):
            _bind_check(optimality_fun, sig_f, init, args, kwargs)
            # Run the solver on detached data: no graph through its iterations. The initial guess
            # is a copy (solvers update it in place; the caller's tensor must not change).
            init_leaves, init_def = flatten(init)
            a_leaves, a_def = flatten((tuple(args), dict(kwargs)))
            with _outside_grad_transforms():
                d_args, d_kwargs = a_def.unflatten([_solver_input(t) for t in a_leaves])
                d_init = init_def.unflatten([_solver_input(t, copy=True) for t in init_leaves])
                try:
                    out = solver(d_init, *d_args, **d_kwargs)
                except RuntimeError as err:
                    if not any(key in str(err) for key in _READS_DATA_UNDER_VMAP):
                        raise
                    raise RuntimeError(
                        "custom_root: the solver read a tensor's data (numpy, SciPy, .item(), …) under "
                        "torch.func.vmap (also used by jacfwd and hessian), where it sees batched tensors "
                        "without storage. Write the solver in torch ops for vmap, or use torch.func.grad, "
                        "jvp, jacrev or torch.autograd, under which it runs on plain tensors."
                    ) from err
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError("custom_root(has_aux=True): the solver must return a pair (solution, aux)")
                sol, aux = out
            else:
                sol, aux = out, None
            spec, x_leaves, theta, _ = _make_spec(optimality_fun, solve, sol, args, kwargs)
            x_leaves = [t.detach() for t in x_leaves]
            if theta:
                x_leaves = list(_ImplicitRoot.apply(spec, *x_leaves, *theta))
            sol = spec.x_def.unflatten(x_leaves)
            return (sol, aux) if has_aux else sol

        return wrapped

    return decorator


# What PyTorch says when a solver reads a batched tensor's data under vmap.
_READS_DATA_UNDER_VMAP = ("doesn't have storage", "calling .item()", "data-dependent control flow")


def _outside_grad_transforms():
    """Run the solver below the active ``torch.func`` transforms when they are only ``grad``/``jvp``
    levels: its inputs are constants for them (unwrapped by :func:`_solver_input`), and there a
    solver that leaves torch — numpy, SciPy, CVXPY — works as under ``torch.autograd`` (under an
    active transform even ``tensor.numpy()`` of a plain tensor fails: "Cannot access data pointer
    of Tensor that doesn't have storage"); ``torch.func`` inside the solver still works. Under
    ``vmap`` nothing changes: the solver sees the per-sample (batched) view, the only one it can
    use, so it must be written in torch ops there."""
    stack = torch._C._functorch.get_interpreter_stack()
    if not stack or any(level.key() == torch._C._functorch.TransformType.Vmap for level in stack):
        return contextlib.nullcontext()
    try:  # (a private helper of torch.func; without it the solver runs as before)
        from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack
    except ImportError:  # pragma: no cover - other torch versions
        return contextlib.nullcontext()
    return temporarily_clear_interpreter_stack()


def _solver_input(t: Any, copy: bool = False) -> Any:
    """An input as the solver sees it: detached (a copy for the initial guess, which solvers update
    in place — the caller's tensor must not change), and under ``torch.func.grad``/``jvp`` the
    plain tensor beneath the transform's wrapper (the solver's inputs are constants for the
    transform), so that a solver that leaves torch — numpy, SciPy, CVXPY — works there as under
    ``torch.autograd`` (it had failed with "Cannot access data pointer of Tensor that doesn't have
    storage"). ``vmap``'s batched tensors are kept: their per-sample view is the only one a solver
    can use, so under ``vmap`` the solver must be written in torch ops."""
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach()
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t) and not functorch.is_batchedtensor(t):
        t = functorch.get_unwrapped(t)
    return t.clone() if copy else t


def custom_fixed_point(
    fixed_point_fun: Callable[..., Any],
    solve: LinearSolver | None = None,
    has_aux: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding implicit differentiation to a fixed-point solver ``x = T(x, θ)``.

    The reduction to :func:`custom_root` with ``F(x, θ) = T(x, θ) - x`` (the Jacobian
    ``∂F/∂x = ∂T/∂x - I`` is nonsingular when ``T`` is a contraction). Same arguments.
    """
    if not callable(fixed_point_fun):
        raise TypeError(f"custom_fixed_point: fixed_point_fun must be callable; got {type(fixed_point_fun).__name__}")

    def optimality_fun(x, *args, **kwargs):
        return tree_sub(fixed_point_fun(x, *args, **kwargs), x)

    sig = _signature(fixed_point_fun)
    if sig is not None:
        optimality_fun.__signature__ = sig  # so that the signature checks see T's arguments
    return custom_root(optimality_fun, solve=solve, has_aux=has_aux)


def _functional_spec(optimality_fun, solve, sol, args):
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of the arguments of optimality_fun after x; got {type(args).__name__}")
    return _make_spec(optimality_fun, solve if solve is not None else DEFAULT_SOLVE, sol, tuple(args), {})


def root_vjp(
    optimality_fun: Callable[..., Any],
    sol: Any,
    args: Sequence[Any],
    cotangent: Any,
    solve: LinearSolver | None = None,
) -> tuple[Any, ...]:
    """Vector-Jacobian product of the root ``x*(θ)`` of ``optimality_fun(x, *args) = 0``.

    Computes ``v ∂x*/∂θ = -(A⁻ᵀ v)ᵀ B`` for every floating-point tensor leaf θ of ``args``,
    with ``A = ∂F/∂x``, ``B = ∂F/∂θ`` at ``(sol, args)``.

    Args:
        optimality_fun: ``F(x, *args)``.
        sol: the solution ``x*`` (tensor or pytree).
        args: tuple of the remaining arguments of ``F``.
        cotangent: ``v``, same structure and shapes as ``sol``.
        solve: linear solver (default gmres).

    Returns:
        A tuple with the structure of ``args``: the VJP for each floating-point tensor leaf,
        ``None`` for the other leaves.
    """
    spec, x_leaves, theta, arg_leaves = _functional_spec(optimality_fun, solve, sol, args)
    cot_leaves, cot_def = flatten(cotangent)
    if cot_def != spec.x_def:
        raise ValueError(f"root_vjp: cotangent has structure {cot_def}, expected that of sol {spec.x_def}")
    grads = _root_vjp_flat(spec, x_leaves, theta, cot_leaves, list(range(len(theta)))) if theta else []
    out: list[Any] = [None] * len(arg_leaves)
    for i, g in zip(spec.theta_index, grads):
        out[i] = g
    return spec.args_def.unflatten(out)[0]


def root_jvp(
    optimality_fun: Callable[..., Any],
    sol: Any,
    args: Sequence[Any],
    tangents: Sequence[Any],
    solve: LinearSolver | None = None,
) -> Any:
    """Jacobian-vector product of the root ``x*(θ)`` of ``optimality_fun(x, *args) = 0``.

    Computes ``ẋ = -A⁻¹ (B θ̇)`` with ``A = ∂F/∂x``, ``B = ∂F/∂θ`` at ``(sol, args)``.

    Args:
        optimality_fun: ``F(x, *args)``.
        sol: the solution ``x*`` (tensor or pytree).
        args: tuple of the remaining arguments of ``F``.
        tangents: tuple with the structure of ``args``; a tangent tensor for each
            floating-point tensor leaf (``None`` = zero tangent), anything for the other leaves.
        solve: linear solver (default gmres).

    Returns:
        ``ẋ`` with the structure and shapes of ``sol``.
    """
    spec, x_leaves, theta, arg_leaves = _functional_spec(optimality_fun, solve, sol, args)
    if not isinstance(tangents, (tuple, list)) or len(tangents) != len(args):
        raise ValueError(f"root_jvp: tangents must be a tuple with one entry per argument ({len(args)})")
    t_leaves = flatten_up_to(spec.args_def, (tuple(tangents), {}), what="root_jvp: tangents")
    theta_dot = [t_leaves[i] for i in spec.theta_index]
    for i, (t, td) in enumerate(zip(theta, theta_dot)):
        if td is not None and tuple(td.shape) != tuple(t.shape):
            raise ValueError(f"root_jvp: a tangent has shape {tuple(td.shape)}, expected {tuple(t.shape)}")
    return spec.x_def.unflatten(_root_jvp_flat(spec, x_leaves, theta, theta_dot))
