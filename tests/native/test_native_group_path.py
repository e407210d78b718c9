"""The thread-group (CUDA) code path of the per-problem solver, run on the host.

The CUDA kernels (csrc/optlayers/qp_cuda_kernels.cuh) run csrc/optlayers/qp_ipm.h with a warp or a block cooperating
on each problem; without a GPU they cannot run here, but their algorithm can:
tests/native/cpp/group_emulation.cpp runs the same template with a group of real threads (barrier
for ``sync``, shared slots for ``sum``/``max``), the semantics of WarpGroup/BlockGroup. Each problem
is solved (and differentiated, gx = 1) by the serial CPU path and by the group path; statuses must
match and solutions and gradients agree to the solver tolerance.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import optlayers as ol

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE.parents[1] / "csrc"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("group") / "group_emulation"
    out = subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", f"-I{CSRC}", str(HERE / "cpp" / "group_emulation.cpp"),
                          "-o", str(exe)], capture_output=True, text=True)
    if out.returncode != 0 and ("barrier" in out.stderr or "c++20" in out.stderr):
        pytest.skip("compiler without C++20 <barrier>")
    assert out.returncode == 0, out.stderr
    return exe


def _problems():
    """(name, n, m, p, Q, q, G, h, A, b, planted x or None, expected status)."""
    out = []
    for B, n, m, p in [(2, 3, 4, 0), (2, 5, 7, 2), (2, 12, 41, 0), (1, 20, 20, 5), (1, 40, 60, 8), (1, 70, 140, 0)]:
        P = ol.testing.random_qp(B, n, m, p, dtype=torch.float64, seed=n)
        for i in range(B):
            out.append((f"planted{i}-n{n}m{m}p{p}", n, m, p, P.Q[i], P.q[i], P.G[i], P.h[i], P.A[i], P.b[i],
                        P.x[i], 0))
    d = torch.float64
    # Equality-only (m = 0): min ½‖x‖² − 1ᵀx s.t. 1ᵀx = 1.
    n = 4
    out.append(("eq-only", n, 0, 1, torch.eye(n, dtype=d), -torch.ones(n, dtype=d), torch.zeros(0, n, dtype=d),
                torch.zeros(0, dtype=d), torch.ones(1, n, dtype=d), torch.ones(1, dtype=d),
                torch.full((n,), 0.25, dtype=d), 0))
    # Primal infeasible: x ≥ 1 and x ≤ −1.
    out.append(("infeasible", 1, 2, 0, torch.eye(1, dtype=d), torch.zeros(1, dtype=d),
                torch.tensor([[-1.0], [1.0]], dtype=d), torch.tensor([-1.0, -1.0], dtype=d),
                torch.zeros(0, 1, dtype=d), torch.zeros(0, dtype=d), None, 1))
    # Dual infeasible (unbounded): min −x₁ s.t. x₂ ≤ 1, Q = 0.
    out.append(("unbounded", 2, 1, 0, torch.zeros(2, 2, dtype=d), torch.tensor([-1.0, 0.0], dtype=d),
                torch.tensor([[0.0, 1.0]], dtype=d), torch.ones(1, dtype=d), torch.zeros(0, 2, dtype=d),
                torch.zeros(0, dtype=d), None, 2))
    # Degenerate (dependent active rows): x ≥ 0 twice, min ½‖x − c‖² with c < 0 in one coordinate.
    out.append(("degenerate", 2, 3, 0, torch.eye(2, dtype=d), torch.tensor([1.0, -1.0], dtype=d),
                torch.tensor([[-1.0, 0.0], [-2.0, 0.0], [0.0, -1.0]], dtype=d), torch.zeros(3, dtype=d),
                torch.zeros(0, 2, dtype=d), torch.zeros(0, dtype=d), torch.tensor([0.0, 1.0], dtype=d), 0))
    out += _degenerate_grasp_problems()
    return out


def _degenerate_grasp_problems(count=12):
    """Grasp QPs whose solution has a zero-force contact (all its facets and its normal bound
    active on 3 variables): the polish needs the NNLS multiplier repair to finish them."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    import grasp_model as gm

    cfg = gm.GraspConfig(contacts=4, wrenches=6)
    B = 16 * 6
    Q, q, G, h = gm.qp_batch(gm.OBJECTS["box"], cfg, 16, 0)
    x = ol.solve_qp(Q, q, G, h, backend="torch")
    zero_force = (x.reshape(B, cfg.contacts, 3).abs().amax(-1) < 1e-7).any(-1)
    idx = zero_force.nonzero().flatten()[:count].tolist()
    assert len(idx) == count, idx
    e = torch.zeros(0, cfg.n, dtype=torch.float64)
    return [(f"grasp{i}", cfg.n, G.shape[0], 0, Q[i], q[i], G, h, e, torch.zeros(0, dtype=torch.float64), None, 0)
            for i in idx]


def _write(path, problems):
    with open(path, "wb") as f:
        np.array([len(problems)], dtype=np.int64).tofile(f)
        for _, n, m, p, *data in problems:
            np.array([n, m, p], dtype=np.int64).tofile(f)
            for t in data[:6]:
                t.numpy().astype(np.float64).tofile(f)


