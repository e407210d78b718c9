"""The polish's correction rounds (optlayers/_src/qp/active_set.py, csrc/optlayers/qp_ipm.h::polish,
qp_small.h::polish_rounds): which violated rows join a corrected guess.

The case that asked for the rule: a grasp QP (box, K = 4, seed 0 with 64 grasps or more, problem 8;
`python benchmarks/grasp_qp.py` solves it in its K = 4 batch) whose optimal active
set is {4, 5, 22}. Row 4's multiplier, 7.8e-6, is below its slack 1.3e-5 where the interior point
stops, so the guess λ_i > s_i is {5, 22}; its KKT point violates rows 3 and 4 (by 1.8e-3 and
1.9e-3). Adding both made the next guess fail the sign test and the rounds never recovered (the
problem kept the interior point's x, 1.6e-5 off); the iterate ranks row 4 (ρ = λ̂/ŝ = 0.62) far
above row 3 (3.6e-5), and adding row 4 alone is the solution.
"""

import os
import sys

import numpy as np
import pytest
import torch

import optlayers as ol
from optlayers._src.qp.active_set import JOIN_RATIO, _joining

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import grasp_model as gm  # noqa: E402


def _problem_8():
    # (the grasps are drawn as one batch: problem 8 is the same for any count ≥ 64, not for 2)
    Q, q, G, h = gm.qp_batch(gm.OBJECTS["box"], gm.GraspConfig(contacts=4, wrenches=6), 64, 0)
    return Q[8:9], q[8:9], G, h


def _active_set_point(Q, q, G, h, rows):
    """x, λ_𝒜 of min ½xᵀQx + qᵀx s.t. G_𝒜 x = h_𝒜 (numpy, an independent reference)."""
    Q, q, G, h = (t.numpy() for t in (Q, q, G, h))
    n, k = Q.shape[0], len(rows)
    K = np.zeros((n + k, n + k))
    K[:n, :n], K[:n, n:], K[n:, :n] = Q, G[rows].T, G[rows]
    u = np.linalg.solve(K, np.concatenate([-q, h[rows]]))
    return u[:n], u[n:]


def _select_path(path: str, monkeypatch, small: str) -> str:
    """The backend for ``path`` (torch, native-lanes, native-serial, native-small), with the native
    CPU op's path set through its environment variables (``small``: OPTLAYERS_CPU_SMALL's value)."""
    if path == "torch":
        return "torch"
    ok, why = ol.native.status()
    if not ok:
        pytest.skip(f"native kernel unavailable: {why}")
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", "1" if path == "native-lanes" else "0")
    monkeypatch.setenv("OPTLAYERS_CPU_SMALL", small if path == "native-small" else "0")
    return "native"


def test_joining_keeps_rows_ranked_within_the_ratio():
    violated = torch.tensor([[True, True, False, True]])
    rank = torch.tensor([[0.62, 3.6e-5, 5.0, 0.62 * JOIN_RATIO]])
    # Row 2 is not violated (its large ρ does not count); row 3 sits exactly at the ratio.
    assert _joining(violated, rank).tolist() == [[True, False, False, True]]


@pytest.mark.parametrize("rank", [[0.0, 0.0], [float("inf"), 1.0], [float("nan"), 1.0]], ids=["zero", "inf", "nan"])
def test_joining_without_a_ranking_adds_every_violated_row(rank):
    # λ̂ = 0 (the torch warm start's guesses), an infinite λ̂ (the native warm start's ±∞ guess)
    # or a NaN: no ranking, the plain primal-dual active-set step.
    violated = torch.tensor([[True, True, False]])
    r = torch.tensor([rank + [7.0]])
    assert _joining(violated, r).tolist() == [[True, True, False]]


def test_joining_ranks_each_problem_separately():
    violated = torch.tensor([[True, True], [True, True]])
    rank = torch.tensor([[1.0, 1e-3], [0.0, 0.0]])
    assert _joining(violated, rank).tolist() == [[True, False], [True, True]]


