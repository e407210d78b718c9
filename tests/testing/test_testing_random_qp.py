"""``ol.testing.random_qp``: seeded problems whose planted solution satisfies the KKT conditions."""

from __future__ import annotations

import math

import pytest
import torch

import optlayers as ol

F64 = torch.float64


def _mv(M, v):
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def _kkt(P):
    """Max residuals of the KKT conditions of ½xᵀQx+qᵀx+λᵀ(Gx−h)+νᵀ(Ax−b) at the planted point."""
    slack = P.h - _mv(P.G, P.x)
    return {
        "stationarity": float((_mv(P.Q, P.x) + P.q + _mv(P.G.mT, P.lam) + _mv(P.A.mT, P.nu)).abs().max()),
        "primal_eq": float((_mv(P.A, P.x) - P.b).abs().max()) if P.b.numel() else 0.0,
        "primal_ineq": float((-slack).clamp_min(0).max()),
        "dual_sign": float((-P.lam).clamp_min(0).max()),
        "complementarity": float((P.lam * slack).abs().max()),
    }, slack


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_shape=(), n=6, m=8, p=2),
        dict(batch_shape=5, n=10, m=10, p=3),
        dict(batch_shape=(2, 3), n=7, m=12, p=0, active_fraction=0.8),
        dict(batch_shape=4, n=8, m=10, p=2, cond=1e4),
        dict(batch_shape=3, n=6, m=9, p=2, lp=True),
        dict(batch_shape=3, n=6, m=8, p=1, shared=("Q", "G", "A")),
    ],
    ids=["single", "batched", "2d-batch", "ill-cond", "lp", "shared"],
)
def test_planted_solution_satisfies_kkt(kw):
    P = ol.testing.random_qp(**kw, seed=3)
    res, slack = _kkt(P)
    assert max(res.values()) <= 1e-12, res
    # Strict complementarity: λ_i + s_i ≥ 0.5 on every row, active rows exactly those with λ > 0.
    assert float((P.lam + slack).min()) >= 0.5 - 1e-12
    assert torch.equal(P.active, P.lam > 0)
    if bool(P.active.any()):
        assert float(slack[P.active].abs().max()) <= 1e-12


def test_shapes_dtype_device_and_int_batch():
    P = ol.testing.random_qp(5, n=7, m=4, p=2, dtype=torch.float32)
    assert P.Q.shape == (5, 7, 7) and P.q.shape == (5, 7) and P.G.shape == (5, 4, 7)
    assert P.h.shape == (5, 4) and P.A.shape == (5, 2, 7) and P.b.shape == (5, 2)
    assert P.x.shape == (5, 7) and P.lam.shape == (5, 4) and P.nu.shape == (5, 2)
    assert P.active.shape == (5, 4) and P.active.dtype == torch.bool
    assert all(t.dtype == torch.float32 for t in P.data())
    assert all(t.device.type == "cpu" for t in P.data())
    assert len(P.data()) == 6 and P.data()[0] is P.Q


def test_seeded_and_deterministic():
    a = ol.testing.random_qp(3, 6, 7, 2, seed=42)
    b = ol.testing.random_qp(3, 6, 7, 2, seed=42)
    c = ol.testing.random_qp(3, 6, 7, 2, seed=43)
    for ta, tb, tc in zip(a.data() + (a.x,), b.data() + (b.x,), c.data() + (c.x,)):
        assert torch.equal(ta, tb)
    assert not torch.equal(a.q, c.q) and not torch.equal(a.G, c.G)
    # Does not consume or depend on the global RNG.
    torch.manual_seed(0)
    d = ol.testing.random_qp(3, 6, 7, 2, seed=42)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    e = ol.testing.random_qp(3, 6, 7, 2, seed=42)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(d.q, e.q) and torch.equal(d.q, a.q)


def test_float32_is_the_float64_problem_rounded():
    a = ol.testing.random_qp(2, 5, 6, 1, seed=7)
    b = ol.testing.random_qp(2, 5, 6, 1, seed=7, dtype=torch.float32)
    for ta, tb in zip(a.data(), b.data()):
        assert torch.equal(ta.float(), tb)


