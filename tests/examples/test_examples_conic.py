"""The conic-layer examples run in their --quick mode, print their results and write their plot."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = {
    "markowitz_portfolio": ["two-stage (MSE)", "end-to-end", "oracle"],
    "tv_denoiser": ["best fixed λ", "learned λ(σ̂)"],
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_conic_example_quick(name, tmp_path):
    pytest.importorskip("cvxpy")
    pytest.importorskip("matplotlib")
    out = tmp_path / f"{name}.png"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.exists() and out.stat().st_size > 1000
    for label in EXAMPLES[name]:
        assert label in proc.stdout, proc.stdout
    assert "saved" in proc.stdout
