"""Routes without torch.func support refuse it clearly (``optlayers/_src/transforms.py``)."""

from __future__ import annotations

import cvxpy as cp
import pytest
import torch
from torch.func import grad, jacrev, vmap

import optlayers as ol

F64 = torch.float64


@pytest.mark.parametrize("transform", ["vmap", "grad", "jacrev"])
def test_cvxpy_layer_refuses_transforms(transform):
    x, p = cp.Variable(3), cp.Parameter(3)
    layer = ol.CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x, 2) <= 1]),
                          parameters=[p], variables=[x])
    f = lambda p_: layer(p_)[0]
    call = {"vmap": lambda: vmap(f)(torch.ones(2, 3, dtype=F64)),
            "grad": lambda: grad(lambda p_: f(p_).sum())(torch.ones(3, dtype=F64)),
            "jacrev": lambda: jacrev(f)(torch.ones(3, dtype=F64))}[transform]
    with pytest.raises(NotImplementedError, match="CvxpyLayer does not support torch.func.*leading batch"):
        call()
    assert layer(torch.ones(2, 3, dtype=F64))[0].shape == (2, 3)  # the batched call works


def test_sparse_route_refuses_transforms():
    pytest.importorskip("osqp")
    P = torch.eye(3, dtype=F64).to_sparse_csr()
    with pytest.raises(NotImplementedError, match="solve_sparse_qp .* does not support torch.func"):
        vmap(lambda q: ol.solve_sparse_qp(P, q))(torch.ones(2, 3, dtype=F64))
    with pytest.raises(NotImplementedError, match="take dense tensors"):
        grad(lambda q: ol.solve_qp(P, q).sum())(torch.ones(3, dtype=F64))
