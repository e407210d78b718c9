"""Smoke test of benchmarks/compare_sparse.py: it runs and prints a real optlayers row whose
solution agrees with the benchmark's own Clarabel reference. Asserts nothing about speed."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "compare_sparse.py"


def test_compare_sparse_quick_runs_and_reports_optlayers(tmp_path):
    pytest.importorskip("osqp")
    pytest.importorskip("clarabel")
    out_json = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--sizes", "200", "--only", "optlayers", "--json", str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| optlayers |")]
    assert rows, proc.stdout
    (block,) = json.loads(out_json.read_text())["sizes"]
    assert block["n"] == 200 and block["m"] == 100
    (row,) = block["results"]
    assert "skipped" not in row, row
    assert row["fwd_s"] > 0 and row["fwdbwd_s"] > 0
    assert row["x_err"] < 1e-8 and row["polished"]
