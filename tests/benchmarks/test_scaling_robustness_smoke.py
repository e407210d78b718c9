"""Smoke test of benchmarks/scaling_robustness.py: it runs and our dense backend gets every case right."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_scaling_robustness_runs_and_optlayers_gets_every_case_right():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling_robustness.py"), "--only",
                           "optlayers-torch", "--B", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(k for k, ln in enumerate(lines) if ln.startswith("case"))
    rows = {ln[:22].strip(): ln[22:].split() for ln in lines[header + 1:] if ln.strip()}
    assert len(rows) == 17, rows
    for label, cells in rows.items():
        assert cells[0] == "4/4", (label, cells)


def test_scaling_fuzz_runs_and_float64_is_never_solved_but_off():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling_robustness.py"), "--fuzz", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "float64: 48 problems, 0 SOLVED but off by > 1e-07, 0 with a solution not SOLVED" in proc.stdout, proc.stdout
