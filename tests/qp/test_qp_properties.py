"""Property-based tests (hypothesis) over random feasible QPs with planted solutions."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optlayers as ol
from qp_oracles import kkt_residuals

F64 = torch.float64
# derandomize: the same examples on every run (CI-stable). The only fixture used is ``backend``,
# a plain string, so sharing it across examples is safe.
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def qp_cases(draw, lp=False):
    n = draw(st.integers(1, 12))
    p = draw(st.integers(0, min(n - 1, 4)))
    m_min = n - p if lp else 0
    m = draw(st.integers(max(m_min, 0), max(m_min, 0) + 12))
    batch = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    frac = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
    cond = draw(st.sampled_from([1.0, 10.0, 1e3]))
    shared = draw(st.sampled_from([(), ("G",), ("Q", "G", "A")]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(batch_shape=batch, n=n, m=m, p=p, lp=lp, active_fraction=frac, cond=cond, shared=shared, seed=seed)


def _solve(case, backend):
    P = ol.testing.random_qp(**case)
    m = case["m"]
    G, h = (P.G, P.h) if m else (None, None)
    Q = None if case["lp"] else P.Q
    sol = ol.solve_qp(Q, P.q, G, h, P.A, P.b, return_solution=True, on_failure="nan", backend=backend)
    return P, sol


def _check_against_planted(case, backend):
    P, sol = _solve(case, backend)
    assert sol.status.shape == torch.Size(case["batch_shape"])
    assert bool((sol.status == ol.Status.SOLVED).all()), f"statuses {sol.status.flatten().tolist()}"
    scale = 1.0 + float(P.x.abs().max())
    assert float((sol.x - P.x).abs().max()) <= 1e-8 * scale
    if case["m"]:
        assert float((sol.lam - P.lam).abs().max()) <= 1e-8 * (1.0 + float(P.lam.abs().max()))
    if case["p"]:
        assert float((sol.nu - P.nu).abs().max()) <= 1e-8 * (1.0 + float(P.nu.abs().max()))
    res = kkt_residuals(P.Q, P.q, P.G, P.h, P.A, P.b, sol.x, sol.lam if case["m"] else P.lam, sol.nu)
    assert max(res.values()) <= 1e-9 * scale, res


@settings(max_examples=30, **SETTINGS)
@given(qp_cases())
def test_qp_solution_matches_planted(backend, case):
    """Strictly convex QPs (cond(Q) up to 1e3), any mix of constraints, shared or batched data."""
    _check_against_planted(case, backend)


@settings(max_examples=20, **SETTINGS)
@given(qp_cases(lp=True))
def test_lp_solution_matches_planted(backend, case):
    """LPs (Q = None) with a unique, non-degenerate planted vertex (n − p active rows)."""
    _check_against_planted(case, backend)


@settings(max_examples=15, **SETTINGS)
@given(qp_cases())
def test_vjp_equals_jvp(backend, case):
    """<u, J v> by reverse mode and by forward mode agree on every random QP."""
    P = ol.testing.random_qp(**case)
    data = list(P.data())
    g = torch.Generator().manual_seed(case["seed"] % 1000)
    vs = [torch.randn(t.shape, generator=g, dtype=F64) for t in data]
    vs[0] = 0.5 * (vs[0] + vs[0].mT)

    def f(*d):
        s = ol.solve_qp(*d, return_solution=True, backend=backend)
        return s.x, s.lam, s.nu

    _, tangents = torch.func.jvp(f, tuple(data), tuple(vs))
    us = [torch.randn(t.shape, generator=g, dtype=F64) for t in tangents]
    leaves = [t.clone().requires_grad_() for t in data]
    outs = f(*leaves)
    grads = torch.autograd.grad(sum((u * o).sum() for u, o in zip(us, outs)), leaves, allow_unused=True)
    rev = sum(float((gr * v).sum()) for gr, v in zip(grads, vs) if gr is not None)
    fwd = sum(float((u * t).sum()) for u, t in zip(us, tangents))
    assert abs(fwd - rev) <= 1e-9 * max(1.0, abs(rev), abs(fwd)), (fwd, rev)
