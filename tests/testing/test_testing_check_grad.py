"""``ol.testing.check_grad`` must pass correct gradients and FAIL wrong ones, in both modes."""

from __future__ import annotations

import pytest
import torch

import optlayers as ol

F64 = torch.float64


class _Cube(torch.autograd.Function):
    """y = x³ with a selectable backward: correct (3x²) or deliberately wrong."""

    @staticmethod
    def forward(x, wrong):
        return x ** 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, wrong = inputs
        ctx.save_for_backward(x)
        ctx.wrong = wrong

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.wrong == "scale":
            return g * 3.3 * x ** 2, None  # 10% off
        if ctx.wrong == "sign":
            return -g * 3 * x ** 2, None
        if ctx.wrong == "one_entry":
            d = 3 * x ** 2
            d = d.clone()
            d.view(-1)[0] *= 1.01  # 1% off in a single entry
            return g * d, None
        return g * 3 * x ** 2, None


class _BilinearWrongSecond(torch.autograd.Function):
    """f(a, b) = a * b with a correct gradient for a and a wrong one (zero) for b."""

    @staticmethod
    def forward(a, b):
        return a * b

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b, torch.zeros_like(b)


def _x(shape=(3, 4), seed=0):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.5).requires_grad_()


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_correct_custom_backward_passes(mode):
    rep = ol.testing.check_grad(lambda x: _Cube.apply(x, None), (_x(),), mode=mode)
    assert rep.ok and rep.worst <= 1e-8 and rep.mode == mode
    assert "PASS" in str(rep)


@pytest.mark.parametrize("mode", ["full", "directional"])
@pytest.mark.parametrize("wrong", ["scale", "sign"])
def test_wrong_custom_backward_fails(mode, wrong):
    fn = lambda x: _Cube.apply(x, wrong)  # noqa: E731
    with pytest.raises(AssertionError, match="FAIL"):
        ol.testing.check_grad(fn, (_x(),), mode=mode)
    rep = ol.testing.check_grad(fn, (_x(),), mode=mode, raise_on_failure=False)
    assert not rep.ok and rep.worst > 0.05


def test_full_mode_catches_a_small_error_in_one_entry():
    rep = ol.testing.check_grad(lambda x: _Cube.apply(x, "one_entry"), (_x(),), mode="full", raise_on_failure=False)
    assert not rep.ok and 1e-3 < rep.worst < 2e-2


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_only_the_wrong_input_is_flagged(mode):
    a, b = _x(seed=1), _x(seed=2)
    rep = ol.testing.check_grad(_BilinearWrongSecond.apply, (a, b), mode=mode, raise_on_failure=False)
    assert set(rep.errors) == {0, 1}
    assert rep.errors[0] <= 1e-8 and rep.errors[1] > 0.1
    assert "input 1" in str(rep)


def test_inputs_without_requires_grad_are_passed_through_unchecked():
    a, b = _x(seed=1), _x(seed=2).detach()
    rep = ol.testing.check_grad(lambda a, b: a * b.sin(), (a, b))
    assert set(rep.errors) == {0} and rep.ok
    assert torch.allclose(rep.analytic[0], rep.numeric[0], rtol=1e-8, atol=1e-10)


def test_tuple_outputs_and_single_tensor_input():
    x = _x((5,))
    rep = ol.testing.check_grad(lambda x: (x.exp(), x.cumsum(0), "ignored"), x, mode="full")
    assert rep.ok


def test_wrong_gradient_in_one_of_several_outputs_is_caught():
    class Half(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x.clone(), 2 * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g1, g2):
            return g1 + g2  # should be g1 + 2 g2

    rep = ol.testing.check_grad(Half.apply, (_x(),), mode="directional", raise_on_failure=False)
    assert not rep.ok


def test_non_contiguous_input_full_mode():
    """A transposed (non-contiguous) leaf — e.g. a Cholesky factor — must be checkable."""
    x = _x((4, 3)).detach().mT.requires_grad_()
    assert not x.is_contiguous()
    rep = ol.testing.check_grad(lambda x: x.sin() * 2, (x,), mode="full")
    assert rep.ok


