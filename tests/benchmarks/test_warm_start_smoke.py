"""Smoke test: benchmarks/warm_start.py --quick runs and prints both parts (the benchmark itself
is never a timing assertion)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_warm_start_benchmark_quick_runs():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "warm_start.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "perturbed batches" in out.stdout and "grasp loop" in out.stdout
    # Every timed row reports a ratio and the warm-vs-cold difference at rounding level.
    rows = [line for line in out.stdout.splitlines() if line.startswith(("B=8 ", "native ", "torch "))
            and line.split()[-2][-1].isdigit()]
    assert len(rows) >= 2, out.stdout
    for line in rows:
        assert float(line.split()[-1]) < 1e-6, line
