"""Bad input gets a clear error that names the argument (DESIGN.md §2)."""

from __future__ import annotations

import math

import pytest
import torch

import optlayers as ol

F64 = torch.float64


@pytest.fixture(scope="module")
def data():
    P = ol.testing.random_qp((), 4, 5, 2, seed=0)
    return dict(zip(("Q", "q", "G", "h", "A", "b"), P.data()))


def _call(d, **over):
    kw = dict(d)
    kw.update(over)
    opts = {k: kw.pop(k) for k in list(kw) if k not in ("Q", "q", "G", "h", "A", "b")}
    return ol.solve_qp(kw["Q"], kw["q"], kw.get("G"), kw.get("h"), kw.get("A"), kw.get("b"), **opts)


def test_valid_data_solves(data):
    assert _call(data).shape == (4,)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "name,make,expect",
    [
        ("Q", lambda d: d["Q"][:3, :3], r"Q must have shape .*\(\*, 4, 4\).*got \(3, 3\)"),
        ("Q", lambda d: d["Q"][0], r"Q must have at least 2 dimension"),
        ("G", lambda d: d["G"][:, :3], r"G must have shape \(\*, m, n\) with n = 4.*got \(5, 3\)"),
        ("h", lambda d: d["h"][:3], r"h must have shape \(\*, m\) with m = 5.*got \(3,\)"),
        ("A", lambda d: d["A"][:, :3], r"A must have shape \(\*, p, n\) with n = 4.*got \(2, 3\)"),
        ("b", lambda d: d["b"][:1], r"b must have shape \(\*, p\) with p = 2.*got \(1,\)"),
        ("q", lambda d: d["q"][0], r"q must have at least 1 dimension"),
        ("G", lambda d: d["G"][0], r"G must have at least 2 dimension"),
    ],
)
def test_wrong_shapes_name_the_argument(data, name, make, expect):
    with pytest.raises(ValueError, match=expect):
        _call(data, **{name: make(data)})


def test_empty_q_rejected():
    with pytest.raises(ValueError, match=r"q must have at least one entry"):
        ol.solve_qp(None, torch.zeros(0, dtype=F64))


def test_non_broadcastable_batches_listed(data):
    with pytest.raises(ValueError, match=r"do not broadcast.*Q: \(2,\).*q: \(3,\)"):
        _call(data, Q=data["Q"].expand(2, 4, 4), q=data["q"].expand(3, 4))


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", ["Q", "q", "G", "h", "A", "b"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_data_names_the_argument(data, name, bad):
    if name == "h" and math.isinf(bad):
        pytest.skip("±inf in h is allowed: a missing or impossible bound (test_qp_infinite_bounds.py)")
    t = data[name].clone()
    t.view(-1)[-1] = bad
    what = "NaN entries" if name == "h" else "NaN or Inf"
    with pytest.raises(ValueError, match=rf"^{name} contains {what}"):
        _call(data, **{name: t})


def test_non_symmetric_q(data):
    Q = data["Q"].clone()
    Q[0, 1] += 0.1
    with pytest.raises(ValueError, match=r"Q must be symmetric.*0\.5 \* \(Q \+ Q\.mT\)"):
        _call(data, Q=Q)


def test_tiny_asymmetry_from_rounding_is_accepted(data):
    Q = data["Q"].clone()
    Q[0, 1] += 1e-14
    _call(data, Q=Q)


def test_indefinite_q(data):
    Q = data["Q"] - 2.0 * torch.eye(4, dtype=F64)
    with pytest.raises(ValueError, match=r"Q must be positive semidefinite.*smallest eigenvalue is -"):
        _call(data, Q=Q)


def test_negative_definite_in_one_batch_entry_is_caught():
    P = ol.testing.random_qp(3, 4, 5, 1, seed=1)
    Q = P.Q.clone()
    Q[1] = -Q[1]
    with pytest.raises(ValueError, match=r"positive semidefinite"):
        ol.solve_qp(Q, P.q, P.G, P.h, P.A, P.b)


def test_check_inputs_false_skips_value_checks_but_not_shapes(data):
    Q = data["Q"].clone()
    Q[0, 1] += 1e-3  # non-symmetric: accepted without the check
    _call(data, Q=Q, check_inputs=False)
    with pytest.raises(ValueError, match=r"h must have shape"):
        _call(data, h=data["h"][:2], check_inputs=False)


# ----------------------------------------------------------------------------- dtype / device / types


@pytest.mark.parametrize("name", ["Q", "G", "h", "A", "b"])
def test_dtype_mismatch_names_the_argument(data, name):
    with pytest.raises(ValueError, match=rf"^{name} has dtype torch.float32 but q has torch.float64"):
        _call(data, **{name: data[name].float()})


