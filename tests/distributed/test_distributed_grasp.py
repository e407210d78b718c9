"""Scale-out across processes (issue #7), 2 CPU processes over gloo on 127.0.0.1.

1. ``examples/grasp_dataset.py`` sharded over 2 ranks (``torchrun``) writes exactly the file the
   single-process run writes for the same seed (bitwise: every grasp's optimization is
   independent of the batch it is in).
2. A model containing a ``QPLayer`` (learnable shared Q factor, G and h, per-sample q from a
   linear layer) trains under ``DistributedDataParallel``: gradients and parameters match
   single-process training on the full batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

import optlayers as ol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
F64 = torch.float64
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _native_built():
    """Build/load the native kernel once here, so the worker processes only load the cache."""
    from optlayers._src.native.backend import native_status

    native_status()


# gloo can abort a process at exit after its work is done ("terminate called without an active
# exception", SIGABRT, from a transport thread still joinable when the process group is torn down;
# seen in 2 of ~15 full runs on this 2-core machine under load, once in each test below, with a
# barrier before destroy_process_group). Both tests retry once on exactly that signature: the
# results they check are then recomputed from scratch, so a retry cannot hide a wrong result.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


# ----------------------------------------------------------------------------- sharded dataset


def test_sharded_grasp_dataset_equals_single_process(tmp_path):
    script = os.path.join(ROOT, "examples", "grasp_dataset.py")
    common = ["--quick", "--object", "box", "--seed", "3"]
    single = tmp_path / "single.npz"
    sharded = tmp_path / "sharded.pt"
    # The single-process reference runs in this process (WORLD_SIZE unset: no process group).
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import grasp_dataset

    os.environ.pop("WORLD_SIZE", None)
    threads = torch.get_num_threads()
    try:
        grasp_dataset.main([*common, "--out", str(single)])
    finally:
        torch.set_num_threads(threads)
    for attempt in range(2):
        p2 = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), script, *common, "--out", str(sharded)],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=str(tmp_path),
        )
        if p2.returncode == 0 or GLOO_TEARDOWN_ABORT not in p2.stdout + p2.stderr:
            break
        sharded.unlink(missing_ok=True)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert "shards [6, 6]" in p2.stdout

    a = np.load(single)
    b = torch.load(sharded)
    meta_a, meta_b = json.loads(str(a["meta_json"])), b["meta"]
    assert meta_a["world_size"] == 1 and meta_b["world_size"] == 2
    assert meta_a["config"] == meta_b["config"] and meta_a["failed_qps"] == meta_b["failed_qps"] == 0
    for key in ("z", "points", "normals", "energy", "max_residual", "closure", "forces"):
        ref = torch.from_numpy(a[key])
        assert b[key].shape == ref.shape, key
        assert torch.equal(b[key], ref), f"{key}: max diff {(b[key].double() - ref.double()).abs().max()}"
    assert b["z"].shape == (12, 4, 3)


# ----------------------------------------------------------------------------- DDP + QPLayer

N_SAMPLES, D_IN, N_VAR, M_INEQ, STEPS, LR = 16, 5, 6, 8, 3, 0.05


class QPNet(torch.nn.Module):
    """x ↦ argmin_z ½zᵀ(LLᵀ + 0.1 I)z + (Wx)ᵀz  s.t.  Gz ≤ h, with L, G, h learnable and shared."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.enc = torch.nn.Linear(D_IN, N_VAR).double()
        with torch.no_grad():
            self.enc.weight.copy_(torch.randn(N_VAR, D_IN, generator=gen, dtype=F64))
            self.enc.bias.copy_(torch.randn(N_VAR, generator=gen, dtype=F64))
        self.L = torch.nn.Parameter(torch.eye(N_VAR, dtype=F64) + 0.1 * torch.randn(N_VAR, N_VAR, generator=gen, dtype=F64))
        self.G = torch.nn.Parameter(torch.randn(M_INEQ, N_VAR, generator=gen, dtype=F64))
        self.h = torch.nn.Parameter(0.5 + torch.rand(M_INEQ, generator=gen, dtype=F64))
        self.qp = ol.QPLayer()

    def forward(self, x):
        Q = self.L @ self.L.T + 0.1 * torch.eye(N_VAR, dtype=F64)
        return self.qp(Q, self.enc(x), self.G, self.h)  # Q, G, h shared by the batch


def _data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N_SAMPLES, D_IN, generator=gen, dtype=F64)
    y = torch.randn(N_SAMPLES, N_VAR, generator=gen, dtype=F64)
    return x, y


def _train(model, x, y, step_fn=None):
    """SGD for STEPS steps on MSE; returns the gradients of the first step and the final parameters."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    first = None
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if first is None:
            first = {k: p.grad.detach().clone() for k, p in _named(model)}
        opt.step()
    return first, {k: p.detach().clone() for k, p in _named(model)}


def _named(model):
    m = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return list(m.named_parameters())


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(QPNet())
        x, y = _data()
        shard = torch.arange(N_SAMPLES).tensor_split(world)[rank]
        grads, params = _train(model, x[shard], y[shard])
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks done before either tears down its gloo connections: without it a rank that
        # left first once made the other abort in teardown ("terminate called without an active
        # exception", SIGABRT; seen once, in a clean-clone CI run of the tenth session).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_ddp_workers(world: int, tmp_path) -> None:
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(_ddp_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world,
                             join=False, start_method="spawn")
    t_end = time.monotonic() + TIMEOUT_S
    while time.monotonic() < t_end:
        if ctx.join(timeout=1):
            return
    for p in ctx.processes:
        if p.is_alive():
            p.terminate()
    pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")


def test_qplayer_trains_under_ddp_like_single_process(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    for attempt in range(2):
        try:
            _run_ddp_workers(world, tmp_path)
            break
        except mp.ProcessExitedException as err:  # SIGABRT in gloo's teardown (see above): once more
            if attempt or err.signal_name != "SIGABRT":
                raise
            for rank in range(world):
                (tmp_path / f"rank{rank}.pt").unlink(missing_ok=True)

    x, y = _data()
    ref_grads, ref_params = _train(QPNet(), x, y)  # full batch, one process: mean loss over 16
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got["grads"]) == set(ref_grads) == {"enc.weight", "enc.bias", "L", "G", "h"}
        for k in ref_grads:
            # DDP averages the two half-batch gradients = the full-batch gradient (up to rounding).
            torch.testing.assert_close(got["grads"][k], ref_grads[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"grad {k}: {m}")
            torch.testing.assert_close(got["params"][k], ref_params[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"param {k}: {m}")
        assert ref_grads["G"].abs().max() > 0 and ref_grads["h"].abs().max() > 0  # constraints active
