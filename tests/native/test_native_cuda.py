"""CUDA kernels of the native backend (run only where a GPU is visible; see benchmarks/gpu_check.sh)."""

import pytest
import torch

import optlayers as ol
from optlayers._src.native.ops import cuda_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_kernels_were_built():
    assert cuda_available(), "torch sees a GPU but the native library has no CUDA kernels"


@pytest.mark.parametrize("B,n,m,p,shared", [(64, 12, 41, 0, ("G",)), (32, 20, 20, 5, ()), (8, 60, 80, 10, ())])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_equals_cpu_with_gradients(B, n, m, p, shared, dtype):
    P = ol.testing.random_qp(B, n, m, p, seed=n, shared=shared, dtype=dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    outs = {}
    for dev in ("cpu", "cuda"):
        data = [t.to(dev).clone().requires_grad_() for t in P.data()]
        sol = ol.solve_qp(*data, backend="native", return_solution=True)
        w = torch.linspace(-1, 1, sol.x.numel(), dtype=dtype, device=dev).view_as(sol.x)
        (sol.x * w).sum().backward()
        outs[dev] = [sol.x.detach().cpu(), sol.lam.detach().cpu()] + [t.grad.cpu() for t in data]
        assert sol.backend == "native" and bool((sol.status == 0).all())
    for a, b in zip(outs["cpu"], outs["cuda"]):
        assert torch.allclose(a, b, rtol=tol, atol=tol), float((a - b).abs().max())


def test_cuda_statuses():
    d = torch.float64
    G = torch.tensor([[1.0], [-1.0]], dtype=d, device="cuda")
    h = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=d, device="cuda")
    sol = ol.solve_qp(torch.eye(1, dtype=d, device="cuda"), torch.zeros(2, 1, dtype=d, device="cuda"), G, h,
                      backend="native", on_failure="nan", return_solution=True)
    assert sol.status.tolist() == [ol.Status.PRIMAL_INFEASIBLE, ol.Status.SOLVED]


def test_cuda_opcheck():
    from optlayers._src.qp.problem import canonicalize
    from optlayers._src.tolerances import tolerances_for

    tl = tolerances_for(torch.float64)
    P = ol.testing.random_qp(4, 6, 8, 2, seed=1, device="cuda")
    d = canonicalize(*P.data())
    args = (*(t.clone().requires_grad_() for t in d.tensors()), d.B, 1e-9, tl.infeasibility_tol, tl.kkt_reg,
            tl.polish_tol, tl.polish_start, tl.step_to_boundary, 50, True, False)
    torch.library.opcheck(torch.ops.optlayers.qp_solve.default, args)
