"""Solver reuse: the same pattern updates values instead of setting up (counted by
``cache.stats``), solutions warm-start the next call, reduced-KKT factorizations are shared
between problems with the same matrices and active set."""

from __future__ import annotations

import pytest
import torch

import optlayers as ol
from sparse_oracles import coo_parts, planted_sparse_qp, torch_data

pytest.importorskip("osqp")
D = torch.float64


def test_same_pattern_updates_values_without_new_setup():
    prob = planted_sparse_qp(n=15, m=12, seed=31)
    cache = ol.sparse.SolverCache()
    P, q, A, l, u = torch_data(prob)
    ol.solve_sparse_qp(P, q, A, l, u, cache=cache)
    assert (cache.stats.setups, cache.stats.matrix_updates, len(cache)) == (1, 0, 1)
    # Same matrices, new q: vectors updated only.
    ol.solve_sparse_qp(P, q + 0.01, A, l, u, cache=cache)
    assert (cache.stats.setups, cache.stats.matrix_updates, cache.stats.vector_updates) == (1, 0, 1)
    # New values of P and A with the same pattern: a value update, still no set-up, right answer.
    Pi, Pv = coo_parts(prob.P)
    Ai, Av = coo_parts(prob.A)
    P2 = torch.sparse_coo_tensor(Pi, 1.5 * Pv, prob.P.shape)
    A2 = torch.sparse_coo_tensor(Ai, 0.8 * Av, prob.A.shape)
    x2 = ol.solve_sparse_qp(P2, q, A2, l, u, cache=cache)
    assert (cache.stats.setups, cache.stats.matrix_updates) == (1, 1)
    x_fresh = ol.solve_sparse_qp(P2, q, A2, l, u, cache=ol.sparse.SolverCache())
    torch.testing.assert_close(x2, x_fresh, atol=1e-9, rtol=0)
    # A different pattern is a new entry (and a new set-up).
    ol.solve_sparse_qp(P, q, A.to_dense(), l, u, cache=cache)
    assert (cache.stats.setups, len(cache)) == (2, 2)


def test_batch_slots_are_reused_and_grow():
    prob = planted_sparse_qp(n=10, m=8, seed=32)
    cache = ol.sparse.SolverCache()
    P, q, A, l, u = torch_data(prob)
    ol.solve_sparse_qp(P, torch.stack([q, q + 0.1]), A, l, u, cache=cache)
    assert cache.stats.setups == 2  # one solver per batch slot
    ol.solve_sparse_qp(P, torch.stack([q, q + 0.1, q - 0.1]), A, l, u, cache=cache)
    assert cache.stats.setups == 3  # only the new slot is set up


def test_warm_start_needs_fewer_iterations():
    prob = planted_sparse_qp(n=40, m=30, density=0.1, seed=33)
    P, q, A, l, u = torch_data(prob)
    cache = ol.sparse.SolverCache()
    opts = dict(eps_abs=1e-6, eps_rel=1e-6, return_solution=True, cache=cache)
    cold = ol.solve_sparse_qp(P, q, A, l, u, **opts)
    warm = ol.solve_sparse_qp(P, q + 1e-4, A, l, u, **opts)
    assert int(warm.iterations) < int(cold.iterations), (int(warm.iterations), int(cold.iterations))
    # warm_start=False restarts from zero: as many iterations as the cold solve.
    again = ol.solve_sparse_qp(P, q + 1e-4, A, l, u, warm_start=False, **opts)
    assert int(again.iterations) >= int(cold.iterations) - 25  # OSQP checks termination every 25
    assert cache.stats.setups == 1
    torch.testing.assert_close(warm.x, again.x, atol=1e-9, rtol=0)


def test_layer_owns_its_cache():
    prob = planted_sparse_qp(n=10, m=8, seed=34)
    a, b = ol.SparseQPLayer(), ol.SparseQPLayer()
    data = torch_data(prob)
    a(*data)
    a(*data)
    b(*data)
    assert a.cache is not b.cache
    assert (a.cache.stats.setups, a.cache.stats.solves, b.cache.stats.setups) == (1, 2, 1)


def test_factorization_shared_across_batch_and_calls():
    """Shared P and A, a batch over q that keeps one active set: one reduced-KKT factorization."""
    prob = planted_sparse_qp(n=12, m=10, seed=35)
    P, q, A, l, u = torch_data(prob)
    cache = ol.sparse.SolverCache()
    qs = torch.stack([q, q + 1e-3, q - 1e-3, q + 2e-3])
    sol = ol.solve_sparse_qp(P, qs, A, l, u, cache=cache, return_solution=True)
    active = (sol.y.abs() > 1e-9)
    assert bool((active == active[0]).all())  # same active set across the batch
    assert cache.stats.factorizations == 1 and cache.stats.factor_reuses == 3
    ol.solve_sparse_qp(P, qs[:1] + 5e-4, A, l, u, cache=cache)
    assert cache.stats.factorizations == 1  # reused across calls too


def test_lru_evicts_old_patterns_and_clear_resets():
    cache = ol.sparse.SolverCache(max_patterns=2)
    for seed in range(3):
        prob = planted_sparse_qp(n=6 + seed, m=4, seed=40 + seed)
        ol.solve_sparse_qp(*torch_data(prob), cache=cache)
    assert len(cache) == 2 and cache.stats.setups == 3
    cache.clear()
    assert len(cache) == 0 and cache.stats.setups == 0
    with pytest.raises(ValueError, match="max_patterns"):
        ol.sparse.SolverCache(max_patterns=0)


def test_default_cache_is_used_by_solve_qp_and_can_be_cleared():
    ol.sparse.clear_cache()
    r = ol.testing.random_qp((), n=6, m=4, p=1, seed=36)
    Q, q, G, h, A, b = r.data()
    ol.solve_qp(Q.to_sparse(), q, G.to_sparse(), h, A.to_sparse(), b)
    ol.solve_qp(Q.to_sparse(), q, G.to_sparse(), h, A.to_sparse(), b)
    assert ol.sparse.default_cache().stats.setups == 1
    ol.sparse.clear_cache()
    assert ol.sparse.default_cache().stats.setups == 0


def test_a_layer_that_has_solved_can_be_copied_and_pickled():
    # (found by fuzzing: OSQP's solver objects in the cache made deepcopy/pickle/torch.save of a
    # model with a SparseQPLayer fail after its first call) The copy gets an empty cache.
    import copy
    import io
    import pickle

    P = torch.eye(3, dtype=torch.float64).to_sparse()
    A = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64).to_sparse()
    q, l, u = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), -torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    layer = ol.SparseQPLayer()
    x = layer(P, q, A, l, u)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), torch.load(buf, weights_only=False)):
        assert len(other.cache) == 0 and other.cache.stats.setups == layer.cache.stats.setups
        torch.testing.assert_close(other(P, q, A, l, u), x)
