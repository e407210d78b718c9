"""Bad input to the sparse path gets a clear error naming the argument."""

from __future__ import annotations

import math

import pytest
import torch

import optlayers as ol
from sparse_oracles import planted_sparse_qp, torch_data

pytest.importorskip("osqp")
D = torch.float64


@pytest.fixture(scope="module")
def data():
    return torch_data(planted_sparse_qp(n=6, m=4, n_eq=1, seed=61))


def _with(data, **changes):
    names = ("P", "q", "A", "l", "u")
    d = dict(zip(names, data))
    d.update(changes)
    return [d[k] for k in names]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(q=torch.zeros(5, dtype=D)), r"P must have shape \(\*, n, n\) = \(\*, 5, 5\)"),
        (dict(l=torch.zeros(3, dtype=D)), r"l must have shape \(\*, 4\)"),
        (dict(u=torch.zeros(4, dtype=torch.float32)), r"u has dtype torch.float32 but q has torch.float64"),
        (dict(q=torch.zeros(6, dtype=torch.int64)), r"q must be float32 or float64"),
        (dict(A=torch.zeros(4, 5, dtype=D).to_sparse()), r"A must have shape \(\*, rows, n\) with n = 6"),
        (dict(q=torch.full((6,), math.nan, dtype=D)), r"q contains NaN or Inf"),
        (dict(l=torch.full((4,), math.inf, dtype=D)), r"l contains \+inf"),
        (dict(l=torch.full((4,), 5.0, dtype=D), u=torch.full((4,), 1.0, dtype=D)), r"l must be ≤ u elementwise; first violation at index \(0,\)"),
        (dict(q=torch.zeros(2, 6, dtype=D), l=torch.zeros(3, 4, dtype=D)), r"batch dimensions .* do not broadcast"),
        (dict(q=[0.0] * 6), r"q must be a torch.Tensor"),
        (dict(l=None, u=None), r"A is given but neither l nor u"),
    ],
)
def test_input_errors(data, change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ol.solve_sparse_qp(*_with(data, **change))


def test_p_must_be_symmetric_and_given_in_full():
    P = torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=D)
    with pytest.raises(ValueError, match="only one triangle"):
        ol.solve_sparse_qp(P.to_sparse(), torch.ones(2, dtype=D))
    with pytest.raises(ValueError, match=r"P must be symmetric"):
        ol.solve_sparse_qp(torch.tensor([[2.0, 1.0], [0.5, 2.0]], dtype=D).to_sparse(), torch.ones(2, dtype=D))


def test_p_not_psd():
    with pytest.raises(ValueError, match="negative diagonal"):
        ol.solve_sparse_qp(torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=D).to_sparse(), torch.ones(2, dtype=D))
    indefinite = torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=D).to_sparse()
    with pytest.raises(ValueError, match="not positive semidefinite"):
        ol.solve_sparse_qp(indefinite, torch.ones(2, dtype=D), cache=ol.sparse.SolverCache())
    # Also when a cached solver receives the indefinite values as an update.
    cache = ol.sparse.SolverCache()
    ol.solve_sparse_qp(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=D).to_sparse(), torch.ones(2, dtype=D), cache=cache)
    with pytest.raises(ValueError, match="not positive semidefinite"):
        ol.solve_sparse_qp(indefinite, torch.ones(2, dtype=D), cache=cache)


def test_unsupported_layouts_and_patterns():
    q = torch.ones(3, dtype=D)
    P = torch.eye(3, dtype=D)
    with pytest.raises(TypeError, match="sparse COO or CSR"):
        ol.solve_sparse_qp(P.to_sparse_csc(), q)
    with pytest.raises(TypeError, match="q must be a dense tensor"):
        ol.solve_sparse_qp(P.to_sparse(), q.to_sparse())
    hybrid = torch.stack([P, 2 * P], -1).to_sparse(sparse_dim=2)
    with pytest.raises(ValueError, match="hybrid sparse tensor"):
        ol.solve_sparse_qp(hybrid, q)
    # Batched sparse tensor whose problems have different patterns.
    Pb = torch.stack([P, P + torch.diag(torch.ones(2, dtype=D), 1) + torch.diag(torch.ones(2, dtype=D), -1)])
    with pytest.raises(ValueError, match="same sparsity pattern"):
        ol.solve_sparse_qp(3 * Pb.to_sparse(), q)


def test_backend_and_option_errors():
    r = ol.testing.random_qp((), n=4, m=3, p=1, seed=62)
    Q, q, G, h, A, b = r.data()
    with pytest.raises(ValueError, match=r"Q is sparse, which only backend='osqp'"):
        ol.solve_qp(Q.to_sparse(), q, G, h, A, b, backend="torch")
    with pytest.raises(ValueError, match="G and h must be given together"):
        ol.solve_qp(Q.to_sparse(), q, G.to_sparse(), None)
    with pytest.raises(ValueError, match=r"h must have shape \(\*, 3\)"):
        ol.solve_qp(Q.to_sparse(), q, G.to_sparse(), h[:2])
    with pytest.raises(ValueError, match="b contains NaN"):
        ol.solve_qp(Q.to_sparse(), q, A=A.to_sparse(), b=torch.full_like(b, math.nan))
    with pytest.raises(ValueError, match="eps_abs must be"):
        ol.sparse.OSQPOptions(eps_abs=-1.0)
    with pytest.raises(ValueError, match="max_iter must be"):
        ol.sparse.OSQPOptions(max_iter=0)
    with pytest.raises(ValueError, match="either options=OSQPOptions"):
        ol.solve_sparse_qp(Q.to_sparse(), q, options=ol.sparse.OSQPOptions(), eps_abs=1e-3)
    with pytest.raises(ValueError, match="on_failure must be"):
        ol.solve_sparse_qp(Q.to_sparse(), q, on_failure="ignore")
