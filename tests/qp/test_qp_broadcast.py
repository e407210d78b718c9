"""Batch shapes and broadcasting of ``ol.solve_qp``, and the gradient sums of shared inputs."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import optlayers as ol
from qp_oracles import sym

F64 = torch.float64
NAMES = ("Q", "q", "G", "h", "A", "b")


def _weights(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _solve_all(data, **kw):
    sol = ol.solve_qp(*data, return_solution=True, **kw)  # kw carries the backend
    return sol


@pytest.mark.parametrize("shared", [("G",), ("Q", "G", "A")], ids=["G", "QGA"])
def test_shared_equals_expanded_and_gradient_is_batch_sum(backend, shared):
    """Shared data (no batch dim) vs. explicit per-problem copies: same x, λ, ν; the shared
    input's gradient equals the SUM of the copies' gradients (not the mean)."""
    B = 4
    P = ol.testing.random_qp(B, 6, 8, 2, active_fraction=0.25, shared=shared, seed=1)
    w = [_weights((B, 6), 1), _weights((B, 8), 2), _weights((B, 2), 3)]

    shared_leaves = [t.clone().requires_grad_() for t in P.data()]
    sol = _solve_all([sym(shared_leaves[0])] + shared_leaves[1:], backend=backend)
    loss = sum((wi * o).sum() for wi, o in zip(w, (sol.x, sol.lam, sol.nu)))
    g_shared = torch.autograd.grad(loss, shared_leaves)

    cores = {"Q": 2, "q": 1, "G": 2, "h": 1, "A": 2, "b": 1}
    expanded = [
        (t.expand((B,) + t.shape).clone() if t.dim() == cores[k] else t.clone()).requires_grad_()
        for k, t in zip(NAMES, P.data())
    ]
    sol_e = _solve_all([sym(expanded[0])] + expanded[1:], backend=backend)
    loss_e = sum((wi * o).sum() for wi, o in zip(w, (sol_e.x, sol_e.lam, sol_e.nu)))
    g_exp = torch.autograd.grad(loss_e, expanded)

    for a, b in ((sol.x, sol_e.x), (sol.lam, sol_e.lam), (sol.nu, sol_e.nu)):
        assert float((a - b).abs().max()) <= 1e-12
    for name, gs, ge, t in zip(NAMES, g_shared, g_exp, P.data()):
        want = ge.sum(0) if name in shared else ge
        assert gs.shape == t.shape, f"{name}: gradient shape {tuple(gs.shape)} != input {tuple(t.shape)}"
        err = float((gs - want).abs().max())
        assert err <= 1e-10 * (1 + float(want.abs().max())), f"{name}: {err:.2e}"
    # The sum is not the mean: a scale-B mismatch would show up here.
    gG = g_shared[2]
    assert float((gG - g_exp[2].mean(0)).abs().max()) > 1e-3 * float(gG.abs().max())


def test_expanded_view_input_with_zero_stride(backend):
    """A stride-0 ``expand`` view of G (a common way to broadcast) behaves like a real copy."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(3, 5, 6, 1, shared=("G",), seed=2)
    Q, q, G, h, A, b = P.data()
    Gv = G.expand(3, -1, -1).requires_grad_()
    Gc = G.expand(3, -1, -1).clone().requires_grad_()
    w = _weights((3, 5))
    xv = solve(Q, q, Gv, h, A, b)
    xc = solve(Q, q, Gc, h, A, b)
    gv, = torch.autograd.grad((w * xv).sum(), Gv)
    gc, = torch.autograd.grad((w * xc).sum(), Gc)
    assert float((xv - xc).abs().max()) <= 1e-12
    assert float((gv - gc).abs().max()) <= 1e-10


