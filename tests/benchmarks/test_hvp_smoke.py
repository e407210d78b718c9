"""Smoke test of benchmarks/hvp.py: it runs on a tiny size and prints both backends."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_hvp_benchmark_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hvp.py"), "--repeat", "1", "--sizes", "4x5x6x1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "native" in proc.stdout and "torch" in proc.stdout
