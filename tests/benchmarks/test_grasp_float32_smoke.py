"""Smoke test of benchmarks/grasp_float32.py (float32 robustness count per dense backend)."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grasp_float32.py"


def test_grasp_float32_counts_every_problem_once_per_backend():
    out = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [re.match(r"\s*([\w-]+): (\d+) of (\d+) float32 grasp QPs unsolved", line) for line in out.stdout.splitlines()]
    rows = [r for r in rows if r]
    assert rows and rows[0].group(1) == "torch"
    for r in rows:
        unsolved, total = int(r.group(2)), int(r.group(3))
        assert total == 2 * 128 * 6  # two objects × 128 grasps × 6 wrenches
        assert 0 <= unsolved <= total // 20  # a broken backend (most problems failing) shows here
