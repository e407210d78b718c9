"""docs/derivatives.md's support table is what the code does: every cell is run here.

Each route gets a parameter t that enters nonlinearly (Q + diag(t²) for the QP routes, the
target of a norm for the conic route, the fixed point of x = tanh(t x) + ½ for custom_root).
"""

from __future__ import annotations

import pathlib
import re

import cvxpy as cp
import pytest
import torch
from torch.autograd import forward_ad as fwAD
from torch.func import grad, hessian, jacfwd, jacrev, vmap

import optlayers as ol

F64 = torch.float64
DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "derivatives.md"
ROUTES = ["dense torch", "dense native", "osqp", "sparse", "conic", "cvxpy qp route", "custom_root"]
MODES = ["backward", "forward_ad", "create_graph", "func.grad", "vmap", "jacrev", "jacfwd", "func.hessian"]


def _table() -> dict[str, list[str]]:
    rows = [ln for ln in DOC.read_text().splitlines() if ln.startswith("| ") and "---" not in ln]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header.strip("|").split("|")][1:] == MODES
    assert len(body) == len(ROUTES)
    return {route: [c.strip() for c in row.strip("|").split("|")][1:] for route, row in zip(ROUTES, body)}


def _routes():
    P = ol.testing.random_qp((), 4, 6, 1, active_fraction=0.3, seed=3)
    Q, q, G, h, A, b = (t.detach() for t in P.data())
    dense = lambda be: lambda t: ol.solve_qp(Q + torch.diag(t**2), q, G, h, A, b, backend=be)  # noqa: E731
    l = torch.cat([b, torch.full_like(h, -float("inf"))])
    u = torch.cat([b, h])

    def sparse(t):
        return ol.solve_sparse_qp(Q + torch.diag(t**2), q, torch.cat([A, G]), l, u)

    x, p = cp.Variable(4), cp.Parameter(4)
    conic = ol.CvxpyLayer(cp.Problem(cp.Minimize(cp.norm(x - p, 2) + cp.sum_squares(x)), [cp.sum(x) == 1]),
                          parameters=[p], variables=[x])
    qp = ol.CvxpyLayer(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + p @ x), [G.numpy() @ x <= h.numpy()]),
                       parameters=[p], variables=[x])

    @ol.custom_root(lambda x_, t: x_ - torch.tanh(t * x_) - 0.5)
    def root(init, t):
        x_ = init
        for _ in range(200):
            x_ = torch.tanh(t * x_) + 0.5
        return x_

    return {"dense torch": dense("torch"), "dense native": dense("native"), "osqp": dense("osqp"), "sparse": sparse,
            "conic": lambda t: conic(t)[0], "cvxpy qp route": lambda t: qp(t)[0],
            "custom_root": lambda t: root(torch.zeros(4, dtype=F64), t)}


T0 = torch.full((4,), 0.7, dtype=F64)


def _run(mode: str, f):
    loss = lambda t: f(t).square().sum()  # noqa: E731
    if mode == "backward":
        t = T0.clone().requires_grad_()
        loss(t).backward()
        return t.grad
    if mode == "forward_ad":
        with fwAD.dual_level():
            return fwAD.unpack_dual(f(fwAD.make_dual(T0, torch.ones(4, dtype=F64)))).tangent
    if mode == "create_graph":
        t = T0.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(t), t, create_graph=True)
        return torch.autograd.grad(g.sum(), t)[0]
    return {"func.grad": lambda: grad(loss)(T0), "vmap": lambda: vmap(f)(T0.expand(3, 4)),
            "jacrev": lambda: jacrev(f)(T0), "jacfwd": lambda: jacfwd(f)(T0),
            "func.hessian": lambda: hessian(loss)(T0)}[mode]()


@pytest.fixture(scope="module")
def routes():
    pytest.importorskip("osqp")
    return _routes()


@pytest.mark.parametrize("route", ROUTES)
def test_support_table_row(route, routes):
    if route == "dense native":
        from optlayers._src.native.backend import native_status

        if not native_status()[0]:
            pytest.skip("native backend unavailable")
    expected = _table()[route]
    got = []
    for mode in MODES:
        try:
            out = _run(mode, routes[route])
            got.append("✓" if torch.isfinite(out).all() else "NaN")
        except NotImplementedError:
            got.append("refused")
        except RuntimeError as err:
            assert "optlayers" in str(err), (route, mode, str(err)[:300])  # our message, not torch's
            got.append("error")
    assert got == expected, dict(zip(MODES, zip(expected, got)))