def test_multi_dim_batch_shape(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp((2, 3), 5, 6, 2, seed=3)
    sol = _solve_all(P.data(), backend=backend)
    assert sol.x.shape == (2, 3, 5) and sol.lam.shape == (2, 3, 6) and sol.nu.shape == (2, 3, 2)
    assert sol.status.shape == (2, 3) and sol.iterations.shape == (2, 3)
    assert float((sol.x - P.x).abs().max()) <= 1e-10
    assert float((sol.lam - P.lam).abs().max()) <= 1e-10
    # Same as the flattened batch.
    flat = [t.reshape((6,) + t.shape[2:]) for t in P.data()]
    x_flat = solve(*flat)
    assert float((x_flat.reshape(2, 3, 5) - sol.x).abs().max()) <= 1e-12


def test_partial_broadcast_3x1_against_3x4(backend):
    """Q and G with batch (3, 1), the vectors with batch (3, 4): each Q[i, 0] is shared by the 4
    problems of row i; gradients are summed over the broadcast dimension only."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp((3, 4), 5, 6, 1, seed=4)
    Q31 = P.Q[:, :1].clone()  # (3, 1, 5, 5)
    G31 = P.G[:, :1].clone()  # (3, 1, 6, 5)
    # Rebuild q, h so that the planted x*, λ* stay optimal with the row-shared Q and G.
    x, lam, nu = P.x, P.lam, P.nu
    slack = torch.where(P.active, torch.zeros((), dtype=F64), P.h - (P.G @ x.unsqueeze(-1)).squeeze(-1))
    Qe, Ge = Q31.expand(3, 4, 5, 5), G31.expand(3, 4, 6, 5)
    h = (Ge @ x.unsqueeze(-1)).squeeze(-1) + slack
    q = -((Qe @ x.unsqueeze(-1)).squeeze(-1) + (Ge.mT @ lam.unsqueeze(-1)).squeeze(-1)
          + (P.A.mT @ nu.unsqueeze(-1)).squeeze(-1))
    Ql, Gl = Q31.clone().requires_grad_(), G31.clone().requires_grad_()
    sol = _solve_all((sym(Ql), q, Gl, h, P.A, P.b), backend=backend)
    assert sol.x.shape == (3, 4, 5)
    assert float((sol.x - x).abs().max()) <= 1e-10
    w = _weights((3, 4, 5))
    gQ, gG = torch.autograd.grad((w * sol.x).sum(), (Ql, Gl))
    assert gQ.shape == (3, 1, 5, 5) and gG.shape == (3, 1, 6, 5)
    Qc = Qe.clone().requires_grad_()
    Gc = Ge.clone().requires_grad_()
    xc = solve(sym(Qc), q, Gc, h, P.A, P.b)
    gQc, gGc = torch.autograd.grad((w * xc).sum(), (Qc, Gc))
    assert float((gQ - gQc.sum(1, keepdim=True)).abs().max()) <= 1e-10 * (1 + float(gQc.abs().max()))
    assert float((gG - gGc.sum(1, keepdim=True)).abs().max()) <= 1e-10 * (1 + float(gGc.abs().max()))


def test_batched_equals_one_at_a_time(backend):
    solve = partial(ol.solve_qp, backend=backend)
    B = 4
    P = ol.testing.random_qp(B, 6, 7, 2, seed=5)
    sol = _solve_all(P.data(), backend=backend)
    leaves = [t.clone().requires_grad_() for t in P.data()]
    w = _weights((B, 6))
    gb = torch.autograd.grad((w * solve(*leaves)).sum(), leaves)
    for i in range(B):
        one = [t[i] for t in P.data()]  # unbatched: (n, n), (n,), ...
        s = _solve_all(one, backend=backend)
        assert s.x.shape == (6,) and s.status.shape == ()
        for a, b in ((s.x, sol.x[i]), (s.lam, sol.lam[i]), (s.nu, sol.nu[i])):
            assert float((a - b).abs().max()) <= 1e-12
        li = [t[i].clone().requires_grad_() for t in P.data()]
        gi = torch.autograd.grad((w[i] * solve(*li)).sum(), li)
        for a, b in zip(gi, gb):
            assert float((a - b[i]).abs().max()) <= 1e-10 * (1 + float(b[i].abs().max()))


def test_vector_only_batch_with_all_matrices_shared(backend):
    """Only q, h, b carry the batch: the typical 'one problem structure, many right-hand sides'."""
    P = ol.testing.random_qp(6, 5, 6, 2, shared=("Q", "G", "A"), seed=6)
    sol = _solve_all(P.data(), backend=backend)
    assert sol.x.shape == (6, 5)
    assert float((sol.x - P.x).abs().max()) <= 1e-10
    assert float((sol.nu - P.nu).abs().max()) <= 1e-10


def test_batch_of_one_and_unbatched_agree(backend):
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(1, 5, 6, 2, seed=7)
    x1 = solve(*P.data())
    x0 = solve(*(t[0] for t in P.data()))
    assert x1.shape == (1, 5) and x0.shape == (5,)
    assert float((x1[0] - x0).abs().max()) <= 1e-12


def test_non_contiguous_inputs(backend):
    """Transposed-storage matrices and strided vectors give the same solution and gradients as
    contiguous copies (native kernels must respect strides)."""
    solve = partial(ol.solve_qp, backend=backend)
    P = ol.testing.random_qp(3, 5, 6, 2, active_fraction=0.34, seed=8)
    nc = [t.mT.contiguous().mT if t.dim() == 3 else torch.stack([t, t], -1)[..., 0] for t in P.data()]
    assert not any(t.is_contiguous() for t in nc)
    leaves = [t.detach().requires_grad_() for t in nc]  # keep the strides
    x = solve(*leaves)
    g = torch.autograd.grad((_weights((3, 5)) * x).sum(), leaves)
    leaves_c = [t.contiguous().requires_grad_() for t in nc]
    xc = solve(*leaves_c)
    gc = torch.autograd.grad((_weights((3, 5)) * xc).sum(), leaves_c)
    assert float((x - P.x).abs().max()) <= 1e-10
    assert float((x - xc).abs().max()) <= 1e-12
    for a, b in zip(g, gc):
        assert float((a - b).abs().max()) <= 1e-10 * (1 + float(b.abs().max()))


def test_no_grad_context_returns_plain_tensors(backend):
    P = ol.testing.random_qp(2, 4, 5, 1, seed=9)
    leaves = [t.clone().requires_grad_() for t in P.data()]
    with torch.no_grad():
        sol = ol.solve_qp(*leaves, return_solution=True, backend=backend)
    assert not sol.x.requires_grad and not sol.lam.requires_grad and not sol.nu.requires_grad
    assert float((sol.x - P.x).abs().max()) <= 1e-10


@pytest.mark.parametrize("batch", [(0,), (2, 0)], ids=["B=0", "2x0"])
def test_empty_batch_returns_empty_outputs_and_gradients(backend, batch):
    """A batch with no problems (e.g. the last, empty chunk of a data loader): empty outputs of the
    right shapes, empty gradients, warm start and optimal value included. (The native op once
    divided by the batch size here: SIGFPE.)"""
    P = ol.testing.random_qp(2, 5, 6, 2, dtype=torch.float64, seed=3)
    data = [t[:1].expand(*batch, *t.shape[1:]).clone().requires_grad_() for t in P.data()]
    sol = ol.solve_qp(*data, backend=backend, return_solution=True)
    assert sol.x.shape == (*batch, 5) and sol.lam.shape == (*batch, 6) and sol.nu.shape == (*batch, 2)
    assert sol.status.shape == batch and sol.iterations.shape == batch
    sol.x.sum().backward()
    assert [tuple(t.grad.shape) for t in data] == [tuple(t.shape) for t in data]
    warm = ol.solve_qp(*(t.detach() for t in data), backend=backend, warm_start=sol)
    assert warm.shape == (*batch, 5)
    assert ol.qp_value(*(t.detach() for t in data), backend=backend).shape == batch
    # one shared G, h for an empty batch of q
    x = ol.solve_qp(P.Q[0], P.q[:0], P.G[0], P.h[0], backend=backend)
    assert x.shape == (0, 5)
