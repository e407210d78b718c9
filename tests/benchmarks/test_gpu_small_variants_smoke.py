"""Smoke test of benchmarks/gpu_small_variants.py without a GPU: its per-case logic (variants,
sorted batch, polish off, profile parsing, preflight) runs on the host through the small kernel's
CPU emulation (OPTLAYERS_CPU_SMALL), with CUDA events replaced by a wall clock. The numbers mean
nothing here; that the script runs and reports every row does (a GPU session is too short to
debug it there)."""

import os
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "examples"))

from optlayers._src.native.backend import native_status  # noqa: E402

ok, why = native_status()
pytestmark = pytest.mark.skipif(not ok, reason=f"native kernel unavailable: {why}")


def test_gpu_small_variants_runs_on_the_host_emulation(monkeypatch, capsys):
    import grasp_qp as gq
    import gpu_small_variants as v

    monkeypatch.setattr(v, "timed", lambda fn, reps: (lambda t: (fn(), time.perf_counter() - t)[1] * 1e3)(
        time.perf_counter()))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setenv("OPTLAYERS_CPU_SMALL", "2")
    monkeypatch.setenv("OPTLAYERS_CPU_LANES", "0")
    Q, q, G, h, _ = gq.grasp_batch(gq.Cell(4, 96), 0, "box", "cpu")
    rows = v.run_case("g", "grasp 96 (host)", Q, q, G, h, 1)
    out = capsys.readouterr().out
    whats = [r["what"] for r in rows]
    assert whats[:2] == ["variant 0 (fused (default))", "variant 1 (staged)"], whats
    assert "default, batch sorted by iterations" in whats and "default, polish off" in whats
    assert "default, polish only at the end" in whats
    for r in rows[:2]:  # the host ignores the CUDA variant: same solution, nothing left over
        assert r["x_diff_vs_default"] == 0.0 and r["left"] == 0
    assert "iterations: mean" in out and "no profile line in stderr" in out  # no CUDA profile on the host
    assert v.profile_line("optlayers small profile: batch=4 setup=10 total=40 polish_calls=2") == {
        "batch": 4, "setup": 10, "total": 40, "polish_calls": 2}
