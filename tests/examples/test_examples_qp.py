"""The main demo (README quick start) runs in its --quick mode and learns something."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_quick_runs_and_qp_model_learns():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [l for l in lines if l.strip()[:1].isdigit() and "|" in l]
    first, last = (float(r.split("|")[1]) for r in (rows[0], rows[-1]))
    assert last < 0.5 * first, out.stdout  # the QP-layer model's test MSE drops
    assert "max |1ᵀx − 1|" in out.stdout and "result:" in out.stdout
