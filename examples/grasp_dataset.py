"""Generate a grasp dataset, sharded over processes with ``torch.distributed``.

Every rank builds the same seeded initial batch of ``--grasps`` grasps, keeps its contiguous
shard (``torch.tensor_split`` order), optimizes it with the bilevel grasp-synthesis loop of
``grasp_synthesis.py`` (Adam on the contacts; lower level = one contact-force QP per grasp and
target wrench, G/h shared), evaluates the 12-wrench force-closure test on the result, and the
shards are gathered (``all_gather`` of padded tensors: works on gloo and NCCL) into one file
written by rank 0:

    z (N, K, 3) contact directions     points, normals (N, K, 3)
    energy (N,) final mean energy      closure (N,) bool: 12-wrench force closure
    max_residual (N,)                  forces (N, 12, 3K): contact forces for the 12 test wrenches
    plus the config, object, seed, steps, world size and backend.

Each grasp's optimization is independent of the others (the loss is a sum over grasps and Adam
is elementwise), so the sharded file equals the single-process one for the same seed
(``tests/distributed/test_distributed_grasp.py`` checks it).

Run (from the repository root):

    python examples/grasp_dataset.py --out grasps.pt                               # one process
    torchrun --nproc_per_node 2 examples/grasp_dataset.py --out grasps.pt         # 2 CPU ranks (gloo)
    torchrun --nproc_per_node 8 examples/grasp_dataset.py --device cuda --grasps 80000 --out grasps.pt  # NCCL
    python examples/grasp_dataset.py --quick --out /tmp/g.npz                      # CI; .npz also works

Output: ``.pt`` (``torch.save`` of a dict) or ``.npz`` (numpy arrays + ``meta_json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grasp_model as gm  # noqa: E402

import optlayers as ol  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--object", default="box", choices=sorted(gm.OBJECTS))
    ap.add_argument("--grasps", type=int, default=256, help="total grasps (all ranks)")
    ap.add_argument("--contacts", type=int, default=4)
    ap.add_argument("--facets", type=int, default=8)
    ap.add_argument("--mu", type=float, default=0.5)
    ap.add_argument("--wrenches", type=int, default=12, choices=(6, 12))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--grad", choices=("envelope", "implicit"), default="envelope")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="CI: 12 grasps, 5 steps")
    ap.add_argument("--out", default="grasps.pt", help=".pt or .npz")
    args = ap.parse_args(argv)
    if args.quick:
        args.grasps, args.steps = 12, 5
    if not args.out.endswith((".pt", ".npz")):
        ap.error("--out must end in .pt or .npz")
    return args


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Without torchrun's environment: one process, no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    rank = int(os.environ["RANK"])
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    # Ranks share the CPU cores: give each its part of them (the native kernel uses torch's pool).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return rank, world, torch.device("cpu")


def gather(t: torch.Tensor, sizes: list[int], world: int) -> torch.Tensor:
    """Concatenate every rank's shard (first dim ``sizes[r]``) in rank order, on every rank."""
    if world == 1:
        return t
    big = max(sizes)
    pad = t.new_zeros((big - t.shape[0],) + t.shape[1:])
    buf = [t.new_empty((big,) + t.shape[1:]) for _ in range(world)]
    dist.all_gather(buf, torch.cat([t, pad]).contiguous())
    return torch.cat([b[:s] for b, s in zip(buf, sizes)])


def main(argv=None) -> None:
    args = parse_args(argv)
    rank, world, device = setup_distributed(args.device)
    cfg = gm.GraspConfig(contacts=args.contacts, facets=args.facets, mu=args.mu, wrenches=args.wrenches)
    obj = gm.OBJECTS[args.object]

    z_all = gm.initial_contacts(args.grasps, cfg, args.seed)        # same on every rank (CPU generator)
    shards = torch.arange(args.grasps).tensor_split(world)
    sizes = [len(s) for s in shards]
    idx = shards[rank]
    z0 = z_all[idx].to(device)
    log = print if rank == 0 else (lambda *a, **k: None)
    log(f"grasp dataset: {args.grasps} grasps of a {args.object} over {world} rank(s) "
        f"(shards {sizes}), {args.steps} steps, {cfg.wrenches} wrenches, device {device}")

    failed = [0]
    final = {}

    def callback(step, ev, seconds):
        failed[0] += ev.failed
        final["energy"] = ev.energy  # the last call evaluates the optimized grasps
        if rank == 0 and (step % 10 == 0 or step == args.steps):
            print(f"  rank 0 step {step:4d}: energy {float(ev.energy.mean()):.5f}, "
                  f"closure {100 * float(ev.closure.double().mean()):.1f}%, {ev.qps / seconds:.0f} QPs/s", flush=True)

    t0 = time.perf_counter()
    if len(idx):
        z = gm.optimize(z0, obj, cfg, steps=args.steps, lr=args.lr, method=args.grad, backend=args.backend,
                        callback=callback)
        with torch.no_grad():
            G, h = gm.friction_constraints(cfg, dtype=z.dtype, device=z.device)
            w12 = gm.target_wrenches(12, dtype=z.dtype, device=z.device)
            energy = final["energy"]
            p, n = obj.surface(z)
            low = gm.lower_level(gm.grasp_map(p, n, obj.length), w12, G, h, cfg, backend=args.backend)
            max_res = low.residual.amax(-1)
            closure = max_res <= cfg.tau
            forces = low.forces
    else:  # more ranks than grasps: an empty shard still joins the collectives
        z = z0
        p = n = z0.new_zeros(0, cfg.contacts, 3)
        energy = max_res = z0.new_zeros(0)
        closure = torch.zeros(0, dtype=torch.bool, device=device)
        forces = z0.new_zeros(0, 12, cfg.n)
    seconds = time.perf_counter() - t0

    fields = {"z": z, "points": p, "normals": n, "energy": energy, "max_residual": max_res,
              "closure": closure.to(torch.uint8), "forces": forces}
    out = {k: gather(v.contiguous(), sizes, world).cpu() for k, v in fields.items()}
    out["closure"] = out["closure"].bool()
    stats = torch.tensor([float(failed[0]), seconds], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(stats[:1])                                      # failed QPs: total
        stats_t = stats[1:].clone()
        dist.all_reduce(stats_t, op=dist.ReduceOp.MAX)                  # wall time: slowest rank
        stats[1:] = stats_t
    meta = {"object": args.object, "config": dataclasses.asdict(cfg), "seed": args.seed, "steps": args.steps,
            "lr": args.lr, "grad": args.grad, "world_size": world, "backend": args.backend,
            "failed_qps": int(stats[0]), "seconds": float(stats[1]), "optlayers": ol.__version__}
    if rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        if args.out.endswith(".npz"):
            import numpy as np

            np.savez(args.out, meta_json=json.dumps(meta), **{k: v.numpy() for k, v in out.items()})
        else:
            torch.save({**out, "meta": meta}, args.out)
        qps = args.grasps * cfg.wrenches * (args.steps + 1)
        print(f"force closure (12 wrenches): {100 * float(out['closure'].double().mean()):.1f}% of {args.grasps}; "
              f"mean energy {float(out['energy'].mean()):.5f}; failed QPs {meta['failed_qps']}; "
              f"{meta['seconds']:.1f} s ({qps / meta['seconds']:.0f} QPs/s over {world} rank(s))")
        print(f"saved {args.out}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
