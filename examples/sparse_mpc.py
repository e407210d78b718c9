"""Learning the cost weights of a long-horizon linear MPC controller through a sparse QP layer.

A linear MPC controller plans T steps ahead by solving, for the current state x̄₀, the QP

    minimize   Σ_{t=1..T} ½ (x_t − r)ᵀ Q (x_t − r)  +  Σ_{t=0..T−1} ½ u_tᵀ R u_t
    subject to x_{t+1} = A x_t + B u_t   (t = 0 … T−1, x_0 = x̄₀)        (dynamics: equalities)
               −u_max ≤ u_t ≤ u_max                                      (two-sided input limits)

over z = (x_1 … x_T, u_0 … u_{T−1}). With a horizon of hundreds of steps this is a large, banded
sparse QP: n = T·(n_x + n_u) variables, about 4 nonzeros per row — far beyond a dense layer
(a dense KKT matrix for T = 300 has 9 million entries per problem), routine for OSQP.

The task (inverse optimal control): an expert runs this controller with unknown diagonal weights
Q* (R = 1 fixes the scale — the plan is invariant to scaling the whole cost). We observe its
plans from a few initial states and learn θ = log diag(Q) by minimizing the imitation loss
‖z(θ) − z_expert‖² with L-BFGS, differentiating *through the controller*: each evaluation solves
the batch of QPs with an ``ol.SparseQPLayer`` and backpropagates through the sparse implicit
derivative (one back-solve with the active-set KKT factorization per problem). Exact gradients
are what lets a quasi-Newton method recover the weights to many digits. P = blkdiag(Q ⊗ I, R ⊗ I)
is built from exp(θ) as a sparse COO tensor, so the gradient reaches θ through the stored
values of P and through q = −(I ⊗ Q) r.

System: two masses coupled by springs (x = positions p₁, p₂ and velocities v₁, v₂), a force on
the second mass, Euler-discretized with dt = 0.1.

Run ``python examples/sparse_mpc.py`` (``--quick`` for a short CI run, a few seconds); the
plot goes to ``--out`` (default ``examples/out/sparse_mpc.png``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import optlayers as ol

D = torch.float64
DT = 0.1
U_MAX = 1.0
R_WEIGHT = 1.0
TRUE_LOG_Q = np.log([10.0, 1.0, 0.3, 0.1])  # the expert's (hidden) state weights
# Reference state r: an equilibrium with mass 1 at 0.5 (mass 2 must sit at (k1 + k2)/k2 · 0.5,
# held there by a constant force).
SETPOINT = np.array([0.5, 0.5 * 1.6 / 0.6, 0.0, 0.0])


def dynamics():
    """Euler-discretized spring-mass chain: 4 states, 1 input."""
    k1, k2 = 1.0, 0.6
    Ac = np.array([
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [-(k1 + k2), k2, -0.1, 0],
        [k2, -k2, 0, -0.1],
    ], dtype=float)
    Bc = np.array([[0.0], [0.0], [0.0], [1.0]])
    return np.eye(4) + DT * Ac, DT * Bc


def mpc_structure(T: int):
    """Index pattern of the MPC QP (numpy), independent of the weights and of x̄₀.

    Variables: x_1 … x_T (T·n_x) then u_0 … u_{T−1} (T·n_u). Rows: T·n_x dynamics equalities,
    then T·n_u input limits.
    """
    Ad, Bd = dynamics()
    nx, nu = Bd.shape
    n = T * (nx + nu)
    xi = lambda t: t * nx  # noqa: E731  (offset of x_{t+1})
    ui = lambda t: T * nx + t * nu  # noqa: E731 (offset of u_t)
    rows, cols, vals = [], [], []
    for t in range(T):  # x_{t+1} − A x_t − B u_t = (A x̄₀ if t = 0 else 0)
        for i in range(nx):
            r = t * nx + i
            rows.append(r), cols.append(xi(t) + i), vals.append(1.0)
            if t > 0:
                for j in range(nx):
                    if Ad[i, j] != 0:
                        rows.append(r), cols.append(xi(t - 1) + j), vals.append(-Ad[i, j])
            for j in range(nu):
                if Bd[i, j] != 0:
                    rows.append(r), cols.append(ui(t) + j), vals.append(-Bd[i, j])
    m_dyn = T * nx
    for t in range(T):  # −u_max ≤ u_t ≤ u_max
        for j in range(nu):
            rows.append(m_dyn + t * nu + j), cols.append(ui(t) + j), vals.append(1.0)
    m = m_dyn + T * nu
    A = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals, dtype=D), (m, n), check_invariants=True).coalesce()
    return dict(T=T, nx=nx, nu=nu, n=n, m=m, m_dyn=m_dyn, A=A, Ad=Ad)


def mpc_data(log_q: torch.Tensor, x0: torch.Tensor, s: dict):
    """(P, q, A, l, u) of the MPC QPs for a batch of initial states x0 (B, n_x).

    P (shared by the batch) and q are differentiable functions of log_q."""
    T, nx, nu, n = s["T"], s["nx"], s["nu"], s["n"]
    qdiag = torch.exp(log_q)
    p_vals = torch.cat([qdiag.repeat(T), torch.full((T * nu,), R_WEIGHT, dtype=D)])
    diag = torch.arange(n)
    P = torch.sparse_coo_tensor(torch.stack([diag, diag]), p_vals, (n, n), check_invariants=False)
    r = torch.tensor(SETPOINT, dtype=D)
    q = torch.cat([-(qdiag * r).repeat(T), torch.zeros(T * nu, dtype=D)])
    B = x0.shape[0]
    rhs = torch.zeros(B, s["m_dyn"], dtype=D)
    rhs[:, :nx] = x0 @ torch.tensor(s["Ad"], dtype=D).T
    lim = torch.full((B, T * nu), U_MAX, dtype=D)
    lo = torch.cat([rhs, -lim], -1)
    up = torch.cat([rhs, lim], -1)
    return P, q, s["A"], lo, up


def positions(z: torch.Tensor, s: dict) -> torch.Tensor:
    """(B, T) position of the first mass along the plan."""
    return z[..., : s["T"] * s["nx"]].reshape(z.shape[:-1] + (s["T"], s["nx"]))[..., 0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run for CI (a few seconds)")
    parser.add_argument("--horizon", type=int, default=None, help="MPC horizon T (default 300, quick 100)")
    parser.add_argument("--steps", type=int, default=None, help="L-BFGS iterations (default 40, quick 20)")
    parser.add_argument("--batch", type=int, default=4, help="initial states observed")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "sparse_mpc.png"))
    args = parser.parse_args(argv)
    T = args.horizon or (100 if args.quick else 300)
    steps = args.steps or (20 if args.quick else 40)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    s = mpc_structure(T)
    x0 = torch.tensor(rng.uniform(-2, 2, (args.batch, s["nx"])), dtype=D)
    layer = ol.SparseQPLayer()  # OSQP at eps 1e-6, then the exact active-set polish
    nnz = s["A"]._nnz()
    print(f"MPC QP: horizon T = {T}, n = {s['n']} variables, m = {s['m']} rows "
          f"({s['m_dyn']} dynamics equalities + {s['m'] - s['m_dyn']} two-sided input limits), "
          f"nnz(A) = {nnz} ({nnz / s['m']:.1f} per row), batch of {args.batch} initial states")

    with torch.no_grad():
        z_expert = layer(*mpc_data(torch.tensor(TRUE_LOG_Q, dtype=D), x0, s))
    log_q = torch.zeros(s["nx"], dtype=D, requires_grad=True)  # start from Q = I
    with torch.no_grad():
        z_init = layer(*mpc_data(log_q, x0, s))
    opt = torch.optim.LBFGS([log_q], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15)
    losses, t_step = [], []

    def closure():
        t0 = time.perf_counter()
        opt.zero_grad()
        z = layer(*mpc_data(log_q, x0, s))
        loss = ((z - z_expert) ** 2).sum(-1).mean() / s["n"]
        loss.backward()
        t_step.append(time.perf_counter() - t0)
        losses.append(loss.item())
        k = len(losses) - 1
        if k % 5 == 0:
            print(f"evaluation {k:3d}  imitation loss {losses[-1]:.3e}  Q = {np.round(np.exp(log_q.detach().numpy()), 4)}  "
                  f"({t_step[-1] * 1e3:.0f} ms fwd+bwd for {args.batch} QPs)")
        return loss

    opt.step(closure)
    with torch.no_grad():
        z_learned = layer(*mpc_data(log_q, x0, s))
        final = float(((z_learned - z_expert) ** 2).sum(-1).mean() / s["n"])
    st = layer.cache.stats
    print(f"true Q    = {np.round(np.exp(TRUE_LOG_Q), 3)}")
    learned = np.exp(log_q.detach().numpy())
    print(f"learned Q = {np.round(learned, 3)}  (largest relative error {np.abs(learned / np.exp(TRUE_LOG_Q) - 1).max():.1e})")
    print(f"imitation loss {losses[0]:.3e} -> {final:.3e} ({losses[0] / max(final, 1e-300):.3g}x lower)")
    print(f"solver cache: {st.setups} OSQP set-ups for {st.solves} solves ({st.matrix_updates} value updates), "
          f"{st.factorizations} KKT factorizations; median fwd+bwd {np.median(t_step) * 1e3:.0f} ms per evaluation")
    if not final < losses[0]:
        print("ERROR: the imitation loss did not decrease")
        return 1

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].semilogy(losses, marker="o", ms=3)
    ax[0].set_xlabel("L-BFGS function/gradient evaluation")
    ax[0].set_ylabel("imitation loss")
    ax[0].set_title("learning MPC weights through the sparse QP layer")
    tt = np.arange(1, T + 1) * DT
    for name, z, style in (("expert", z_expert, "k-"), ("initial Q = I", z_init, "C1--"), ("learned", z_learned, "C0:")):
        ax[1].plot(tt, positions(z, s)[0].numpy(), style, label=name, lw=2 if name != "expert" else 3)
    ax[1].axhline(SETPOINT[0], color="0.6", lw=0.8)
    ax[1].set_xlabel("time [s]")
    ax[1].set_ylabel("position of mass 1 (planned)")
    ax[1].set_title(f"MPC plan, horizon {T} steps (n = {s['n']})")
    ax[1].legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
