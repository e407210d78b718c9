"""Smoke test of benchmarks/hard_qps.py: it runs, and our dense backends get every family right
(float64 and float32), with no false certificate."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_hard_qps_runs_and_optlayers_gets_every_family_right():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hard_qps.py"), "--only", "optlayers-torch",
                           "--B", "8", "--seeds", "1", "--float32"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {ln.split()[0]: ln.split()[1:] for ln in proc.stdout.splitlines() if ln.startswith("optlayers-torch")}
    assert rows["optlayers-torch"] == ["8/0/0/0"] * 5 + ["0"], rows
    assert rows["optlayers-torch-f32"] == ["8/0/0/0"] * 4 + ["n/a", "0"], rows