def test_shared_option():
    P = ol.testing.random_qp(4, 6, 8, 2, shared=("Q", "G", "A"), seed=1)
    assert P.Q.shape == (6, 6) and P.G.shape == (8, 6) and P.A.shape == (2, 6)
    assert P.q.shape == (4, 6) and P.h.shape == (4, 8) and P.b.shape == (4, 2) and P.x.shape == (4, 6)
    Pg = ol.testing.random_qp(4, 6, 8, 2, shared=("G",), seed=1)
    assert Pg.Q.shape == (4, 6, 6) and Pg.G.shape == (8, 6) and Pg.A.shape == (4, 2, 6)
    with pytest.raises(ValueError, match="shared"):
        ol.testing.random_qp(2, shared=("q",))


def test_q_is_spd_with_requested_condition_number():
    P = ol.testing.random_qp(3, 8, 4, 1, cond=1e5, seed=2)
    assert torch.equal(P.Q, P.Q.mT)
    ev = torch.linalg.eigvalsh(P.Q)
    assert float(ev.min()) > 0
    assert torch.allclose(ev.max(-1).values / ev.min(-1).values, torch.full((3,), 1e5, dtype=F64), rtol=1e-6)


def test_active_set_size_and_cap():
    P = ol.testing.random_qp(2, 10, 10, 3, active_fraction=0.5, seed=0)
    assert P.active.sum(-1).tolist() == [5, 5]
    capped = ol.testing.random_qp(2, 6, 10, 2, active_fraction=1.0, seed=0)
    assert capped.active.sum(-1).tolist() == [4, 4]  # n − p keeps the active rows independent
    none = ol.testing.random_qp(2, 6, 10, 2, active_fraction=0.0, seed=0)
    assert none.active.sum(-1).tolist() == [0, 0] and float(none.lam.abs().max()) == 0.0


def test_lp_option_gives_unique_nondegenerate_vertex():
    n, m, p = 6, 9, 2
    P = ol.testing.random_qp(3, n, m, p, lp=True, seed=5)
    assert float(P.Q.abs().max()) == 0.0
    assert P.active.sum(-1).tolist() == [n - p] * 3
    for i in range(3):
        C = torch.cat([P.G[i][P.active[i]], P.A[i]])  # square (n × n)
        assert C.shape == (n, n)
        sv = torch.linalg.svdvals(C)
        assert float(sv.min() / sv.max()) > 1e-6
        assert float((torch.linalg.solve(C, torch.cat([P.h[i][P.active[i]], P.b[i]])) - P.x[i]).abs().max()) <= 1e-10
    with pytest.raises(ValueError, match=r"m ≥ n − p"):
        ol.testing.random_qp(1, 6, 3, 2, lp=True)


@pytest.mark.parametrize(
    "kw,expect",
    [
        (dict(n=3, p=3), r"0 ≤ p < n"),
        (dict(n=3, p=-1), r"0 ≤ p < n"),
        (dict(active_fraction=1.5), r"active_fraction"),
    ],
)
def test_bad_arguments(kw, expect):
    with pytest.raises(ValueError, match=expect):
        ol.testing.random_qp(1, **kw)


def test_problem_is_what_the_solver_sees():
    """End to end: the planted solution is what the layer returns (ties the generator to
    the solver under test through an independent check above)."""
    P = ol.testing.random_qp(2, 5, 6, 2, seed=9)
    sol = ol.solve_qp(*P.data(), return_solution=True)
    assert float((sol.x - P.x).abs().max()) <= 1e-10
    assert math.isclose(float(sol.lam.sum()), float(P.lam.sum()), rel_tol=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(cond=float("inf")), "cond"), (dict(cond=float("nan")), "cond"), (dict(cond=0.0), "cond"),
    (dict(cond=0.1), "cond"), (dict(dtype=torch.int64), "dtype"), (dict(dtype=torch.complex128), "dtype"),
])
def test_arguments_it_cannot_honour_are_refused(kwargs, match):
    # (found by fuzzing: cond=inf gave NaN data, cond=0.1 a Q of condition number 10, an integer
    # dtype a zero Q whose planted x is not the solution)
    with pytest.raises(ValueError, match=match):
        ol.testing.random_qp(2, 3, 3, 0, **kwargs)
