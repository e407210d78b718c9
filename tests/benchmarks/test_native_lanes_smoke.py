"""Smoke test of benchmarks/native_lanes.py (lanes vs serial native CPU paths, same run)."""

import subprocess
import sys
from pathlib import Path

import pytest

import optlayers as ol

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "native_lanes.py"


def test_native_lanes_quick_runs_and_agrees():
    ok, why = ol.native.status()
    if not ok:
        pytest.skip(f"native kernel unavailable: {why}")
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("B=")]
    assert len(rows) == 2
    for row in rows:
        lanes_ms, serial_ms, ratio, dx = (float(v) for v in row[-4:])
        assert lanes_ms > 0 and serial_ms > 0 and ratio > 0
        assert dx < 1e-9  # both paths reach the same solution