def test_dtype_mismatch_when_q_is_the_odd_one(data):
    with pytest.raises(ValueError, match=r"has dtype torch.float64 but q has torch.float32"):
        _call(data, q=data["q"].float())


@pytest.mark.parametrize("name", ["Q", "G", "h", "A", "b"])
def test_device_mismatch_names_the_argument(data, name):
    with pytest.raises(ValueError, match=rf"^{name} is on device meta but q is on cpu"):
        _call(data, **{name: data[name].to("meta")})


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float16, torch.bfloat16, torch.complex128])
def test_non_float_dtypes_rejected(data, dtype):
    with pytest.raises(ValueError, match=r"^q must be float32 or float64"):
        _call(data, q=data["q"].to(dtype))


def test_all_integer_data_rejected():
    with pytest.raises(ValueError, match=r"float32 or float64.*\.double\(\)"):
        ol.solve_qp(torch.eye(2, dtype=torch.int64), torch.ones(2, dtype=torch.int64))


def test_int_matrix_with_float_vector_rejected(data):
    with pytest.raises(ValueError, match=r"^G must be float32 or float64"):
        _call(data, G=data["G"].round().long())


@pytest.mark.parametrize("name", ["q", "G"])
def test_non_tensor_rejected(data, name):
    with pytest.raises(TypeError, match=rf"^{name} must be a torch.Tensor; got list"):
        _call(data, **{name: data[name].tolist()})


# ----------------------------------------------------------------------------- pairs and options


@pytest.mark.parametrize(
    "drop,expect",
    [("h", "h is missing"), ("G", "G is missing"), ("b", "b is missing"), ("A", "A is missing")],
)
def test_unpaired_constraints(data, drop, expect):
    with pytest.raises(ValueError, match=rf"must be given together; {expect}"):
        _call(data, **{drop: None})


def test_unknown_backend(data):
    with pytest.raises(ValueError, match=r"backend must be one of .*'torch'.*got 'bogus'"):
        _call(data, backend="bogus")


def test_backend_enum_and_case_insensitive_string(data):
    x1 = _call(data, backend=ol.Backend.TORCH)
    x2 = _call(data, backend="TORCH")
    assert torch.equal(x1, x2)


def test_unknown_on_failure(data):
    with pytest.raises(ValueError, match=r"on_failure must be one of 'raise', 'nan'; got 'ignore'"):
        _call(data, on_failure="ignore")


@pytest.mark.parametrize("opt,val,expect", [("max_iter", 0, "max_iter"), ("tol", 2.0, "tol"), ("tol", 0.0, "tol")])
def test_bad_options(data, opt, val, expect):
    with pytest.raises(ValueError, match=expect):
        _call(data, **{opt: val})


@pytest.mark.parametrize("backend", ["torch", "native", "osqp"])
@pytest.mark.parametrize("opt,val", [("max_iter", 2.5), ("max_iter", "10"), ("max_iter", True), ("polish", "no"),
                                     ("tol", "1e-6")])
def test_option_types_checked_before_any_backend(data, backend, opt, val):
    # max_iter=2.5 / polish="no" had reached the backends: a C++ RuntimeError, a pybind error from
    # OSQP, or silently True (found by fuzzing).
    with pytest.raises(TypeError, match=rf"^{opt} must be"):
        _call(data, backend=backend, **{opt: val})


def test_numpy_scalar_options_accepted(data):
    import numpy as np

    x = _call(data, max_iter=np.int64(50), polish=np.bool_(True), tol=np.float64(1e-9))
    torch.testing.assert_close(x, _call(data))


@pytest.mark.parametrize("name", ["G", "A"])
def test_osqp_route_names_the_non_finite_matrix(data, name):
    # The OSQP route stacks G and A into one matrix, whose check said "A" for an Inf in G.
    pytest.importorskip("osqp")
    t = data[name].clone()
    t[0, 0] = float("inf")
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or Inf"):
        _call(data, backend="osqp", **{name: t})
    with pytest.raises(ValueError, match=r"^q must be float32 or float64"):
        _call(data, backend="osqp", q=data["q"].long())


def test_layer_rejects_bad_options_at_construction():
    with pytest.raises(ValueError, match="backend must be one of"):
        ol.QPLayer(backend="bogus")
    with pytest.raises(ValueError, match="on_failure must be one of"):
        ol.QPLayer(on_failure="warn")
    with pytest.raises(ValueError, match="max_iter"):
        ol.QPLayer(max_iter=0)
