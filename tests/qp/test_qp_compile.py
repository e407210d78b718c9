"""``solve_qp`` / ``qp_value`` inside ``torch.compile``d functions: the native op through its fake
(meta) implementation, the PyTorch backend's interior point as a graph break (run eagerly; its
loop is data-dependent, and Dynamo had turned a status comparison with an IntEnum into a Python
bool: "nonzero(): argument 'input' must be Tensor, not bool" — found by fuzzing). Values and
gradients must equal eager mode's. ``aot_eager`` traces forward and backward with fake tensors
(what inductor sees) without compiling kernels, which keeps the test fast."""

from __future__ import annotations

import torch

import optlayers as ol


def test_compiled_solve_and_value_equal_eager(backend):
    P = ol.testing.random_qp(4, n=5, m=6, p=1, seed=3, shared=("G",))
    Q, q, G, h, A, b = (t.detach() for t in P.data())

    def loss(q, h):
        x = ol.solve_qp(Q, q, G, h, A, b, backend=backend)
        return x.square().sum() + ol.qp_value(Q, q, G, h, A, b, backend=backend).sum()

    compiled = torch.compile(loss, backend="aot_eager")
    for scale in (1.0, 1.5):  # a second call with other values reuses the compiled graph
        args = [(scale * t).requires_grad_() for t in (q, h)]
        eager_args = [t.detach().clone().requires_grad_() for t in args]
        got, want = compiled(*args), loss(*eager_args)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        gs = torch.autograd.grad(got, args)
        ws = torch.autograd.grad(want, eager_args)
        for g, w in zip(gs, ws):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
