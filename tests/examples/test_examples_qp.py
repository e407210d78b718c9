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


def test_inverse_qp_newton_quick_converges(tmp_path):
    import os

    out = tmp_path / "inv.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "inverse_qp_newton.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines() if ln.startswith(("Gauss", "Adam"))}
    gn_loss, adam_loss = float(rows["Gauss–Newton"][3]), float(rows["Adam"][4])
    assert gn_loss < 1e-6 and gn_loss < 1e-3 * adam_loss, proc.stdout  # exact Jacobians pay
    assert "largest eigenvalue" in proc.stdout and out.exists() and out.stat().st_size > 1000
