"""benchmarks/grasp_qp.py's accuracy columns: the reference row (for x diff, dq diff) must be feasible.

A row whose x violates a constraint can have a lower objective than every feasible one; it used to
become the reference (moreau at K = 5, viol 5e-7), making the accurate rows look 3e-6 off.
"""

import importlib.util
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("grasp_qp_bench", ROOT / "benchmarks" / "grasp_qp.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_reference_row_is_feasible():
    gq = _module()
    # min ½‖x‖² − x₀ s.t. x₀ ≤ 0.5: x* = (0.5, 0), f* = −0.375.
    Q, q = torch.eye(2, dtype=torch.float64).expand(3, 2, 2), torch.tensor([[-1.0, 0.0]] * 3, dtype=torch.float64)
    G, h = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    exact = torch.tensor([[0.5, 0.0]] * 3, dtype=torch.float64)
    cheat = exact + torch.tensor([1e-6, 0.0], dtype=torch.float64)  # infeasible by 1e-6, lower objective
    rows = []
    for name, x, ours in (("peer", cheat, False), ("optlayers-native", exact, True)):
        viol = float((x @ G.T - h).clamp_min(0).max())
        rows.append({"name": name, "ours": ours, "value": False, "_x": x, "_gq": x.clone(), "viol": viol})
    gq.compare_to_reference(rows, Q, q, G, h)
    ref = [r for r in rows if r.get("reference")]
    assert [r["name"] for r in ref] == ["optlayers-native"]
    assert rows[1]["x_diff"] == 0.0 and abs(rows[0]["x_diff"] - 1e-6) < 1e-12