def test_float32_uses_a_float32_step():
    x = _x().float().detach().requires_grad_()
    rep = ol.testing.check_grad(lambda x: x ** 2, (x,), rtol=1e-2)
    assert rep.ok


def test_argument_errors():
    with pytest.raises(ValueError, match="mode must be"):
        ol.testing.check_grad(lambda x: x, (_x(),), mode="forward")
    with pytest.raises(ValueError, match="no input has requires_grad"):
        ol.testing.check_grad(lambda x: x, (_x().detach(),))
    with pytest.raises(TypeError, match="must return a tensor"):
        ol.testing.check_grad(lambda x: 1.0, (_x(),))
    with pytest.raises(ValueError, match="no output of fn depends"):
        ol.testing.check_grad(lambda x: torch.ones(2), (_x(),))


def test_check_grad_on_the_qp_layer_catches_a_corrupted_gradient():
    """The QP gradient passes; the same function with its gradient scaled by 1.05 (a hook on
    the output) fails — the check is sensitive on the real use case too."""
    P = ol.testing.random_qp(1, 3, 4, 1, active_fraction=0.25, seed=0)
    q = P.q.clone().requires_grad_()

    def good(q):
        return ol.solve_qp(P.Q, q, P.G, P.h, P.A, P.b)

    def corrupted(q):
        x = ol.solve_qp(P.Q, q, P.G, P.h, P.A, P.b)
        if x.requires_grad:
            x.register_hook(lambda g: 1.05 * g)
        return x

    for mode in ("full", "directional"):
        assert ol.testing.check_grad(good, (q,), mode=mode).ok
        assert not ol.testing.check_grad(corrupted, (q,), mode=mode, raise_on_failure=False).ok


# Found by fuzzing the toolkit: a NaN gradient passed the directional check with error 0 (Python's
# max skips a NaN that comes second), a wrong gradient on a nested output passed (nested tuples were
# dropped), num_directions=0 passed anything, and atol did not make an exactly-zero gradient pass
# against finite-difference noise as documented.


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.square()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = 2 * x * g
        out.view(-1)[0] = float("nan")
        return out


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_a_nan_gradient_fails(mode):
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    report = ol.testing.check_grad(_NaNGrad.apply, (x,), mode=mode, raise_on_failure=False)
    assert not report.ok and report.worst == float("inf")


def test_a_wrong_gradient_on_a_nested_output_fails():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(AssertionError, match="FAIL"):
        ol.testing.check_grad(lambda a: (torch.sin(a), (_Cube.apply(a, "scale"),)), (x,))


def test_degenerate_arguments_are_refused():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="num_directions"):
        ol.testing.check_grad(torch.sin, (x,), mode="directional", num_directions=0)
    with pytest.raises(ValueError, match="eps"):
        ol.testing.check_grad(torch.sin, (x,), eps=0.0)
    empty = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    report = ol.testing.check_grad(lambda a, e: torch.sin(a).sum() + e.sum(), (x, empty))
    assert report.errors[1] == 0.0


def test_atol_is_an_absolute_tolerance_for_zero_gradients():
    # An LP at a vertex: x does not move with q (gradient exactly 0), finite differences ~1e-10.
    P = ol.testing.random_qp((), 4, 8, 0, lp=True, seed=2)
    q = P.q.clone().requires_grad_()
    f = lambda q: ol.solve_qp(None, q, P.G, P.h)  # noqa: E731
    report = ol.testing.check_grad(f, (q,), atol=1e-8)
    assert report.ok and float(report.analytic[0].abs().max()) < 1e-12


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_large_inputs_get_a_relative_step(mode):
    # (an absolute step of 6e-6 on entries ~1e6 is below their rounding: correct gradients failed)
    x = (1e6 * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).requires_grad_()
    report = ol.testing.check_grad(lambda a: torch.sin(a / 1e6) * 1e6, (x,), mode=mode)
    assert report.ok
