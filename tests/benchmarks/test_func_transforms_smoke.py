"""Smoke test of benchmarks/func_transforms.py: it runs (its Jacobians are checked inside)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_func_transforms_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "func_transforms.py"), "--B", "3", "--n", "4",
                           "--repeat", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "jacrev of x" in proc.stdout and "vmap(jacrev)" in proc.stdout
