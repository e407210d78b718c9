"""The sparse MPC example runs in its --quick mode, learns, and writes its plot."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sparse_mpc_quick(tmp_path):
    pytest.importorskip("osqp")
    pytest.importorskip("matplotlib")
    out = tmp_path / "sparse_mpc.png"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "sparse_mpc.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.exists() and out.stat().st_size > 1000
    assert "saved" in proc.stdout
    # Learning happened: the imitation loss fell by at least two orders of magnitude.
    factor = float(re.search(r"\(([0-9.e+]+)x lower\)", proc.stdout).group(1))
    assert factor > 100, proc.stdout
    # The long-horizon problem really is large and sparse (n = 500 in quick mode).
    assert "n = 500 variables" in proc.stdout
