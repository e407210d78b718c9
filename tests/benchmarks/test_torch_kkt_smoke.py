"""Smoke test of benchmarks/torch_kkt.py (LU vs reduced Cholesky KKT factor of the torch backend, same run)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "torch_kkt.py"


def test_torch_kkt_quick_runs_and_both_factors_reach_the_planted_solution():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("B=")]
    assert len(rows) == 2
    for row in rows:
        f_lu, f_ch, r_f, b_lu, b_ch, r_b, e_lu, e_ch = (float(v) for v in row[-8:])
        assert min(f_lu, f_ch, b_lu, b_ch, r_f, r_b) > 0
        assert e_lu < 1e-9 and e_ch < 1e-9
