"""Certificates for the problems the interior point could not finish (``qp/certificates.py``).

The searches (NNLS over all rows for a Farkas certificate z ≥ 0, ν with G̃ᵀz + Ãᵀν = 0,
h̃ᵀz + b̃ᵀν = −1, and for a descent ray d with Qd = 0, Ãd = 0, G̃d ≤ 0, qᵀd = −1) must find every
infeasible, resp. unbounded, problem of the families and never one of another family (the
families' answers are known by construction and checked against Clarabel in tests/testing),
respect the rounding rule, and turn what the backends leave as MAX_ITER into PRIMAL_INFEASIBLE or
DUAL_INFEASIBLE in solve_qp, qp_value and QPLayer.
"""

import pytest
import torch

import optlayers as ol
from optlayers._src.qp import backends
from optlayers._src.qp.certificates import descent_rays, farkas_certificates
from optlayers._src.qp.options import QPOptions
from optlayers._src.qp.problem import canonicalize

S = ol.Status


def _canon(H):
    return canonicalize(*[t if t.numel() else None for t in H.data()])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_found_for_every_infeasible_problem_and_never_otherwise(dtype):
    for family in ol.testing.FAMILIES:
        H = ol.testing.hard_qps(family, 24, seed=7, dtype=dtype)
        found = farkas_certificates(_canon(H))
        assert found.tolist() == (H.expect == S.PRIMAL_INFEASIBLE).tolist(), family
        rays = descent_rays(_canon(H))
        assert rays.tolist() == (H.expect == S.DUAL_INFEASIBLE).tolist(), family
    P = ol.testing.random_qp(16, 8, 12, 2, seed=3, dtype=dtype)
    assert not bool(farkas_certificates(canonicalize(*P.data())).any())
    assert not bool(descent_rays(canonicalize(*P.data())).any())


@pytest.mark.parametrize("gap,found", [(1e-3, True), (1e-12, False)])
def test_a_gap_at_rounding_level_is_not_a_certificate(gap, found):
    # x ≤ a and −x ≤ −a − gap: z = (1, 1)/gap is an exact Farkas certificate for any gap > 0, but
    # its value t = 1 is the difference of terms of size 2a/gap — for gap = 1e-12 a rounding
    # (the rule of the interior point: t > ε Σ|hᵢzᵢ|).
    a = 3.0
    G = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    h = torch.tensor([a, -a - gap], dtype=torch.float64)
    data = canonicalize(torch.eye(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), G, h)
    assert farkas_certificates(data).tolist() == [found]


def test_turns_what_the_backends_leave_into_primal_infeasible(backend):
    # Thin gaps (1e-3 … 1): the interior point breaks down or stalls on a few before its
    # certificate ratio reaches the tolerance (raw status MAX_ITER after 13–17 iterations).
    H = ol.testing.hard_qps("infeasible", 64, seed=1)
    data = _canon(H)
    raw = backends.select(backend, data).solve(data, QPOptions())
    left = raw.status != S.PRIMAL_INFEASIBLE
    assert int(left.sum()) >= 1 and bool((raw.status[left] == S.MAX_ITER).all())
    sol = ol.solve_qp(*H.data(), backend=backend, return_solution=True, on_failure="nan")
    assert sol.status.tolist() == [S.PRIMAL_INFEASIBLE] * 64
    value, vsol = ol.qp_value(*H.data(), backend=backend, return_solution=True, on_failure="nan")
    assert vsol.status.tolist() == [S.PRIMAL_INFEASIBLE] * 64 and bool(value.isnan().all())
    layer = ol.QPLayer(backend=backend, return_solution=True, on_failure="nan")
    assert layer(*H.data()).status.tolist() == [S.PRIMAL_INFEASIBLE] * 64
    with pytest.raises(ol.SolverError, match="infeasible"):
        ol.solve_qp(*H.data(), backend=backend)


def test_not_searched_when_the_caller_lowered_the_iteration_budget(backend):
    # A caller who caps max_iter below the default gets MAX_ITER (no search cost): these problems
    # need more than 3 iterations to be certified or to stall.
    H = ol.testing.hard_qps("infeasible", 8, seed=0)
    sol = ol.solve_qp(*H.data(), backend=backend, return_solution=True, on_failure="nan", max_iter=3)
    assert sol.status.tolist() == [S.MAX_ITER] * 8


def test_a_ray_the_interior_point_runs_along_too_slowly(backend):
    # Rank-2 Q, n = 25, 3 equalities (tests/qp/test_qp_robustness.py's far family, seed 14): the
    # iterate leaves along the ray too slowly for the interior point's ratio test, which stalls
    # (MAX_ITER after 16 iterations); the descent-ray search certifies it.
    import numpy as np

    from test_qp_robustness import far_qp

    data_np = far_qp(14)
    Q, q, G, h, A, b = (torch.tensor(np.asarray(t)) for t in data_np)
    data = canonicalize(Q, q, G, h, A, b)
    raw = backends.select(backend, data).solve(data, QPOptions())
    assert int(raw.status) == S.MAX_ITER
    assert int(ol.solve_qp(Q, q, G, h, A, b, backend=backend, return_solution=True, on_failure="nan").status) \
        == S.DUAL_INFEASIBLE
