"""Smoke test of benchmarks/compare_qp.py: it runs, and prints a real optlayers row.

Needs no peer installed (``--only optlayers-torch``); asserts nothing about speed.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "compare_qp.py"


def test_compare_qp_quick_runs_and_reports_optlayers(tmp_path):
    out_json = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--sizes", "0", "--only", "optlayers-torch",
         "--json", str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("optlayers-torch")]
    assert rows, proc.stdout
    assert "skipped" not in rows[0], rows[0]
    assert "B=1, n=10, m=10, p=3" in proc.stdout

    (block,) = json.loads(out_json.read_text())["sizes"]
    (row,) = block["results"]
    assert row["name"] == "optlayers-torch" and "skipped" not in row
    assert row["fwd_s"] > 0 and row["fwdbwd_s"] > 0
    # The benchmark's independent reference (active-set KKT at the planted solution) and our
    # solver must agree; this also guards the reference itself.
    assert row["x_err"] < 1e-8
    assert set(row["grad_rel_err"]) == {"Q", "q", "G", "h", "A", "b"}
    assert max(row["grad_rel_err"].values()) < 1e-6
