// CPU implementation and schema registration of the native QP ops.
//
//   optlayers::qp_solve(Q, q, G, h, A, b, batch, tol, inf_tol, kkt_reg, polish_tol, max_iter, polish)
//       -> (x (B,n), lam (B,m), nu (B,p), status (B,) int8, iterations (B,) int32)
//   optlayers::qp_kkt_solve(Q, G, A, mask, rhs, kkt_reg) -> u (B, n+m+p)
//
// Data tensors are either batched (leading dim B) or shared (no batch dim; read from one copy).
// The batch is split across threads with at::parallel_for; each thread owns one workspace.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "optlayers/qp_ipm.h"

namespace {

// A shared G gets its row outer products precomputed (m·n(n+1)/2 numbers, packed lower
// triangles) up to this size (2 MiB in float64, about an L2 cache); see Problem::G_outer.
constexpr int64_t kOuterProductsMax = int64_t(1) << 18;

int64_t stride_of(const at::Tensor& t, int64_t core_dims) {
  return t.dim() > core_dims ? t.numel() / t.size(0) : 0;
}

void check_data(const at::Tensor& t, const char* name, int64_t core_dims, int64_t batch, at::ScalarType st) {
  TORCH_CHECK(t.dim() == core_dims || t.dim() == core_dims + 1, "optlayers native: ", name,
              " must have ", core_dims, " (shared) or ", core_dims + 1, " (batched) dims; got ", t.dim());
  TORCH_CHECK(t.dim() == core_dims || t.size(0) == batch, "optlayers native: ", name,
              " has batch size ", t.size(0), " but batch is ", batch);
  TORCH_CHECK(t.scalar_type() == st, "optlayers native: ", name, " has dtype ", t.scalar_type(),
              " but q has ", st);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_solve_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, int64_t batch, double tol, double inf_tol,
    double kkt_reg, double polish_tol, double step_to_boundary, int64_t max_iter, bool polish) {
  const auto st = q_.scalar_type();
  check_data(Q_, "Q", 2, batch, st); check_data(q_, "q", 1, batch, st);
  check_data(G_, "G", 2, batch, st); check_data(h_, "h", 1, batch, st);
  check_data(A_, "A", 2, batch, st); check_data(b_, "b", 1, batch, st);
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), h = h_.contiguous();
  auto A = A_.contiguous(), b = b_.contiguous();
  const int n = q.size(-1), m = h.size(-1), p = b.size(-1);
  auto opts = q.options();
  auto x = at::empty({batch, n}, opts), lam = at::empty({batch, m}, opts), nu = at::empty({batch, p}, opts);
  auto status = at::empty({batch}, opts.dtype(at::kChar));
  auto iters = at::empty({batch}, opts.dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_solve_cpu", [&] {
    using T = scalar_t;
    const optlayers::Settings<T> set{T(tol), T(inf_tol), T(kkt_reg), T(polish_tol), T(step_to_boundary), int(max_iter), polish};
    const int64_t sQ = stride_of(Q, 2), sq = stride_of(q, 1), sG = stride_of(G, 2), sh = stride_of(h, 1);
    const int64_t sA = stride_of(A, 2), sb = stride_of(b, 1);
    const T *pQ = Q.data_ptr<T>(), *pq = q.data_ptr<T>(), *pG = G.data_ptr<T>(), *ph = h.data_ptr<T>();
    const T *pA = A.data_ptr<T>(), *pb = b.data_ptr<T>();
    T *px = x.data_ptr<T>(), *pl = lam.data_ptr<T>(), *pn = nu.data_ptr<T>();
    int8_t* ps = status.data_ptr<int8_t>();
    int32_t* pi = iters.data_ptr<int32_t>();
    const int64_t ws = optlayers::workspace_size(n, m, p);
    std::vector<T> outer;
    const int64_t np = int64_t(n) * (n + 1) / 2;
    if (sG == 0 && m * np <= kOuterProductsMax) {
      outer.resize(m * np);
      for (int r = 0; r < m; ++r)
        for (int i = 0; i < n; ++i)
          for (int j = 0; j <= i; ++j) outer[r * np + int64_t(i) * (i + 1) / 2 + j] = pG[r * n + i] * pG[r * n + j];
    }
    const T* pO = outer.empty() ? nullptr : outer.data();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> work(ws);
      optlayers::SerialGroup g;
      for (int64_t i = begin; i < end; ++i) {
        optlayers::Problem<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, pA + i * sA, pb + i * sb, n, m, p, pO};
        optlayers::solve_qp(g, d, set, work.data(), px + i * n, pl + i * m, pn + i * p, ps + i, pi + i);
      }
    });
  });
  return {x, lam, nu, status, iters};
}

at::Tensor qp_kkt_solve_cpu(const at::Tensor& Q_, const at::Tensor& G_, const at::Tensor& A_,
                            const at::Tensor& mask_, const at::Tensor& rhs_, double kkt_reg) {
  const auto st = rhs_.scalar_type();
  const int64_t batch = rhs_.size(0);
  check_data(Q_, "Q", 2, batch, st); check_data(G_, "G", 2, batch, st); check_data(A_, "A", 2, batch, st);
  check_data(mask_, "mask", 1, batch, st);
  auto Q = Q_.contiguous(), G = G_.contiguous(), A = A_.contiguous(), mask = mask_.contiguous();
  auto rhs = rhs_.contiguous();
  const int n = Q.size(-1), m = G.size(-2), p = A.size(-2);
  TORCH_CHECK(rhs.size(1) == n + m + p, "optlayers native: rhs must have n+m+p columns");
  auto u = at::empty_like(rhs);
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_kkt_solve_cpu", [&] {
    using T = scalar_t;
    const int64_t sQ = stride_of(Q, 2), sG = stride_of(G, 2), sA = stride_of(A, 2);
    const T *pQ = Q.data_ptr<T>(), *pG = G.data_ptr<T>(), *pA = A.data_ptr<T>();
    const T *pm = mask.data_ptr<T>(), *pr = rhs.data_ptr<T>();
    T* pu = u.data_ptr<T>();
    const int64_t N = n + m + p;
    const int64_t ws = optlayers::workspace_size(n, m, p);
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> work(ws);
      optlayers::SerialGroup g;
      for (int64_t i = begin; i < end; ++i) {
        optlayers::Problem<T> d{pQ + i * sQ, nullptr, pG + i * sG, nullptr, pA + i * sA, nullptr, n, m, p};
        optlayers::kkt_solve(g, d, pm + i * m, T(kkt_reg), pr + i * N, pu + i * N, work.data());
      }
    });
  });
  return u;
}

}  // namespace

TORCH_LIBRARY(optlayers, m) {
  m.def("qp_solve(Tensor Q, Tensor q, Tensor G, Tensor h, Tensor A, Tensor b, int batch, float tol, "
        "float inf_tol, float kkt_reg, float polish_tol, float step_to_boundary, int max_iter, bool polish) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("qp_kkt_solve(Tensor Q, Tensor G, Tensor A, Tensor mask, Tensor rhs, float kkt_reg) -> Tensor");
}

TORCH_LIBRARY_IMPL(optlayers, CPU, m) {
  m.impl("qp_solve", &qp_solve_cpu);
  m.impl("qp_kkt_solve", &qp_kkt_solve_cpu);
}
