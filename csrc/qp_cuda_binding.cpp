// CUDA implementations of the native QP ops (torch side): allocate outputs and per-group
// workspaces, then call the torch-free launchers (csrc/qp_cuda_{float,double}.cu) on the current stream.
// Built only when torch sees a GPU and the CUDA toolkit (optlayers/_src/native/build.py).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "optlayers/qp_cuda.h"

namespace {

// SM count of the current device from the CUDA runtime (not ATen/cuda/CUDAContext.h, whose
// cuSPARSE/cuBLAS includes would tie this file to the full toolkit; this way it also compiles,
// for a syntax check, against the bare CUDA runtime headers: tests/native/test_native_build.py).
// OPTLAYERS_CUDA_KERNEL=thread|warp|block forces one kernel (benchmarks, tests); small: the small
// kernel where eligible, at any batch size; small-bare: the same without its fallback (benchmarks
// count the problems it leaves, status −1); unset: plan_launch chooses by size.
int forced_kernel() {
  const char* v = std::getenv("OPTLAYERS_CUDA_KERNEL");
  if (v == nullptr || *v == 0) return -1;
  const std::string s(v);
  if (s == "thread") return 0;
  if (s == "warp") return 1;
  if (s == "block") return 2;
  if (s == "small") return 3;  // where eligible, whatever the batch size (see plan_launch)
  if (s == "small-bare") return 4;  // the same without the fallback: status −1 shows what it left
  TORCH_CHECK(false, "OPTLAYERS_CUDA_KERNEL must be small, small-bare, thread, warp or block; got '", s, "'");
}

// OPTLAYERS_CUDA_SMALL_VARIANT=<int>: a variant of the small kernel (optlayers/qp_cuda.h,
// kSmallVariants; benchmarks/gpu_small_variants.py). With the profile bit, the per-phase clock
// sums of each call are printed to stderr ("optlayers small profile: ...").
int small_variant() {
  const char* v = std::getenv("OPTLAYERS_CUDA_SMALL_VARIANT");
  if (v == nullptr || *v == 0) return 0;
  const std::string s(v);
  for (int ok : optlayers::kSmallVariants)
    if (s == std::to_string(ok)) return ok;
  TORCH_CHECK(false, "OPTLAYERS_CUDA_SMALL_VARIANT must be one of 0, 1, 4, 5; got '", v, "'");
}

int sm_count() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

// Dynamic shared memory a block of this device may opt in to (the block kernel's K; qp_cuda.h).
int64_t shared_optin() {
  int dev = 0, bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

int64_t stride_of(const at::Tensor& t, int64_t core_dims) {
  // From the shape, not numel() / size(0): an empty batch (size(0) = 0) must not divide by zero.
  if (t.dim() <= core_dims) return 0;
  int64_t s = 1;
  for (int64_t d = 1; d < t.dim(); ++d) s *= t.size(d);
  return s;
}

// Same contract as the CPU op (csrc/qp_cpu_common.h::check_data), plus: every tensor on q's device.
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

// The launch plan for OPTLAYERS_CUDA_KERNEL's `forced` (small-bare plans as small); without
// `allow_small` (the small kernel's fallback) the warp kernel instead of the small one.
template <typename T>
optlayers::LaunchPlan choose_plan(int n, int m, int p, int64_t batch, int sms, int forced, bool allow_small) {
  const int64_t smem = shared_optin();
  auto plan = optlayers::plan_launch(n, m, p, batch, sms, sizeof(T), forced == 4 ? 3 : forced, smem);
  if (plan.kernel == optlayers::Kernel::kSmall && !allow_small)
    plan = optlayers::plan_launch(n, m, p, batch, sms, sizeof(T), int(optlayers::Kernel::kWarp), smem);
  return plan;
}

// Rows `idx` of a batched tensor (leading batch dim beyond `core_dims`); shared tensors as they are.
at::Tensor rows_of(const at::Tensor& t, int64_t core_dims, const at::Tensor& idx) {
  return t.dim() > core_dims ? t.index_select(0, idx) : t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_cuda_impl(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, int64_t batch, double tol, double inf_tol,
    double kkt_reg, double polish_tol, double polish_start, double step_to_boundary, int64_t max_iter,
    bool polish, bool allow_small);

// float32 problems left unsolved (kMaxIter, kNumericalError) solved again from scratch in double
// (the float32 data are exact there) with float64's tolerances; only kSolved outcomes are taken,
// rounded to float (see qp_cpu_solve_impl.h::finish_left_in_double, whose step 2 this is; the CPU's
// step 1, a double polish of the float iterate, is not done here). Costs one device-to-host copy of
// the failure count when none failed. Tested on an H100 (2026-11-28,
// test_cuda_float32_failures_are_finished_in_float64).
void finish_left_in_double(const at::Tensor& Q, const at::Tensor& q, const at::Tensor& G, const at::Tensor& h,
                           const at::Tensor& A, const at::Tensor& b, int64_t max_iter, at::Tensor& x, at::Tensor& lam,
                           at::Tensor& nu, at::Tensor& status, at::Tensor& iters) {
  auto failed = (status == int64_t(optlayers::kMaxIter)) | (status == int64_t(optlayers::kNumericalError));
  if (max_iter < optlayers::kDefaultMaxIter) failed = failed & (iters < max_iter);  // a lowered budget is kept
  const auto left = at::nonzero(failed).squeeze(1);
  if (left.numel() == 0) return;
  using F64 = optlayers::Float64Defaults;
  auto d = [&](const at::Tensor& t, int64_t core) { return rows_of(t, core, left).to(at::kDouble); };
  auto r = qp_solve_cuda_impl(d(Q, 2), d(q, 1), d(G, 2), d(h, 1), d(A, 2), d(b, 1), left.numel(), F64::tol,
                              F64::inf_tol, F64::kkt_reg, F64::polish_tol, F64::polish_start, F64::step_to_boundary,
                              max_iter, true, true);
  const auto ok = at::nonzero(std::get<3>(r) == int64_t(optlayers::kSolved)).squeeze(1);
  if (ok.numel() == 0) return;
  const auto idx = left.index_select(0, ok);
  x.index_copy_(0, idx, std::get<0>(r).index_select(0, ok).to(x.scalar_type()));
  lam.index_copy_(0, idx, std::get<1>(r).index_select(0, ok).to(lam.scalar_type()));
  nu.index_copy_(0, idx, std::get<2>(r).index_select(0, ok).to(nu.scalar_type()));
  status.index_fill_(0, idx, int64_t(optlayers::kSolved));
  iters.index_add_(0, idx, std::get<4>(r).index_select(0, ok));
}

// Converged double problems the final polish left at the interior point's iterate: some row with
// λ > 0 and a slack above √polish_tol (1 + ‖h‖∞), which a polished point never has (λ = 0 exactly off
// its active set). The same test as qp_cpu_solve_impl.h::left_unpolished and
// optlayers/_src/qp/active_set.py::unpolished, in ATen ops on the batch. (B,) bool; G (m, n) or
// (B, m, n), h (m) or (B, m), x (B, n), λ (B, m), status (B,).
at::Tensor unpolished_mask(const at::Tensor& G, const at::Tensor& h, const at::Tensor& x, const at::Tensor& lam,
                           const at::Tensor& status, double polish_tol) {
  const auto solved = status == int64_t(optlayers::kSolved);
  if (h.size(-1) == 0) return at::zeros_like(solved);
  const auto Gx = G.dim() == 2 ? at::matmul(x, G.t()) : at::bmm(G, x.unsqueeze(-1)).squeeze(-1);
  const auto gap = (h.abs().amax({-1}, true) + 1.0) * std::sqrt(polish_tol);
  return ((lam > 0) & ((h - Gx) > gap)).any(-1) & solved;
}

// Those problems solved once more from scratch at kRetryTolFactor × the tolerance and polished; the
// result is taken only where it is SOLVED and polished (as qp_cpu_solve_impl.h::finish_unpolished;
// rows whose λ and s were both 1e-6 … 1e-4 at the end separate in a few more iterations). Costs a
// few small kernels and one device-to-host copy of the count a float64 call. NOT YET RUN ON A GPU
// (2026-11-28: written and syntax-checked without one; the CPU twin is tested).
void finish_unpolished(const at::Tensor& Q, const at::Tensor& q, const at::Tensor& G, const at::Tensor& h,
                       const at::Tensor& A, const at::Tensor& b, double tol, double inf_tol, double kkt_reg,
                       double polish_tol, double polish_start, double step_to_boundary, int64_t max_iter, at::Tensor& x,
                       at::Tensor& lam, at::Tensor& nu, at::Tensor& status, at::Tensor& iters) {
  const auto left = at::nonzero(unpolished_mask(G, h, x, lam, status, polish_tol)).squeeze(1);
  if (left.numel() == 0) return;
  const auto Gl = rows_of(G, 2, left), hl = rows_of(h, 1, left);
  auto r = qp_solve_cuda_impl(rows_of(Q, 2, left), rows_of(q, 1, left), Gl, hl, rows_of(A, 2, left),
                              rows_of(b, 1, left), left.numel(), tol * optlayers::kRetryTolFactor, inf_tol, kkt_reg,
                              polish_tol, polish_start, step_to_boundary, max_iter, true, true);
  const auto still = unpolished_mask(Gl, hl, std::get<0>(r), std::get<1>(r), std::get<3>(r), polish_tol);
  const auto ok = at::nonzero((std::get<3>(r) == int64_t(optlayers::kSolved)) & still.logical_not()).squeeze(1);
  if (ok.numel() == 0) return;
  const auto idx = left.index_select(0, ok);
  x.index_copy_(0, idx, std::get<0>(r).index_select(0, ok));
  lam.index_copy_(0, idx, std::get<1>(r).index_select(0, ok));
  nu.index_copy_(0, idx, std::get<2>(r).index_select(0, ok));
  iters.index_add_(0, idx, std::get<4>(r).index_select(0, ok));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_cuda(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, int64_t batch, double tol, double inf_tol,
    double kkt_reg, double polish_tol, double polish_start, double step_to_boundary, int64_t max_iter,
    bool polish, bool keep_factor) {
  // The CUDA kernels do not keep the polish factor (keep_factor is a CPU optimization): the
  // backward refactors through qp_kkt_solve.
  (void)keep_factor;
  auto r = qp_solve_cuda_impl(Q_, q_, G_, h_, A_, b_, batch, tol, inf_tol, kkt_reg, polish_tol, polish_start,
                              step_to_boundary, max_iter, polish, true);
  if (polish && q_.scalar_type() == at::kFloat)
    finish_left_in_double(Q_, q_, G_, h_, A_, b_, max_iter, std::get<0>(r), std::get<1>(r), std::get<2>(r),
                          std::get<3>(r), std::get<4>(r));
  else if (polish && q_.scalar_type() == at::kDouble)
    finish_unpolished(Q_, q_, G_, h_, A_, b_, tol, inf_tol, kkt_reg, polish_tol, polish_start, step_to_boundary,
                      max_iter, std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r));
  return r;
}

// allow_small = false: the thread-group kernels only (the small kernel's fallback).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_cuda_impl(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, int64_t batch, double tol, double inf_tol,
    double kkt_reg, double polish_tol, double polish_start, double step_to_boundary, int64_t max_iter,
    bool polish, bool allow_small) {
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
  bool small = false;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "optlayers_qp_solve_cuda", [&] {
    using T = scalar_t;
    const auto plan = choose_plan<T>(n, m, p, batch, sms, forced, allow_small);
    const optlayers::Settings<T> set{T(tol), T(inf_tol), T(kkt_reg), T(polish_tol), T(step_to_boundary), int(max_iter),
                                     polish, T(polish_start)};
    const optlayers::QPOut<T> out{x.data_ptr<T>(), lam.data_ptr<T>(), nu.data_ptr<T>(), status.data_ptr<int8_t>(),
                                  iters.data_ptr<int32_t>()};
    const auto data = batch_of<T>(Q, q, G, h, A, b, batch, n, m, p);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    cudaError_t err;
    if (plan.kernel == optlayers::Kernel::kSmall) {
      small = true;
      const int variant = small_variant();
      const bool profile = (variant & optlayers::kSmallProfile) != 0;
      auto counter = at::zeros({1}, opts.dtype(at::kLong));
      auto* cnt = reinterpret_cast<unsigned long long*>(counter.data_ptr<int64_t>());
      at::Tensor prof;  // only for the profile variant: no extra allocation on the common path
      if (profile) prof = at::zeros({optlayers::small::kProfSlots}, opts.dtype(at::kLong));
      auto* prf = profile ? reinterpret_cast<unsigned long long*>(prof.data_ptr<int64_t>()) : nullptr;
      if ((variant & optlayers::kSmallStaged) == 0) {
        err = optlayers::launch_qp_small_fused<T>(data, set, out, cnt, variant, prf, stream);
      } else {
        // The staged schedule (optlayers/qp_cuda.h: SmallStages): interior point, polish, and again
        // for the problems whose early polish failed; one host check of the stages per round.
        auto stage = at::zeros({batch}, opts.dtype(at::kChar));
        auto saved_v = at::empty({batch * optlayers::small::saved_scalars(m)}, opts);
        auto saved_k = at::empty({batch * optlayers::small::kSavedInts}, opts.dtype(at::kInt));
        const optlayers::SmallStages<T> st{stage.data_ptr<int8_t>(), saved_v.data_ptr<T>(),
                                           saved_k.data_ptr<int32_t>(), cnt, prf};
        err = cudaSuccess;
        for (int round = 0; round < optlayers::small::kMaxRounds && err == cudaSuccess; ++round) {
          if (round > 0) counter.zero_();
          err = optlayers::launch_small_ipm<T>(data, set, out, st, variant, stream);
          if (err == cudaSuccess) err = optlayers::launch_small_polish<T>(data, set, out, st, variant, stream);
          if (err != cudaSuccess || !(stage == int64_t(optlayers::small::kStageResume)).any().item<bool>()) break;
        }
        // Not reached (see small::kMaxRounds), but never leave a problem without a status.
        status.masked_fill_(stage != int64_t(optlayers::small::kStageDone), int64_t(optlayers::small::kRetry));
      }
      if (profile && err == cudaSuccess) {
        const auto c = prof.cpu();
        const int64_t* v = c.data_ptr<int64_t>();
        std::fprintf(stderr, "optlayers small profile: batch=%lld", (long long)batch);
        static const char* names[] = {"setup", "residual", "factor", "step", "polish", "polish_calls",
                                      "problems", "iterations", "total", "fetch"};
        for (int k = 0; k < optlayers::small::kProfSlots; ++k) std::fprintf(stderr, " %s=%lld", names[k], (long long)v[k]);
        std::fprintf(stderr, "\n");
      }
    } else {
      auto work = at::empty({plan.groups * plan.workspace_per_group}, opts);
      err = optlayers::launch_qp_solve<T>(data, set, out, work.data_ptr<T>(), plan, stream);
    }
    TORCH_CHECK(err == cudaSuccess, "optlayers qp_solve CUDA launch failed: ", cudaGetErrorString(err));
  });
  if (small && forced != 4) {
    // The problems the small kernel left (small::kRetry) are solved from the start by the warp kernel.
    const auto retry = at::nonzero(status == int64_t(optlayers::small::kRetry)).squeeze(1);
    if (retry.numel() > 0) {
      auto r = qp_solve_cuda_impl(rows_of(Q, 2, retry), rows_of(q, 1, retry), rows_of(G, 2, retry),
                                  rows_of(h, 1, retry), rows_of(A, 2, retry), rows_of(b, 1, retry), retry.numel(), tol,
                                  inf_tol, kkt_reg, polish_tol, polish_start, step_to_boundary, max_iter, polish, false);
      x.index_copy_(0, retry, std::get<0>(r));
      lam.index_copy_(0, retry, std::get<1>(r));
      status.index_copy_(0, retry, std::get<3>(r));
      iters.index_copy_(0, retry, std::get<4>(r));
    }
  }
  return {x, lam, nu, status, iters, at::empty({0}, opts)};
}

at::Tensor qp_kkt_solve_cuda_impl(const at::Tensor& Q_, const at::Tensor& G_, const at::Tensor& A_,
                                  const at::Tensor& mask_, const at::Tensor& rhs_, double kkt_reg, bool allow_small) {
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
  at::Tensor failed;
  AT_DISPATCH_FLOATING_TYPES(rhs.scalar_type(), "optlayers_qp_kkt_solve_cuda", [&] {
    using T = scalar_t;
    const auto plan = choose_plan<T>(n, m, p, batch, sms, forced, allow_small);
    if (plan.kernel == optlayers::Kernel::kSmall) {
      auto empty = at::empty({0}, rhs.options());
      failed = at::empty({batch}, rhs.options().dtype(at::kChar));
      const auto err = optlayers::launch_kkt_small<T>(batch_of<T>(Q, empty, G, empty, A, empty, batch, n, m, p),
                                                      mask.data_ptr<T>(), rhs.data_ptr<T>(), u.data_ptr<T>(),
                                                      T(kkt_reg), failed.data_ptr<int8_t>(),
                                                      c10::cuda::getCurrentCUDAStream());
      TORCH_CHECK(err == cudaSuccess, "optlayers qp_kkt_solve CUDA launch failed: ", cudaGetErrorString(err));
      return;
    }
    auto work = at::empty({plan.groups * plan.workspace_per_group}, rhs.options());
    auto empty = at::empty({0}, rhs.options());
    const auto err = optlayers::launch_kkt_solve<T>(batch_of<T>(Q, empty, G, empty, A, empty, batch, n, m, p),
                                                    mask.data_ptr<T>(), rhs.data_ptr<T>(), u.data_ptr<T>(),
                                                    T(kkt_reg), work.data_ptr<T>(), plan,
                                                    c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "optlayers qp_kkt_solve CUDA launch failed: ", cudaGetErrorString(err));
  });
  if (failed.defined()) {  // the small kernel's failed factorizations: the warp kernel's LU instead
    const auto redo = at::nonzero(failed).squeeze(1);
    if (redo.numel() > 0)
      u.index_copy_(0, redo, qp_kkt_solve_cuda_impl(rows_of(Q, 2, redo), rows_of(G, 2, redo), rows_of(A, 2, redo),
                                                    mask.index_select(0, redo), rhs.index_select(0, redo), kkt_reg,
                                                    false));
  }
  return u;
}

at::Tensor qp_kkt_solve_cuda(const at::Tensor& Q_, const at::Tensor& G_, const at::Tensor& A_,
                             const at::Tensor& mask_, const at::Tensor& rhs_, double kkt_reg) {
  return qp_kkt_solve_cuda_impl(Q_, G_, A_, mask_, rhs_, kkt_reg, true);
}

// The warm start's guessed active sets (csrc/qp_cpu_derivatives.cpp::qp_active_set_solve_cpu) for the problems
// the small kernel takes (n ≤ 16, m ≤ 128, p = 0; optlayers/_src/native/ops.py routes only those
// here): one thread per problem through small::polish_guess. No factor is kept on CUDA.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_active_set_solve_cuda(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_, const at::Tensor& A_,
    const at::Tensor& b_, const at::Tensor& guess_, double kkt_reg, double polish_tol, int64_t rounds,
    bool keep_factor) {
  (void)keep_factor;
  TORCH_CHECK(guess_.dim() == 2, "optlayers native: guess must be (batch, m)");
  const int64_t batch = guess_.size(0);
  check_data(Q_, "Q", 2, batch, q_); check_data(q_, "q", 1, batch, q_);
  check_data(G_, "G", 2, batch, q_); check_data(h_, "h", 1, batch, q_);
  check_data(A_, "A", 2, batch, q_); check_data(b_, "b", 1, batch, q_);
  check_data(guess_, "guess", 1, batch, q_);
  TORCH_CHECK(rounds >= 1, "optlayers native: rounds must be positive");
  c10::cuda::CUDAGuard guard(q_.device());
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), h = h_.contiguous();
  auto A = A_.contiguous(), b = b_.contiguous(), guess = guess_.contiguous();
  const int n = q.size(-1), m = h.size(-1), p = b.size(-1);
  TORCH_CHECK(guess.size(1) == m && optlayers::small::eligible(n, m, p),
              "optlayers native: qp_active_set_solve on CUDA takes n <= 16, 1 <= m <= 128, p = 0 (the small "
              "kernel's problems); got n = ", n, ", m = ", m, ", p = ", p);
  auto opts = q.options();
  auto x = at::zeros({batch, n}, opts), lam = at::zeros({batch, m}, opts), nu = at::zeros({batch, 0}, opts);
  auto status = at::empty({batch}, opts.dtype(at::kChar));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "optlayers_qp_active_set_solve_cuda", [&] {
    using T = scalar_t;
    const optlayers::Settings<T> set{T(0), T(0), T(kkt_reg), T(polish_tol), T(0), 0, true, T(0)};
    const auto err = optlayers::launch_active_set_small<T>(batch_of<T>(Q, q, G, h, A, b, batch, n, m, p),
                                                           guess.data_ptr<T>(), set, int(rounds), x.data_ptr<T>(),
                                                           lam.data_ptr<T>(), status.data_ptr<int8_t>(),
                                                           c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "optlayers qp_active_set_solve CUDA launch failed: ", cudaGetErrorString(err));
  });
  // A problem none of whose guesses was accepted keeps zeros (the polish writes only on acceptance).
  return {x, lam, nu, status, at::empty({0}, opts)};
}

}  // namespace

TORCH_LIBRARY_IMPL(optlayers, CUDA, m) {
  m.impl("qp_solve", &qp_solve_cuda);
  m.impl("qp_kkt_solve", &qp_kkt_solve_cuda);
  m.impl("qp_active_set_solve", &qp_active_set_solve_cuda);
}
