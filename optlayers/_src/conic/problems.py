"""Small, seeded, well-conditioned DPP problems of every cone class (tests, benchmark, examples).

Each builder returns a :class:`ProblemCase`: the CVXPY problem, its parameters, what to return,
and ``sample(rng, batch)`` drawing parameter values — with a leading batch dimension for the
parameters listed in ``batched`` when ``batch`` is given. The problems are strongly convex or
have unique, strictly complementary solutions for the sampled data, so their solution maps are
differentiable there (what gradient checks need).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class ProblemCase:
    """A parametrized CVXPY problem with a sampler for its parameter values.

    ``sample(rng, batch=None)`` returns one array per parameter (float64): the parameter's shape,
    or ``(batch, *shape)`` for the parameters whose flag in ``batched`` is True. ``draw(rng,
    given)`` draws one problem; ``given[i]`` (if not None) fixes parameter i (the shared ones),
    and the others are drawn consistently with it (e.g. a feasible right-hand side).
    """

    name: str
    problem: Any
    parameters: list
    variables: list
    draw: Callable[[np.random.Generator, list], list[np.ndarray]]
    batched: tuple[bool, ...]
    gp: bool = False

    def sample(self, rng: np.random.Generator, batch: int | None = None) -> list[np.ndarray]:
        if batch is None:
            return self.draw(rng, [None] * len(self.parameters))
        shared = self.draw(rng, [None] * len(self.parameters))
        given = [None if b else v for v, b in zip(shared, self.batched)]
        per = [self.draw(rng, given) for _ in range(batch)]
        return [np.stack([p[i] for p in per]) if b else shared[i] for i, b in enumerate(self.batched)]


def _pick(given, i, make):
    return given[i] if given[i] is not None else make()


def _cp():
    import cvxpy as cp

    return cp


def lp(n: int = 4, m: int = 8) -> ProblemCase:
    """minimize cᵀx  s.t.  Gx ≤ h,  −2 ≤ x ≤ 2   (a vertex solution; h planted for feasibility)."""
    cp = _cp()
    x = cp.Variable(n, name="x")
    c, G, h = cp.Parameter(n, name="c"), cp.Parameter((m, n), name="G"), cp.Parameter(m, name="h")
    prob = cp.Problem(cp.Minimize(c @ x), [G @ x <= h, x <= 2, x >= -2])

    def draw(rng, given):
        Gv = _pick(given, 1, lambda: rng.normal(size=(m, n)))
        x0 = rng.uniform(-1, 1, size=n)
        return [rng.normal(size=n), Gv, Gv @ x0 + rng.uniform(0.2, 1.0, size=m)]

    return ProblemCase("LP", prob, [c, G, h], [x], draw, (True, False, True))


def qp(n: int = 5, k: int = 7, rho: float = 0.1) -> ProblemCase:
    """minimize ½‖Ax − b‖² + ½ρ‖x‖²  s.t.  x ≥ −0.3,  1ᵀx = 1   (strongly convex)."""
    cp = _cp()
    x = cp.Variable(n, name="x")
    A, b = cp.Parameter((k, n), name="A"), cp.Parameter(k, name="b")
    cons = [x >= -0.3, cp.sum(x) == 1]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(A @ x - b) + 0.5 * rho * cp.sum_squares(x)), cons)

    def draw(rng, given):
        return [rng.normal(size=(k, n)), 2 * rng.normal(size=k)]

    return ProblemCase("QP", prob, [A, b], [x], draw, (False, True))


def socp(n: int = 4, k: int = 6) -> ProblemCase:
    """minimize cᵀx + ‖Ax − b‖₂ + ½‖x‖²  s.t.  ‖x‖₂ ≤ 1, x₀ ≥ −0.5   (second-order cones)."""
    cp = _cp()
    x = cp.Variable(n, name="x")
    c, A, b = cp.Parameter(n, name="c"), cp.Parameter((k, n), name="A"), cp.Parameter(k, name="b")
    cons = [cp.SOC(cp.Constant(1.0), x), x[0] >= -0.5]
    prob = cp.Problem(cp.Minimize(c @ x + cp.norm(A @ x - b, 2) + 0.5 * cp.sum_squares(x)), cons)

    def draw(rng, given):
        return [2 * rng.normal(size=n), rng.normal(size=(k, n)), rng.normal(size=k)]

    return ProblemCase("SOCP", prob, [c, A, b], [x], draw, (True, False, True))


def sdp(k: int = 3, p: int = 2) -> ProblemCase:
    """minimize tr(CX) + ½‖X‖²_F  s.t.  X ⪰ 0,  ⟨A_i, X⟩ = b_i   (PSD cone)."""
    cp = _cp()
    X = cp.Variable((k, k), name="X")
    C, A, b = cp.Parameter((k, k), name="C"), cp.Parameter((p, k * k), name="A"), cp.Parameter(p, name="b")
    cons = [X >> 0, A @ cp.vec(X, order="F") == b]
    prob = cp.Problem(cp.Minimize(cp.trace(C @ X) + 0.5 * cp.sum_squares(X)), cons)

    def draw(rng, given):
        Cv = rng.normal(size=(k, k))
        return [Cv + Cv.T, rng.normal(size=(p, k * k)), rng.normal(size=p)]

    return ProblemCase("SDP", prob, [C, A, b], [X], draw, (True, False, False))


def exp_cone(n: int = 4, m: int = 2) -> ProblemCase:
    """minimize −Σ entr(z) − aᵀz  s.t.  1ᵀz = 1,  Fz ≤ g   (exponential cones)."""
    cp = _cp()
    z = cp.Variable(n, name="z")
    a, F, g = cp.Parameter(n, name="a"), cp.Parameter((m, n), name="F"), cp.Parameter(m, name="g")
    prob = cp.Problem(cp.Minimize(-cp.sum(cp.entr(z)) - a @ z), [cp.sum(z) == 1, F @ z <= g])

    def draw(rng, given):
        # Planted solution: z* in the simplex interior, the first row of Fz ≤ g active with
        # multiplier λ₀ ∈ [0.5, 1.5], the others slack by 0.5; stationarity of
        # Σ z log z − aᵀz + λᵀ(Fz − g) on the simplex then gives a = log z* + 1 + Fᵀλ.
        Fv = _pick(given, 1, lambda: rng.normal(size=(m, n)))
        z = rng.dirichlet(2 * np.ones(n))
        lam = np.zeros(m)
        lam[0] = rng.uniform(0.5, 1.5)
        g = Fv @ z + 0.5
        g[0] = Fv[0] @ z
        return [np.log(z) + 1 + Fv.T @ lam, Fv, g]

    return ProblemCase("EXP", prob, [a, F, g], [z], draw, (True, False, True))


def geometric() -> ProblemCase:
    """A log-log convex program (gp=True): maximize the volume x·y·z of a box with bounded
    surface a·(xy + xz + yz) ≤ b, and x ≥ y^c."""
    cp = _cp()
    x, y, z = cp.Variable(pos=True, name="x"), cp.Variable(pos=True, name="y"), cp.Variable(pos=True, name="z")
    a, b, c = cp.Parameter(pos=True, name="a"), cp.Parameter(pos=True, name="b"), cp.Parameter(name="c")
    prob = cp.Problem(cp.Minimize(1 / (x * y * z)), [a * (x * y + x * z + y * z) <= b, x >= y ** c])

    def draw(rng, given):
        return [np.array(rng.uniform(1.5, 2.5)), np.array(rng.uniform(2.0, 3.0)), np.array(rng.uniform(0.4, 0.6))]

    return ProblemCase("GP", prob, [a, b, c], [x, y, z], draw, (True, True, False), gp=True)


def portfolio(n: int = 50, k: int = 10, gamma: float = 1.0) -> ProblemCase:
    """Mean–standard-deviation portfolio (an SOCP), the factor-model risk of Markowitz:

        maximize μᵀw − γ ‖(Fᵀw, d ∘ w)‖₂   s.t.   1ᵀw = 1,  w ≥ 0,

    parameters μ (n) and F (n × k); idiosyncratic volatilities d fixed at 0.1.
    """
    cp = _cp()
    w = cp.Variable(n, name="w")
    mu, F = cp.Parameter(n, name="mu"), cp.Parameter((n, k), name="F")
    d = 0.1 * np.ones(n)
    risk = cp.norm(cp.hstack([F.T @ w, cp.multiply(d, w)]), 2)
    prob = cp.Problem(cp.Minimize(-mu @ w + gamma * risk), [cp.sum(w) == 1, w >= 0])

    def draw(rng, given):
        return [0.05 + 0.1 * rng.normal(size=n), 0.1 * rng.normal(size=(n, k))]

    return ProblemCase("portfolio", prob, [mu, F], [w], draw, (True, False))


def dense_qp(n: int, m: int, p: int) -> ProblemCase:
    """The dense QP of the QP layer, written for CVXPY with every datum a parameter:

        minimize ½‖Lx‖² + qᵀx   s.t.   Gx ≤ h,  Ax = b        (Q = LᵀL; L enters the cone data)
    """
    cp = _cp()
    x = cp.Variable(n, name="x")
    L, q = cp.Parameter((n, n), name="L"), cp.Parameter(n, name="q")
    G, h = cp.Parameter((m, n), name="G"), cp.Parameter(m, name="h")
    A, b = cp.Parameter((p, n), name="A"), cp.Parameter(p, name="b")
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), [G @ x <= h, A @ x == b])

    def draw(rng, given):
        M = rng.normal(size=(n, n)) / np.sqrt(n)
        Q = M @ M.T + 0.5 * np.eye(n)
        Lv = np.linalg.cholesky(Q).T
        Gv, Av = rng.normal(size=(m, n)), rng.normal(size=(p, n))
        x0 = rng.normal(size=n)
        return [Lv, rng.normal(size=n), Gv, Gv @ x0 + rng.uniform(0.1, 1.0, size=m), Av, Av @ x0]

    return ProblemCase(f"QP {n}x{m}x{p}", prob, [L, q, G, h, A, b], [x], draw, (True,) * 6)


ALL_CLASSES = {"LP": lp, "QP": qp, "SOCP": socp, "SDP": sdp, "EXP": exp_cone}
