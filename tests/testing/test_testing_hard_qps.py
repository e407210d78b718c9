"""``ol.testing.hard_qps``: every family has the answer it claims, by an independent check.

Solvable families: Clarabel (CVXPY) finds the stated x; the point is feasible and Q-convex facts
hold. Infeasible ones: the two added rows are a Farkas certificate (their sum reads 0 ≤ −δ) and
Clarabel says infeasible. Unbounded ones: the ray (Gd ≤ 0, Ad = 0, Qd = 0, qᵀd < 0) is checked
directly, and Clarabel says unbounded. None of this calls optlayers' solver.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import optlayers as ol

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "qp"))
from qp_oracles import cvxpy_solve  # noqa: E402  (the QP tests' CVXPY + Clarabel oracle)

S = ol.Status


def _problems(H):
    for i in range(H.q.shape[0]):
        yield [t[i].numpy() if t[i].numel() else None for t in H.data()]


@pytest.mark.parametrize("family", ["degenerate_vertex", "pinned_vertex", "duplicate_rows"])
def test_solvable_families_satisfy_kkt_and_match_clarabel(family):
    H = ol.testing.hard_qps(family, 6, seed=3)
    assert H.expect.tolist() == [S.SOLVED] * 6
    for i, (Q, q, G, h, A, b) in enumerate(_problems(H)):
        x, lam, nu = (t[i].numpy() for t in (H.x, H.lam, H.nu))
        A = np.zeros((0, x.size)) if A is None else A
        # KKT at (x, λ, ν): stationarity, primal feasibility, λ ≥ 0, complementarity.
        assert np.abs(Q @ x + q + G.T @ lam + A.T @ nu).max() < 1e-12
        assert (G @ x - h).max() < 1e-12 and (A.size == 0 or np.abs(A @ x - b).max() < 1e-12)
        assert lam.min() >= 0 and np.abs(lam * (h - G @ x)).max() < 1e-12
        assert np.linalg.eigvalsh(Q).min() > 0  # strictly convex: x is the unique solution
        # Clarabel, an interior point without a polish, is accurate to ~1e-6 on degenerate vertices.
        x_ref, _, _, status = cvxpy_solve(Q, q, G, h, A if A.size else None, b)
        assert status == "optimal" and np.abs(x_ref - x).max() < 1e-5


def test_degenerate_vertex_has_more_active_rows_than_free_directions():
    H = ol.testing.hard_qps("degenerate_vertex", 8, seed=0)
    n, p = H.q.shape[-1], H.b.shape[-1]
    active = ((H.h - (H.G @ H.x.unsqueeze(-1)).squeeze(-1)).abs() < 1e-12).sum(-1)
    assert bool((active + p > n).all()), active.tolist()


def test_infeasible_family_has_a_farkas_certificate():
    H = ol.testing.hard_qps("infeasible", 6, seed=2)
    assert H.expect.tolist() == [S.PRIMAL_INFEASIBLE] * 6
    assert bool(torch.isnan(H.x).all())
    # z = e_{m−2} + e_{m−1}: Gᵀz = 0 and hᵀz = −δ < 0.
    assert float((H.G[:, -2] + H.G[:, -1]).abs().max()) == 0.0
    gap = -(H.h[:, -2] + H.h[:, -1])
    assert bool((gap >= 1e-3 * (1 - 1e-12)).all() and (gap <= 1).all())
    for Q, q, G, h, A, b in _problems(H):
        assert cvxpy_solve(Q, q, G, h, A, b)[3] == "infeasible"


def test_unbounded_family_has_a_descent_ray():
    H = ol.testing.hard_qps("unbounded", 6, seed=2)
    assert H.expect.tolist() == [S.DUAL_INFEASIBLE] * 6
    for Q, q, G, h, A, b in _problems(H):
        # The ray is the null vector of Q (rank n − 1).
        w, V = np.linalg.eigh(Q)
        d = V[:, 0] * np.sign(-(q @ V[:, 0]))
        assert abs(w[0]) < 1e-10 and w[1] > 1e-8
        assert (G @ d).max() < 0 and np.abs(A @ d).max() < 1e-12 and q @ d < 0
        assert cvxpy_solve(Q, q, G, h, A, b)[3] == "unbounded"


def test_float32_is_the_rounding_and_bad_arguments_raise():
    H64 = ol.testing.hard_qps("pinned_vertex", 4, seed=5)
    H32 = ol.testing.hard_qps("pinned_vertex", 4, seed=5, dtype=torch.float32)
    for a, b in zip(H64.data(), H32.data()):
        assert b.dtype == torch.float32 and torch.equal(a.float(), b)
    with pytest.raises(ValueError, match="family must be one of"):
        ol.testing.hard_qps("nope")
    with pytest.raises(ValueError, match="need B"):
        ol.testing.hard_qps("unbounded", 0)
    with pytest.raises(ValueError, match="pinning_rows"):
        ol.testing.hard_qps("pinned_vertex", 2, size=(3, 5, 0), pinning_rows=4)


@pytest.mark.parametrize("k", [0, -1, -2])
def test_pinning_rows_must_be_positive(k):
    # (-2 had pinned 23 rows through Python's negative slicing, 0 and -1 none)
    with pytest.raises(ValueError, match="pinning_rows"):
        ol.testing.hard_qps("pinned_vertex", 4, pinning_rows=k)
