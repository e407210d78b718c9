// CUDA implementations of the native QP ops (torch side): allocate outputs and per-group
// workspaces, then call the torch-free launchers (csrc/qp_cuda_{float,double}.cu) on the current stream.
// Built only when torch sees a GPU and the CUDA toolkit (optlayers/_src/native/build.py).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "optlayers/qp_cuda.h"

namespace {

// SM count of the current device from the CUDA runtime (not ATen/cuda/CUDAContext.h, whose
// cuSPARSE/cuBLAS includes would tie this file to the full toolkit; this way it also compiles,
// for a syntax check, against the bare CUDA runtime headers: tests/native/test_native_build.py).
// OPTLAYERS_CUDA_KERNEL=thread|warp|block forces one kernel (benchmarks, tests); unset: plan_launch
// chooses by size.
int forced_kernel() {
  const char* v = std::getenv("OPTLAYERS_CUDA_KERNEL");
  if (v == nullptr || *v == 0) return -1;
  const std::string s(v);
  if (s == "thread") return 0;
  if (s == "warp") return 1;
  if (s == "block") return 2;
  TORCH_CHECK(false, "OPTLAYERS_CUDA_KERNEL must be thread, warp or block; got '", s, "'");
}

int sm_count() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

int64_t stride_of(const at::Tensor& t, int64_t core_dims) {
  return t.dim() > core_dims ? t.numel() / t.size(0) : 0;
}

// Same contract as the CPU op (csrc/qp_cpu.cpp::check_data), plus: every tensor on q's device.
void check_data(const at::Tensor& t, const char* name, int64_t core_dims, int64_t batch, const at::Tensor& ref) {
  TORCH_CHECK(t.dim() == core_dims || t.dim() == core_dims + 1, "optlayers native: ", name,
              " must have ", core_dims, " (shared) or ", core_dims + 1, " (batched) dims; got ", t.dim());
  TORCH_CHECK(t.dim() == core_dims || t.size(0) == batch, "optlayers native: ", name,
              " has batch size ", t.size(0), " but batch is ", batch);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "optlayers native: ", name, " has dtype ", t.scalar_type(),
              " but ", ref.scalar_type(), " was expected");
  TORCH_CHECK(t.device() == ref.device(), "optlayers native: ", name, " is on ", t.device(), " but ",
              ref.device(), " was expected");
}

template <typename T>
optlayers::QPBatch<T> batch_of(const at::Tensor& Q, const at::Tensor& q, const at::Tensor& G, const at::Tensor& h,
                               const at::Tensor& A, const at::Tensor& b, int64_t batch, int n, int m, int p) {
  return optlayers::QPBatch<T>{Q.data_ptr<T>(), q.numel() ? q.data_ptr<T>() : nullptr, G.data_ptr<T>(),
                               h.numel() ? h.data_ptr<T>() : nullptr, A.data_ptr<T>(),
                               b.numel() ? b.data_ptr<T>() : nullptr, stride_of(Q, 2), stride_of(q, 1),
                               stride_of(G, 2), stride_of(h, 1), stride_of(A, 2), stride_of(b, 1), batch, n, m, p};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_cuda(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, int64_t batch, double tol, double inf_tol,
    double kkt_reg, double polish_tol, double polish_start, double step_to_boundary, int64_t max_iter,
    bool polish, bool keep_factor) {
  // The CUDA kernels do not keep the polish factor (keep_factor is a CPU optimization): the
  // backward refactors through qp_kkt_solve.
  (void)keep_factor;
  check_data(Q_, "Q", 2, batch, q_); check_data(q_, "q", 1, batch, q_);
  check_data(G_, "G", 2, batch, q_); check_data(h_, "h", 1, batch, q_);
  check_data(A_, "A", 2, batch, q_); check_data(b_, "b", 1, batch, q_);
  c10::cuda::CUDAGuard guard(q_.device());
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), h = h_.contiguous();
  auto A = A_.contiguous(), b = b_.contiguous();
  const int n = q.size(-1), m = h.size(-1), p = b.size(-1);
  auto opts = q.options();
  auto x = at::empty({batch, n}, opts), lam = at::empty({batch, m}, opts), nu = at::empty({batch, p}, opts);
  auto status = at::empty({batch}, opts.dtype(at::kChar));
  auto iters = at::empty({batch}, opts.dtype(at::kInt));
  const int sms = sm_count(), forced = forced_kernel();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "optlayers_qp_solve_cuda", [&] {
    using T = scalar_t;
    const auto plan = optlayers::plan_launch(n, m, p, batch, sms, sizeof(T), forced);
    auto work = at::empty({plan.groups * plan.workspace_per_group}, opts);
    const optlayers::Settings<T> set{T(tol), T(inf_tol), T(kkt_reg), T(polish_tol), T(step_to_boundary), int(max_iter),
                                     polish, T(polish_start)};
    const optlayers::QPOut<T> out{x.data_ptr<T>(), lam.data_ptr<T>(), nu.data_ptr<T>(), status.data_ptr<int8_t>(),
                                  iters.data_ptr<int32_t>()};
    const auto err = optlayers::launch_qp_solve<T>(batch_of<T>(Q, q, G, h, A, b, batch, n, m, p), set, out,
                                                   work.data_ptr<T>(), plan, c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "optlayers qp_solve CUDA launch failed: ", cudaGetErrorString(err));
  });
  return {x, lam, nu, status, iters, at::empty({0}, opts)};
}

