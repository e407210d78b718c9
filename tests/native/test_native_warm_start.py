"""The native warm start on CPU: ``optlayers::qp_active_set_solve`` (every problem's guessed active set
through the interior point's polish — solve, acceptance test, NNLS multiplier repair, one
correction — in one C++ pass), its kept polish LUs, and ``qp_backward``'s ``needs`` mask (only the
wanted gradients' outer products)."""

import pytest
import torch

import optlayers as ol
from optlayers._src.native import ops
from optlayers._src.native.backend import native_status
from optlayers._src.qp.problem import canonicalize
from optlayers._src.tolerances import tolerances_for

from qp_cases import grasp_batch

ok, why = native_status()
pytestmark = pytest.mark.skipif(not ok, reason=f"native kernel unavailable: {why}")

D = torch.float64
S = ol.Status


def _planted(B, n, m, p, seed=3, shared=()):
    return ol.testing.random_qp((B,), n=n, m=m, p=p, active_fraction=0.5, seed=seed, dtype=D, shared=shared)


@pytest.mark.parametrize("n,m,p", [(6, 9, 1), (12, 30, 0), (30, 40, 5)])
def test_right_guess_is_accepted_and_exact(n, m, p):
    """The planted active set (serial polish for p > 0 or n > 16, qp_small.h's for n ≤ 16, p = 0):
    SOLVED, the planted solution; an impossible guess (every row: more rows than variables) is
    corrected once and then rejected or accepted, never wrong."""
    P = _planted(10, n, m, p)
    d = canonicalize(*P.data())
    x, lam, nu, status, factor = ops.active_set_solve(d, P.active.to(D), 2)
    assert status.tolist() == [S.SOLVED] * 10 and factor.numel() == 0
    assert float((x - P.x).abs().max()) < 1e-10
    assert float((lam - P.lam).abs().max()) < 1e-8
    assert p == 0 or float((nu - P.nu).abs().max()) < 1e-8
    x, lam, nu, status, _ = ops.active_set_solve(d, torch.ones(10, m, dtype=D), 1)
    assert status.tolist() == [S.MAX_ITER] * 10  # m > n rows cannot all be active at once
    assert float(x.abs().max()) == 0.0 and float(lam.abs().max()) == 0.0


def test_degenerate_grasp_guesses_need_the_multiplier_repair():
    """Real grasp QPs warm-started from their own active sets after a 1e-3 change of q: dependent
    active rows (zero-force contacts) make the guessed system's multipliers non-unique, and the
    polish's NNLS repair finds nonnegative ones. Most are accepted, each at the cold solve's x."""
    Q, q, G, h = grasp_batch(64)
    old = ol.solve_qp(Q, q, G, h, backend="native", return_solution=True)
    g = torch.Generator().manual_seed(0)
    q2 = q + 1e-3 * torch.randn(q.shape, generator=g, dtype=D) * q.abs().mean()
    d = canonicalize(Q, q2, G, h)
    x, lam, nu, status, _ = ops.active_set_solve(d, (old.lam > 0).to(D), 2)
    acc = status == S.SOLVED
    assert float(acc.double().mean()) > 0.7  # 0.81 (without the repair: 0.51)
    cold = ol.solve_qp(Q, q2, G, h, backend="native", return_solution=True)
    assert float((x[acc] - cold.x[acc]).abs().max()) < 1e-9
    st = torch.einsum("bij,bj->bi", Q, x) + q2 + lam @ G
    assert float(st[acc].abs().max()) < 1e-9 and float(lam.min()) >= 0
    assert float((lam * (h - x @ G.mT))[acc].abs().max()) < 1e-9


