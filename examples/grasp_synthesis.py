"""Bilevel grasp synthesis: thousands of contact-force QPs per step, differentiated exactly.

Lower level (per grasp g and target wrench w_j; see ``grasp_model.py`` for the full model):

    E_gj = min_f  ½‖W_g f − w_j‖² + (ε/2)‖f‖²   s.t.  friction pyramids (F facets, μ),
                                                      0 ≤ f_n ≤ f_max,  Σ f_n ≥ f_min

a QP in the 3K contact forces with Q = WᵀW + εI per grasp, q = −Wᵀw_j per grasp and wrench,
and one constraint matrix G, h (in the contact frames) shared by the whole batch.

Upper level (per grasp, for a batch of grasps at once, Adam on the contact directions z):

    min_z   mean_j E_gj(z)  +  Σ_{k<l} relu(d_min·L − ‖p_k − p_l‖)²

The gradient of E w.r.t. the contacts reaches Adam one of two ways (``--grad``):
  envelope  ``ol.qp_value``: ∇_Q E = ½ f fᵀ, ∇_q E = f (the envelope theorem, no linear solve);
  implicit  ``ol.solve_qp`` + E = ½fᵀQf + qᵀf: the implicit KKT derivative of f (one KKT solve).
They agree, and agree with finite differences: the script checks this on two grasps per object
before optimizing (``--no-check`` skips it), and ``tests/examples/test_examples_grasp.py``
asserts it.

Printed per step (progress bar, plus a line every ``--log-every`` steps): mean energy, fraction
of grasps that resist every target wrench (residual ‖Wf* − w_j‖ ≤ τ for all j — with the default
12 wrenches ±unit forces and ±unit torques this is the force-closure test), QPs solved per second
(the whole step: model, QP solves, backward and Adam), and failed QPs (excluded from the energy).
The PNG shows initial vs optimized grasps on each object and the energy / closure curves.

Run (from the repository root):

    python examples/grasp_synthesis.py                 # 400 grasps × 12 wrenches = 4,800 QPs/step
    python examples/grasp_synthesis.py --quick         # CI: 16 grasps, 8 steps, seconds
    python examples/grasp_synthesis.py --objects box --grasps 800 --wrenches 6 --grad implicit
    python examples/grasp_synthesis.py --quick --warm-start   # QPs start from the last step's active sets
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grasp_model as gm  # noqa: E402

import optlayers as ol  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", default="ellipsoid,box", help=f"comma-separated, from {sorted(gm.OBJECTS)}")
    ap.add_argument("--grasps", type=int, default=400, help="grasps optimized at once per object")
    ap.add_argument("--contacts", type=int, default=4, help="K contacts per grasp")
    ap.add_argument("--facets", type=int, default=8, help="F facets of each friction pyramid")
    ap.add_argument("--mu", type=float, default=0.5, help="friction coefficient")
    ap.add_argument("--wrenches", type=int, default=12, choices=(6, 12), help="target wrenches: 6 forces, 12 = + torques")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--grad", choices=("envelope", "implicit"), default="envelope")
    ap.add_argument("--backend", default="auto", help="optlayers QP backend (auto = native kernel when built)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--no-check", action="store_true", help="skip the 3-way gradient check")
    ap.add_argument("--warm-start", action="store_true",
                    help="start each step's QPs from the previous step's active sets (ol.solve_qp warm_start)")
    ap.add_argument("--quick", action="store_true", help="short CI run: 16 grasps, 8 steps")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "grasp_synthesis.png"))
    args = ap.parse_args(argv)
    if args.quick:
        args.grasps, args.steps, args.log_every = 16, 8, 4
    args.objects = [o.strip() for o in args.objects.split(",") if o.strip()]
    unknown = [o for o in args.objects if o not in gm.OBJECTS]
    if unknown:
        ap.error(f"unknown object(s) {unknown}; choose from {sorted(gm.OBJECTS)}")
    return args


def progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm

        # disable=None: no bar when stdout is not a terminal (CI logs keep the per-step lines).
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stdout, disable=None)
    except ImportError:  # the example still runs without tqdm, just without a bar
        return None


def run_object(name: str, cfg: gm.GraspConfig, args, check: bool) -> dict:
    obj = gm.OBJECTS[name]
    if check:
        check_cfg = dataclasses.replace(cfg, tol=1e-11)  # tight solves so finite differences resolve
        z_chk = gm.initial_contacts(1 if args.quick else 2, cfg, args.seed + 12)
        errs = gm.gradient_agreement(z_chk, obj, check_cfg, backend=args.backend, fd_step=1e-5)
        print(f"[{name}] gradient check on {z_chk.shape[0]} grasp(s) (dE/dz, {z_chk.numel()} entries): "
              f"implicit vs envelope {errs['implicit_vs_envelope']:.1e}, "
              f"envelope vs finite differences {errs['envelope_vs_fd']:.1e}, "
              f"implicit vs finite differences {errs['implicit_vs_fd']:.1e}")

    z0 = gm.initial_contacts(args.grasps, cfg, args.seed)
    history = {"energy": [], "closure": [], "qps_per_s": [], "failed": []}
    bar = progress(args.steps, f"{name} ({args.grasps}×{cfg.wrenches} QPs/step)")

    def callback(step, ev, seconds):
        e = float(ev.energy.mean())
        c = float(ev.closure.double().mean())
        rate = ev.qps / seconds
        for k, v in zip(history, (e, c, rate, ev.failed)):
            history[k].append(v)
        line = f"[{name}] step {step:4d}  energy {e:.5f}  closure {100 * c:5.1f}%  {rate:8.0f} QPs/s  failed QPs {ev.failed}"
        if args.warm_start:
            line += f"  warm-finished {ev.warm}"
        if bar is not None:
            if step < args.steps:
                bar.update(1)
            bar.set_postfix(E=f"{e:.4f}", closure=f"{100 * c:.0f}%", qps=f"{rate:.0f}/s")
        if step % args.log_every == 0 or step == args.steps:
            (bar.write if bar is not None else print)(line)

    t0 = time.perf_counter()
    z = gm.optimize(z0, obj, cfg, steps=args.steps, lr=args.lr, method=args.grad, backend=args.backend,
                    callback=callback, warm_start=args.warm_start)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    fc0, _ = gm.force_closure(z0, obj, cfg, backend=args.backend)
    fc1, _ = gm.force_closure(z, obj, cfg, backend=args.backend)
    total_qps = (args.steps + 1) * args.grasps * cfg.wrenches
    print(f"[{name}] {args.steps} steps in {wall:.1f} s ({total_qps / wall:.0f} QPs/s, "
          f"{total_qps / cfg.wrenches / wall:.0f} grasp evaluations/s); energy {history['energy'][0]:.5f} -> "
          f"{history['energy'][-1]:.5f}; 12-wrench force closure {100 * float(fc0.double().mean()):.1f}% -> "
          f"{100 * float(fc1.double().mean()):.1f}%; failed QPs over the run: {sum(history['failed'])}")
    return {"obj": obj, "z0": z0, "z": z, "history": history, "fc0": fc0, "fc1": fc1}


def plot(results: dict, cfg: gm.GraspConfig, path: str, shown: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results)
    fig = plt.figure(figsize=(15, 4.6 * rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    th, ph = torch.meshgrid(torch.linspace(0, math.pi, 13, dtype=gm.DTYPE),
                            torch.linspace(0, 2 * math.pi, 25, dtype=gm.DTYPE), indexing="ij")
    dirs = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1)
    for r, (name, res) in enumerate(results.items()):
        obj = res["obj"]
        surf, _ = obj.surface(dirs)
        for c, (key, title, fc) in enumerate((("z0", "initial", res["fc0"]), ("z", "optimized", res["fc1"]))):
            ax = fig.add_subplot(rows, 3, 3 * r + c + 1, projection="3d")
            ax.plot_wireframe(*(surf[..., i].numpy() for i in range(3)), color="0.75", linewidth=0.4)
            p, n = obj.surface(res[key][:shown])
            for g in range(p.shape[0]):
                pts = p[g].numpy()
                nn = n[g].numpy()
                col = colors[g % len(colors)]
                loop = pts[list(range(len(pts))) + [0]]
                ax.plot(*loop.T, color=col, linewidth=0.8, alpha=0.6)  # links the contacts of one grasp
                ax.scatter(*pts.T, color=col, s=45, depthshade=False)
                ax.quiver(*pts.T, *(0.3 * nn).T, color=col, linewidth=1.5)
            lim = max(obj.semi_axes)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_zlim(-lim, lim)
            ax.set_box_aspect((1, 1, 1))
            ax.set_xticklabels([])
            ax.set_yticklabels([])
            ax.set_zticklabels([])
            frac = 100 * float(fc.double().mean())
            ax.set_title(f"{name}: {title} grasps (first {shown}; arrows = inward normals)\n"
                         f"force closure (12 wrenches) {frac:.1f}% of {fc.numel()}", fontsize=9)
        ax = fig.add_subplot(rows, 3, 3 * r + 3)
        hist = res["history"]
        ax.semilogy(hist["energy"], color=colors[0], label="mean energy")
        ax.set_xlabel("Adam step")
        ax.set_ylabel("mean lower-level energy", color=colors[0])
        ax2 = ax.twinx()
        ax2.plot([100 * c for c in hist["closure"]], color=colors[1], label="resist all targets")
        ax2.set_ylabel(f"% grasps resisting all {cfg.wrenches} target wrenches", color=colors[1])
        ax2.set_ylim(0, 100)
        ax.set_title(f"{name}: energy and closure", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.94, bottom=0.08, top=0.92, wspace=0.25, hspace=0.25)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = gm.GraspConfig(contacts=args.contacts, facets=args.facets, mu=args.mu, wrenches=args.wrenches)
    probe = gm.friction_constraints(cfg)
    used = ol.solve_qp(torch.eye(cfg.n, dtype=gm.DTYPE), torch.zeros(cfg.n, dtype=gm.DTYPE), *probe,
                       backend=args.backend, return_solution=True).backend
    print(f"grasp synthesis: {args.grasps} grasps × {cfg.wrenches} wrenches = {args.grasps * cfg.wrenches} QPs per step "
          f"(n = {cfg.n}, m = {cfg.m}, G/h shared: {tuple(probe[0].shape)}), K = {cfg.contacts}, F = {cfg.facets}, "
          f"μ = {cfg.mu}, gradient: {args.grad}, backend: {used}, torch threads {torch.get_num_threads()}")
    # The gradient check runs on every object (only the first one with --quick).
    results = {
        name: run_object(name, cfg, args, check=not args.no_check and (i == 0 or not args.quick))
        for i, name in enumerate(args.objects)
    }
    plot(results, cfg, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