at::Tensor qp_kkt_solve_cuda(const at::Tensor& Q_, const at::Tensor& G_, const at::Tensor& A_,
                             const at::Tensor& mask_, const at::Tensor& rhs_, double kkt_reg) {
  TORCH_CHECK(rhs_.dim() == 2, "optlayers native: rhs must be (batch, n + m + p)");
  const int64_t batch_ = rhs_.size(0);
  check_data(Q_, "Q", 2, batch_, rhs_); check_data(G_, "G", 2, batch_, rhs_); check_data(A_, "A", 2, batch_, rhs_);
  check_data(mask_, "mask", 1, batch_, rhs_);
  TORCH_CHECK(mask_.dim() == 2 && rhs_.size(1) == Q_.size(-1) + G_.size(-2) + A_.size(-2),
              "optlayers native: rhs must be (batch, n + m + p) and mask (batch, m)");
  c10::cuda::CUDAGuard guard(rhs_.device());
  auto Q = Q_.contiguous(), G = G_.contiguous(), A = A_.contiguous(), mask = mask_.contiguous();
  auto rhs = rhs_.contiguous();
  const int64_t batch = rhs.size(0);
  const int n = Q.size(-1), m = G.size(-2), p = A.size(-2);
  auto u = at::empty_like(rhs);
  const int sms = sm_count(), forced = forced_kernel();
  AT_DISPATCH_FLOATING_TYPES(rhs.scalar_type(), "optlayers_qp_kkt_solve_cuda", [&] {
    using T = scalar_t;
    const auto plan = optlayers::plan_launch(n, m, p, batch, sms, sizeof(T), forced);
    auto work = at::empty({plan.groups * plan.workspace_per_group}, rhs.options());
    auto empty = at::empty({0}, rhs.options());
    const auto err = optlayers::launch_kkt_solve<T>(batch_of<T>(Q, empty, G, empty, A, empty, batch, n, m, p),
                                                    mask.data_ptr<T>(), rhs.data_ptr<T>(), u.data_ptr<T>(),
                                                    T(kkt_reg), work.data_ptr<T>(), plan,
                                                    c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "optlayers qp_kkt_solve CUDA launch failed: ", cudaGetErrorString(err));
  });
  return u;
}

}  // namespace

TORCH_LIBRARY_IMPL(optlayers, CUDA, m) {
  m.impl("qp_solve", &qp_solve_cuda);
  m.impl("qp_kkt_solve", &qp_kkt_solve_cuda);
}
