"""±inf in h: +inf is no bound (the row is dropped), −inf an impossible one (PRIMAL_INFEASIBLE).

Reference: the same problems with the +inf rows removed (solutions, multipliers, gradients).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

import optlayers as ol

F64 = torch.float64
INF = float("inf")


def _problem(shared=()):
    P = ol.testing.random_qp(4, 6, 8, 1, active_fraction=0.4, seed=5, shared=shared)
    return [t.detach() for t in P.data()], P.active


def test_plus_inf_rows_are_no_constraint(backend):
    (Q, q, G, h, A, b), active = _problem()
    keep = ~active[0]  # drop rows inactive in problem 0; give the other problems +inf there too
    drop = torch.zeros_like(active[0])
    drop[torch.nonzero(keep)[:2, 0]] = True  # two rows inactive in problem 0
    h_inf = h.clone()
    h_inf[:, drop] = INF
    Gl, hl = G.clone().requires_grad_(), h_inf.clone().requires_grad_()
    sol = ol.solve_qp(Q, q, Gl, hl, A, b, backend=backend, return_solution=True)
    # reference: the rows removed (for problems where they are active, the solution moves)
    Gr, hr = G[:, ~drop].clone().requires_grad_(), h[:, ~drop].clone().requires_grad_()
    ref = ol.solve_qp(Q, q, Gr, hr, A, b, backend=backend, return_solution=True)
    torch.testing.assert_close(sol.x, ref.x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sol.lam[:, ~drop], ref.lam, rtol=1e-10, atol=1e-12)
    assert not sol.lam[:, drop].any()
    w = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    (w * sol.x).sum().backward()
    (w * ref.x).sum().backward()
    torch.testing.assert_close(Gl.grad[:, ~drop], Gr.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(hl.grad[:, ~drop], hr.grad, rtol=1e-9, atol=1e-11)
    assert not Gl.grad[:, drop].any() and not hl.grad[:, drop].any()  # zero, not NaN


def test_plus_inf_with_a_shared_G_and_the_optimal_value(backend):
    (Q, q, G, h, A, b), _ = _problem(shared=("G",))
    h_inf = h.clone()
    h_inf[1:, 0] = INF  # the bound of row 0 only for problem 0
    v = ol.qp_value(Q, q, G, h_inf, A, b, backend=backend)
    v_ref = torch.stack([ol.qp_value(Q[i], q[i], G[1:] if i else G, h[i, 1:] if i else h[i], A[i], b[i],
                                     backend=backend) for i in range(4)])
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-12)


def test_minus_inf_is_primal_infeasible(backend):
    (Q, q, G, h, A, b), _ = _problem()
    h_bad = h.clone()
    h_bad[2, 3] = -INF
    sol = ol.solve_qp(Q, q, G, h_bad, A, b, backend=backend, on_failure="nan", return_solution=True)
    assert sol.status.tolist() == [0, 0, int(ol.Status.PRIMAL_INFEASIBLE), 0]
    assert torch.isnan(sol.x[2]).all() and torch.isfinite(sol.x[[0, 1, 3]]).all()
    with pytest.raises(ol.SolverError, match="batch index 2: primal infeasible"):
        ol.solve_qp(Q, q, G, h_bad, A, b, backend=backend)


def test_nan_in_h_is_still_an_error():
    (Q, q, G, h, A, b), _ = _problem()
    h_bad = h.clone()
    h_bad[0, 0] = float("nan")
    h_bad[1, 1] = INF
    with pytest.raises(ValueError, match=r"^h contains NaN entries.*\+inf for no bound"):
        ol.solve_qp(Q, q, G, h_bad, A, b)


def test_plus_inf_under_torch_func(backend):
    (Q, q, G, h, A, b), active = _problem()
    h_inf = h.clone()
    h_inf[~active] = INF  # every inactive row unbounded: same solution, same Jacobian
    f = lambda hh: ol.solve_qp(Q, q, G, hh, A, b, backend=backend)
    J_inf, J = jacrev(f)(h_inf), jacrev(f)(h)
    torch.testing.assert_close(J_inf, J, rtol=1e-9, atol=1e-11)
    assert torch.isfinite(J_inf).all()


def test_osqp_route_takes_plus_inf_and_rejects_minus_inf():
    (Q, q, G, h, A, b), active = _problem()
    h_inf = h.clone()
    h_inf[~active] = INF
    x = ol.solve_qp(Q, q, G, h_inf, A, b, backend="osqp")
    torch.testing.assert_close(x, ol.solve_qp(Q, q, G, h, A, b), rtol=1e-6, atol=1e-6)
    h_inf[0, 0] = -INF
    with pytest.raises(ValueError, match="NaN or -inf.*PRIMAL_INFEASIBLE"):
        ol.solve_qp(Q, q, G, h_inf, A, b, backend="osqp")


def test_torch_value_checks_treat_h_alike(monkeypatch):
    """The torch version of the input checks (CUDA, or no native ops) agrees with the C++ one."""
    from optlayers._src.qp import problem

    monkeypatch.setattr(problem, "_native_checks", lambda raw, tol: None)
    (Q, q, G, h, A, b), active = _problem()
    h_inf = h.clone()
    h_inf[~active] = INF
    torch.testing.assert_close(ol.solve_qp(Q, q, G, h_inf, A, b, backend="torch"),
                               ol.solve_qp(Q, q, G, h, A, b, backend="torch"), rtol=1e-10, atol=1e-12)
    h_inf[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^h contains NaN entries"):
        ol.solve_qp(Q, q, G, h_inf, A, b, backend="torch")
