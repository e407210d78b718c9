"""Routes with first derivatives only must fail loudly on a second derivative, never return a
silent zero (``optlayers/_src/first_order.py``); their first derivative is unchanged by the guard."""

from __future__ import annotations

import cvxpy as cp
import pytest
import torch

import optlayers as ol

F64 = torch.float64
MATCH = "first derivatives only"


def _socp_layer(n=4):
    x, p = cp.Variable(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.norm(x - p, 2) + cp.sum_squares(x)), [cp.sum(x) == 1])
    return ol.CvxpyLayer(prob, parameters=[p], variables=[x])


def _osqp_loss(q):
    P = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    G = torch.tensor([[1.0, 1.0], [-1.0, 0.0]], dtype=F64)
    h = torch.tensor([1.0, 0.0], dtype=F64)
    x = ol.solve_qp(P, q, G, h, backend="osqp")
    return (x**3).sum()


def _loss_and_point(route):
    """A scalar loss through the route and a point to differentiate it at."""
    if route == "osqp":
        return _osqp_loss, torch.tensor([-1.0, -2.0], dtype=F64)
    layer = _socp_layer()
    point = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(0))
    return (lambda p: (layer(p)[0] ** 2).sum()), point


@pytest.mark.parametrize("route", ["osqp", "conic"])
def test_hessian_raises_instead_of_returning_zero(route):
    f, arg = _loss_and_point(route)
    with pytest.raises(RuntimeError, match=MATCH):
        torch.autograd.functional.hessian(f, arg)
    a = arg.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(a), a, create_graph=True)
    with pytest.raises(RuntimeError, match=MATCH):
        torch.autograd.grad(g.sum(), a)


@pytest.mark.parametrize("route", ["osqp", "conic"])
def test_first_derivative_is_the_same_with_create_graph(route):
    f, arg = _loss_and_point(route)
    a = arg.clone().requires_grad_()
    (plain,) = torch.autograd.grad(f(a), a)
    (graphed,) = torch.autograd.grad(f(a), a, create_graph=True)
    assert graphed.requires_grad
    torch.testing.assert_close(graphed.detach(), plain, rtol=1e-10, atol=1e-12)  # (two solves)