@pytest.mark.parametrize("keep", [False, True])
def test_opcheck_active_set_solve_and_backward_needs(keep):
    tl = tolerances_for(D)
    P = _planted(3, 30, 40, 5, shared=("G",))
    d = canonicalize(*P.data())
    guess = P.active.to(D)
    torch.library.opcheck(torch.ops.optlayers.qp_active_set_solve.default,
                          (*d.tensors(), guess, tl.kkt_reg, tl.polish_tol, 2, keep))
    x, lam, nu = P.x, P.lam, P.nu
    status = torch.zeros(3, dtype=torch.int8)
    g = torch.Generator().manual_seed(0)
    gx, glam, gnu = (torch.randn(t.shape, generator=g, dtype=D) for t in (x, lam, nu))
    for needs in (63, 0b000010, 0b001010):
        torch.library.opcheck(torch.ops.optlayers.qp_backward.default,
                              (*d.tensors(), x, lam, nu, status, x.new_empty(0), gx, glam, gnu, tl.kkt_reg, needs),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("n,m,p,B", [(6, 9, 1, 5), (12, 41, 0, 40), (30, 40, 5, 4)])
def test_backward_needs_mask_computes_only_the_wanted_gradients(n, m, p, B):
    """qp_backward with a partial ``needs`` mask: the wanted gradients equal the full call's, the
    others come back empty (serial path; B = 40 at n = 12 takes the lanes)."""
    tl = tolerances_for(D)
    P = _planted(B, n, m, p, shared=("G",))
    d = canonicalize(*P.data())
    status = torch.zeros(B, dtype=torch.int8)
    g = torch.Generator().manual_seed(1)
    gx, glam, gnu = (torch.randn(t.shape, generator=g, dtype=D) for t in (P.x, P.lam, P.nu))
    args = (*d.tensors(), P.x, P.lam, P.nu, status, P.x.new_empty(0), gx, glam, gnu, tl.kkt_reg)
    full = torch.ops.optlayers.qp_backward(*args)
    for needs in (0b000010, 0b001000, 0b000101, 0b110000):
        part = torch.ops.optlayers.qp_backward(*args, needs)
        for k, (a, b) in enumerate(zip(part, full)):
            if (needs >> k) & 1:
                assert torch.equal(a, b), (needs, k)
            else:
                assert a.numel() == 0, (needs, k)


def test_warm_gradients_with_kept_factor_equal_the_cold_ones():
    """n + p ≥ 48: the warm start keeps its polish LUs (and the cold part's) for the backward;
    gradients w.r.t. all six inputs equal the cold solve's, with half the problems guessed right
    and half solved cold."""
    P = _planted(6, 50, 60, 4, seed=8)
    d = canonicalize(*P.data())
    guess = P.active.to(D).clone()
    guess[3:] = 0  # wrong: these are solved cold (a correction round may fix some)
    _, _, _, status, factor = ops.active_set_solve(d, guess, 1, keep_factor=True)
    assert factor.shape[0] == 6 and bool((factor[:3, -1] >= 0).all()) and bool((factor[3:, -1] == -1).all())
    assert status.tolist()[:3] == [S.SOLVED] * 3

    def grads(warm):
        ins = [t.clone().requires_grad_() for t in P.data()]
        sol = ol.solve_qp(*ins, backend="native", return_solution=True, warm_start=warm)
        c = torch.arange(sol.x.numel(), dtype=D).reshape(sol.x.shape).sin()
        ((sol.x * c).sum() + sol.lam.sum() + sol.nu.sum()).backward()
        return [t.grad for t in ins], sol.iterations

    cold, _ = grads(None)
    warm, it = grads(guess.bool())
    assert bool((it[:3] == 0).all()) and bool((it[3:] > 0).any())
    for a, b in zip(warm, cold):
        assert float((a - b).abs().max()) <= 1e-9 * (1 + float(b.abs().max()))


@pytest.mark.parametrize("n,m,p,shared,dtype", [(8, 140, 0, ("G",), D), (10, 20, 0, ("Q",), torch.float32),
                                                (16, 40, 2, ("G",), D)])
def test_guess_op_routes_and_dtypes(n, m, p, shared, dtype):
    """The op's routes beyond the planted default: m > 128 (qp_ipm.h's polish although n ≤ 16),
    float32 (qp_small.h's double-precision polish), equalities with n ≤ 16 (qp_ipm.h's); shared
    data read from one copy. The right guess gives the planted solution."""
    P = ol.testing.random_qp((6,), n=n, m=m, p=p, active_fraction=0.3, seed=2, dtype=dtype, shared=shared)
    d = canonicalize(*P.data())
    x, lam, nu, status, _ = ops.active_set_solve(d, P.active.to(dtype), 2)
    assert status.tolist() == [S.SOLVED] * 6
    tol = 1e-10 if dtype == D else 1e-4
    assert float((x - P.x).abs().max()) < tol * (1 + float(P.x.abs().max()))
    w = ol.solve_qp(*P.data(), backend="native", return_solution=True, warm_start=P.active)
    assert bool((w.iterations == 0).all()) and torch.equal(w.x, x)


def test_warm_started_failed_problem_gives_zero_gradient():
    """A warm-started batch with an infeasible problem: its statuses reach the fused C++ backward,
    which skips it as the op's own backward does — finite gradients, the infeasible problem's
    contribution to the shared h zero (the cold solve's gradients exactly)."""
    Q = torch.eye(2, dtype=D).expand(3, 2, 2)
    q = torch.tensor([[1.0, -2.0], [0.0, 0.0], [-1.0, 0.5]], dtype=D)
    G = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=D)
    h = torch.tensor([[0.5, 0.5, 1.0], [-1.0, -1.0, 1.0], [0.5, 0.5, 1.0]], dtype=D)  # problem 1: x₀ ≤ −1, x₀ ≥ 1

    def grads(warm):
        qq, hh = q.clone().requires_grad_(), h.clone().requires_grad_()
        sol = ol.solve_qp(Q, qq, G, hh, backend="native", return_solution=True, on_failure="nan", warm_start=warm)
        ok = sol.status == 0
        (sol.x[ok].sum() + sol.lam[ok].sum()).backward()
        return sol.status.tolist(), qq.grad, hh.grad

    st_c, gq_c, gh_c = grads(None)
    st_w, gq_w, gh_w = grads(torch.ones(3, 3, dtype=torch.bool))
    assert st_c == st_w == [S.SOLVED, S.PRIMAL_INFEASIBLE, S.SOLVED]
    assert bool(torch.isfinite(gq_w).all()) and bool(torch.isfinite(gh_w).all())
    assert float(gq_w[1].abs().max()) == 0.0 and float(gh_w[1].abs().max()) == 0.0
    assert torch.allclose(gq_w, gq_c, atol=1e-12) and torch.allclose(gh_w, gh_c, atol=1e-12)