def _parse(stdout):
    rows = {}
    for line in stdout.strip().splitlines():
        tag, idx, status, *vals = line.split()
        rows[(tag, int(idx))] = (int(status), np.array(vals, dtype=float))
    return rows


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lanes,width,k_shared", [(1, 1, 0), (3, 1, 1), (32, 32, 0), (8, 4, 1)],
                         ids=["1-lane", "3-sets-of-1-Kshared", "warp", "2-sets-of-4-Kshared"])
def test_group_path_matches_serial_path(driver, tmp_path, lanes, width, k_shared, dtype):
    """``lanes`` members in lane sets of ``width`` (a warp: 32 of 32; a block: sets of 32)."""
    problems = _problems()
    data = tmp_path / "qps.bin"
    _write(data, problems)
    run = subprocess.run([str(driver), str(data), str(lanes), str(k_shared), str(int(dtype == "float32")), str(width)],
                         capture_output=True, text=True, timeout=120)  # (a deadlock: members out of step)
    assert run.returncode == 0, run.stderr
    rows = _parse(run.stdout)
    tol = 2e-3 if dtype == "float32" else 1e-7
    for idx, (name, n, m, p, *_rest, x_star, expected) in enumerate(problems):
        s_status, s_vals = rows[("serial", idx)]
        g_status, g_vals = rows[("group", idx)]
        assert g_status == s_status == expected, (name, s_status, g_status)
        if expected != 0:
            continue
        # x, and the multipliers where they are unique (not at the degenerate grasp QPs below).
        sol = slice(0, n + m + p) if x_star is not None else slice(0, n)
        scale = 1 + np.abs(s_vals).max()
        assert np.abs(g_vals[sol] - s_vals[sol]).max() <= tol * scale, (name, g_vals[sol], s_vals[sol])
        if x_star is None:
            # Degenerate grasp QP: both paths must finish it exactly (NNLS multiplier repair, run by
            # one member of the group), i.e. satisfy the KKT conditions to round-off in float64.
            # The multipliers of the dependent rows are not unique, so the paths (which round
            # differently) may return different valid ones, and gradients — the active mask is
            # then decided by rounding (a generalized Jacobian) — are not compared either.
            if dtype == "float64":
                Q, q, G, h = (t.numpy() for t in problems[idx][4:8])
                for vals in (s_vals, g_vals):
                    x, lam = vals[:n], vals[n:n + m]
                    stat = np.abs(Q @ x + q + G.T @ lam).max() / (1 + np.abs(q).max())
                    comp = np.abs(lam * (h - G @ x)).max()
                    assert stat < 1e-12 and comp < 1e-12 and lam.min() >= 0, (name, stat, comp, lam.min())
            continue
        assert np.abs(g_vals[:n] - x_star.numpy()).max() <= tol * (1 + x_star.abs().max().item()), name
        # Gradients dq, dh, db (gx = 1): the same active set and KKT solve on both paths.
        assert np.abs(g_vals[n + m + p:] - s_vals[n + m + p:]).max() <= 10 * tol * scale, name


@pytest.mark.parametrize("lanes,width,k_shared,f32", [(32, 32, 0, 1), (8, 4, 1, 0), (8, 4, 1, 1)],
                         ids=["warp-float32", "2-sets-of-4-Kshared-float64", "2-sets-of-4-Kshared-float32"])
def test_group_path_has_no_data_races(tmp_path, lanes, width, k_shared, f32):
    """The same driver under ThreadSanitizer: every read of a workspace slot another member wrote
    must be ordered by a sync(). (It found a missing sync in the polish — the right-hand side was
    written and read under different member-to-index mappings — which made the warp/float32 case
    above fail now and then, and would race on a GPU too. The float32 block case: a failed
    Cholesky's verdict was read after other members had started rebuilding K — a deadlock here.)"""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "group_emulation_tsan"
    out = subprocess.run([cxx, "-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread", f"-I{CSRC}",
                          str(HERE / "cpp" / "group_emulation.cpp"), "-o", str(exe)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"no ThreadSanitizer build here: {out.stderr.strip().splitlines()[-1:]}")
    data = tmp_path / "qps.bin"
    _write(data, _problems())
    run = subprocess.run([str(exe), str(data), str(lanes), str(k_shared), str(f32), str(width)],
                         capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"})
    assert "ThreadSanitizer" not in run.stderr and run.returncode == 0, run.stderr[-3000:]


def test_group_cholesky_matches_serial_and_fails_uniformly(tmp_path):
    """The groups' Cholesky variants (a warp's, a block's panels): same factor as the serial one, L
    mirrored above the diagonal, and an indefinite pivot — in the first panel, inside one, past the
    first — reported by every member alike (a member returning alone would deadlock a block)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "group_cholesky"
    out = subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", f"-I{CSRC}", str(HERE / "cpp" / "group_cholesky.cpp"),
                          "-o", str(exe)], capture_output=True, text=True)
    if out.returncode != 0 and ("barrier" in out.stderr or "c++20" in out.stderr):
        pytest.skip("compiler without C++20 <barrier>")
    assert out.returncode == 0, out.stderr
    lines = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")
    rows = [ln.split() for ln in lines if ln.strip()]
    assert len(rows) == 3 * 21
    for n, bad, S, L, ser, grp, uniform, diff, mirror in rows:
        assert uniform == "1", (n, bad, S, L)
        assert ser == grp == ("1" if bad == "-1" else "0"), (n, bad, S, L, ser, grp)
        assert float(diff) < 1e-12 and float(mirror) == 0.0, (n, bad, S, L, diff, mirror)
