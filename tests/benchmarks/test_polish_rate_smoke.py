"""Smoke test of benchmarks/polish_rate.py (grasp QPs left at the interior-point solution, per path)."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "polish_rate.py"


def test_polish_rate_counts_every_problem_once_per_path():
    out = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "1", "--grasps", "64", "--paths", "torch,native"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [re.match(r"([\w-]+)\s+([\d,]+)\s+(\d+)\s+(\d+)\s+([\d.e+-]+)\s+([\d.]+)$", line)
            for line in out.stdout.splitlines()]
    rows = [r for r in rows if r]
    assert [r.group(1) for r in rows] in (["torch", "native"], ["torch"])  # native: skipped when not built
    for r in rows:
        qps, unpolished, unsolved = int(r.group(2).replace(",", "")), int(r.group(3)), int(r.group(4))
        stationarity, iters = float(r.group(5)), float(r.group(6))
        assert qps == 2 * 2 * 64 * 6  # two objects × K = 4, 5 × 64 grasps × 6 wrenches
        # This seed's 64 box grasps include the problem the polish's join rule is for
        # (tests/qp/test_qp_active_set.py): it must be polished like the rest.
        assert unpolished == 0 and unsolved == 0
        assert stationarity < 1e-9 and 3 < iters < 20