@pytest.mark.parametrize("path", ["torch", "native-lanes", "native-serial", "native-small"])
def test_polish_adds_the_likeliest_violated_row(path, monkeypatch):
    backend = _select_path(path, monkeypatch, small="2")  # the small kernel's own polish, no fallback
    Q, q, G, h = _problem_8()
    # The premise: the interior point's guess misses row 4 (its λ below its slack).
    raw = ol.solve_qp(Q, q, G, h, backend="torch", return_solution=True, polish=False)
    slack = h - G @ raw.x[0]
    assert float(raw.lam[0, 4]) < float(slack[4])
    assert sorted(torch.nonzero(raw.lam[0] > slack).flatten().tolist()) == [5, 22]

    sol = ol.solve_qp(Q, q, G, h, backend=backend, return_solution=True)
    assert sol.status.tolist() == [ol.Status.SOLVED]
    x_ref, lam_ref = _active_set_point(Q[0], q[0], G, h, [4, 5, 22])
    assert float((G.numpy() @ x_ref - h.numpy()).max()) < 1e-14 and lam_ref.min() > 0  # it is optimal
    assert float((sol.x[0] - torch.from_numpy(x_ref)).abs().max()) < 1e-12
    assert float((sol.lam[0, [4, 5, 22]] - torch.from_numpy(lam_ref)).abs().max()) < 1e-12
    assert torch.nonzero(sol.lam[0]).flatten().tolist() == [4, 5, 22]


# The three of 96,000 grasp QPs (box, seed 0, 8,000 grasps × 6 wrenches; K contacts, index) that the
# join rule leaves at the interior point's solution — rows with λ and s both 1e-6 … 1e-4 when it
# stops — and that the retry at a tighter tolerance polishes (torch_ipm.py::_finish_unpolished,
# csrc/qp_cpu_solve_impl.h::finish_unpolished).
RETRIED = [(4, 7138), (5, 10673), (5, 33626)]


@pytest.fixture(scope="module")
def retried_problems():
    out = []
    for contacts in (4, 5):
        Q, q, G, h = gm.qp_batch(gm.OBJECTS["box"], gm.GraspConfig(contacts=contacts, wrenches=6), 8000, 0)
        idx = [i for k, i in RETRIED if k == contacts]
        out.append((Q[idx].clone(), q[idx].clone(), G, h))
    return out


def test_unpolished_tells_interior_point_iterates_from_polished_points(retried_problems):
    from optlayers._src.qp.active_set import unpolished
    from optlayers._src.qp.problem import canonicalize

    Q, q, G, h = retried_problems[0]
    data = canonicalize(Q, q, G, h)
    raw = ol.solve_qp(Q, q, G, h, backend="torch", return_solution=True, polish=False)
    assert unpolished(data, raw.x, raw.lam, raw.status).tolist() == [True]
    sol = ol.solve_qp(Q, q, G, h, backend="torch", return_solution=True)
    assert unpolished(data, sol.x, sol.lam, sol.status).tolist() == [False]
    # Only SOLVED problems count (a MAX_ITER iterate is the certificates' business).
    assert unpolished(data, raw.x, raw.lam, torch.full_like(raw.status, ol.Status.MAX_ITER)).tolist() == [False]


@pytest.mark.parametrize("path", ["torch", "native-lanes", "native-serial", "native-small"])
def test_problems_the_polish_rejects_are_retried_at_a_tighter_tolerance(path, retried_problems, monkeypatch):
    backend = _select_path(path, monkeypatch, small="1")  # with the fallback and the CPU op's finish
    for Q, q, G, h in retried_problems:
        # The premise: at the default tolerance the interior point stops where no polish round
        # guesses the active set (its iterate solved alone, without polish, is what the retry replaces).
        first = ol.solve_qp(Q, q, G, h, backend="torch", return_solution=True, polish=False)
        sol = ol.solve_qp(Q, q, G, h, backend=backend, return_solution=True)
        assert sol.status.tolist() == [ol.Status.SOLVED] * Q.shape[0]
        assert bool((sol.iterations > first.iterations).all())  # the retry's iterations add up
        # The KKT conditions at round-off: an optimality certificate independent of any solver.
        x, lam = sol.x, sol.lam
        slack = h - x @ G.T
        stationarity = (torch.einsum("bij,bj->bi", Q, x) + q + lam @ G).abs().amax(-1)
        assert float(stationarity.max()) < 1e-12 * (1 + float(q.abs().max()))
        assert float(slack.min()) > -1e-12 and float(lam.min()) >= 0
        assert float((lam * slack).abs().max()) < 1e-15


@pytest.mark.parametrize("name,constant", [("kJoinRatio", "JOIN_RATIO"), ("kRetryTolFactor", "RETRY_TOL_FACTOR"),
                                           ("kFloat32InFloat64PolishTol", "FLOAT32_IN_FLOAT64_POLISH_TOL")])
def test_kernel_constants_match_the_pytorch_backend(name, constant):
    import pathlib
    import re

    from optlayers._src.qp import active_set

    header = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "optlayers" / "qp_ipm.h"
    value = float(re.search(rf"constexpr double {name} = ([0-9.e+-]+);", header.read_text()).group(1))
    assert value == getattr(active_set, constant)
