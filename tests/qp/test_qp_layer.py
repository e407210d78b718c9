"""``ol.QPLayer`` as an ``nn.Module``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optlayers as ol

F64 = torch.float64


def test_layer_matches_solve_qp_and_has_no_parameters():
    P = ol.testing.random_qp(4, 5, 6, 2, seed=0)
    layer = ol.QPLayer()
    assert isinstance(layer, nn.Module)
    assert list(layer.parameters()) == []
    x = layer(*P.data())
    assert torch.equal(x, ol.solve_qp(*P.data()))
    assert float((x - P.x).abs().max()) <= 1e-10
    r = repr(layer)
    assert "backend='auto'" in r and "on_failure='raise'" in r


def test_layer_optional_arguments():
    P = ol.testing.random_qp(2, 5, 6, 0, seed=1)
    layer = ol.QPLayer()
    x_ineq = layer(P.Q, P.q, P.G, P.h)
    assert float((x_ineq - P.x).abs().max()) <= 1e-10
    x_unc = layer(P.Q, P.q)
    assert float((x_unc + torch.linalg.solve(P.Q, P.q)).abs().max()) <= 1e-12


def test_options_fixed_at_construction():
    P = ol.testing.random_qp(3, 8, 8, 2, seed=2)
    strict = ol.QPLayer(max_iter=1, polish=False)
    with pytest.raises(ol.SolverError, match="iteration limit"):
        strict(*P.data())
    lenient = ol.QPLayer(max_iter=1, polish=False, on_failure="nan", return_solution=True)
    sol = lenient(*P.data())
    assert isinstance(sol, ol.QPSolution)
    assert sol.status.tolist() == [ol.Status.MAX_ITER] * 3 and bool(torch.isnan(sol.x).all())
    # Construction resolved the strings.
    assert lenient.on_failure is ol.OnFailure.NAN and lenient.backend is ol.Backend.AUTO
    assert lenient.options.max_iter == 1 and lenient.options.polish is False
    # The call signature takes only data: an option passed at call time is an error.
    with pytest.raises(TypeError):
        strict(*P.data(), max_iter=50)


def test_layer_return_solution_duals():
    P = ol.testing.random_qp(2, 5, 6, 2, seed=3)
    sol = ol.QPLayer(return_solution=True, tol=1e-10)(*P.data())
    assert float((sol.lam - P.lam).abs().max()) <= 1e-10
    assert float((sol.nu - P.nu).abs().max()) <= 1e-10


class _OptNetLike(nn.Module):
    """features → (q, h) by linear maps, then a QP with a learned PSD Q = LLᵀ + εI and fixed G."""

    def __init__(self, d_in: int, n: int, m: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.to_q = nn.Linear(d_in, n).double()
        self.to_h = nn.Linear(d_in, m).double()
        self.L = nn.Parameter(torch.eye(n, dtype=F64) + 0.1 * torch.randn(n, n, generator=g, dtype=F64))
        self.register_buffer("G", torch.randn(m, n, generator=g, dtype=F64))
        self.qp = ol.QPLayer()

    def forward(self, feats):
        Q = self.L @ self.L.mT + 1e-3 * torch.eye(self.L.shape[0], dtype=self.L.dtype)
        h = self.to_h(feats).abs() + 0.5  # x = 0 stays strictly feasible
        return self.qp(Q, self.to_q(feats), self.G, h)


def test_training_inside_a_model_decreases_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3).double(), nn.Tanh(), _OptNetLike(3, 4, 6))
    feats = torch.randn(16, 3, dtype=F64)
    target = torch.randn(16, 4, dtype=F64) * 0.3
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = ((model(feats) - target) ** 2).mean()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses
    # Every parameter, including the QP's Q factor and the first layer, received gradient.
    qp_block = model[2]
    assert float(qp_block.L.grad.abs().max()) > 0 and float(model[0].weight.grad.abs().max()) > 0


def test_layer_state_dict_roundtrip():
    m = _OptNetLike(3, 4, 6)
    sd = m.state_dict()
    assert "G" in sd and "L" in sd
    m2 = _OptNetLike(3, 4, 6)
    m2.load_state_dict(sd)
    feats = torch.randn(2, 3, dtype=F64)
    assert torch.equal(m(feats), m2(feats))


def test_float32_model_runs_forward_and_backward():
    """``model.float()`` converts parameters and buffers; the layer follows the data's dtype."""
    m32 = _OptNetLike(3, 4, 6).float()
    out = m32(torch.randn(2, 3).float())
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    out.sum().backward()
    assert m32.L.grad.dtype == torch.float32 and bool(torch.isfinite(m32.L.grad).all())