@pytest.mark.parametrize("B,n,m,p", [(40, 20, 20, 5), (64, 12, 41, 0), (24, 50, 60, 8)])
def test_guess_op_lanes_blocks_equal_the_serial_polish(B, n, m, p, monkeypatch):
    """float64 batches the lanes path takes (n ≤ 80, m + p ≤ 128, ≥ 2 blocks) run their guesses W
    problems a block (qp_lanes.h::guess_block: the block polish, its repair, the serial polish for
    rejected lanes); OPTLAYERS_CPU_LANES=0 sends them through the per-problem polish. Guesses from
    the solution of a perturbed problem, so some are wrong: the same problems are accepted, at the
    same x (to round-off)."""
    P = _planted(B, n, m, p, seed=5)
    d = canonicalize(*P.data())
    g = torch.Generator().manual_seed(3)
    guess = P.active.clone()
    flip = torch.rand(guess.shape, generator=g) < 0.05  # a few wrong rows
    guess = (guess ^ flip).to(D)
    outs = {}
    for lanes in ("1", "0"):
        monkeypatch.setenv("OPTLAYERS_CPU_LANES", lanes)
        outs[lanes] = ops.active_set_solve(d, guess, 2)
    (x1, l1, n1, s1, _), (x0, l0, n0, s0, _) = outs["1"], outs["0"]
    assert torch.equal(s1, s0)
    ok = s1 == S.SOLVED
    assert bool(ok.any()) and bool((~ok).any() or flip.any())
    assert float((x1[ok] - x0[ok]).abs().max()) < 1e-10
    assert float((x1[ok] - P.x[ok]).abs().max()) < 1e-10
    assert float(x1[~ok].abs().sum()) == 0.0 and float(l1[~ok].abs().sum()) == 0.0
