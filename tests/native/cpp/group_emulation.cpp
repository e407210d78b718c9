// Runs the thread-group ("CUDA") code path of csrc/optlayers/qp_ipm.h on the host: a group of S
// std::threads with a barrier for sync() and all-reduces through shared slots, i.e. the semantics
// of WarpGroup/BlockGroup in csrc/optlayers/qp_cuda_kernels.cuh. The CUDA kernels cannot run on a machine without a
// GPU, but their per-problem algorithm is this one; tests/native/test_native_group_path.py
// compares it with the serial (CPU) path problem by problem.
//
// Input (binary, little-endian): int64 count; then per problem int64 n, m, p and float64 Q, q, G,
// h, A, b (row-major). Usage: group_emulation FILE S K_SHARED FLOAT32 [L]: a group of S members in
// lane sets of L (default min(S, 32); L must divide S).
// Output per problem and path ("serial", "group"): status, x, lam, nu and the backward gradients
// dq, dh, db for gx = 1 (kkt_backward), one line each.
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "optlayers/qp_ipm.h"
#include "thread_group.h"

namespace {

using emulation::Shared;
using emulation::ThreadGroup;

template <typename T>
struct Data {
  int n, m, p;
  std::vector<T> Q, q, G, h, A, b;
  optlayers::Problem<T> problem() const {
    return optlayers::Problem<T>{Q.data(), q.data(), G.data(), h.data(), A.data(), b.data(), n, m, p};
  }
};

template <typename T>
void print(const char* tag, int idx, int8_t status, const std::vector<T>& x, const std::vector<T>& lam,
           const std::vector<T>& nu, const std::vector<T>& dq, const std::vector<T>& dh,
           const std::vector<T>& db) {
  std::printf("%s %d %d", tag, idx, int(status));
  for (const auto* v : {&x, &lam, &nu, &dq, &dh, &db})
    for (T e : *v) std::printf(" %.17g", double(e));
  std::printf("\n");
}

// Solve + backward (gx = 1) with group `g`; every member of a thread group calls this.
template <typename T, typename Grp>
void run(const Grp& g, const Data<T>& dat, const optlayers::Settings<T>& set, T* work, T* kshared, T* x, T* lam,
         T* nu, int8_t* st, int32_t* it, T* grads, const T* gx) {
  const auto d = dat.problem();
  optlayers::solve_qp(g, d, set, work, x, lam, nu, st, it, kshared);
  const int n = d.n, m = d.m, p = d.p;
  T* dQ = grads;
  T* dq = dQ + n * n;
  T* dG = dq + n;
  T* dh = dG + m * n;
  T* dA = dh + m;
  T* db = dA + p * n;
  if (*st == optlayers::kSolved)
    optlayers::kkt_backward(g, d, x, lam, nu, gx, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr),
                            set.kkt_reg, dQ, dq, dG, dh, dA, db, work);
  g.sync();
}

template <typename T>
int main_t(FILE* f, int S, int L, bool k_shared) {
  long long count = 0;
  if (std::fread(&count, 8, 1, f) != 1) return 2;
  const bool f32 = sizeof(T) == 4;
  optlayers::Settings<T> set{T(f32 ? 1e-5 : 1e-9), T(f32 ? 1e-4 : 1e-8), T(f32 ? 1e-7 : 1e-11),
                             T(f32 ? 1e-4 : 1e-9), T(0.99), 60, true, T(f32 ? 1e-2 : 1e-3)};
  for (long long idx = 0; idx < count; ++idx) {
    long long dims[3];
    if (std::fread(dims, 8, 3, f) != 3) return 2;
    Data<T> dat{int(dims[0]), int(dims[1]), int(dims[2]), {}, {}, {}, {}, {}, {}};
    const int n = dat.n, m = dat.m, p = dat.p;
    for (auto [v, k] : {std::pair{&dat.Q, n * n}, {&dat.q, n}, {&dat.G, m * n}, {&dat.h, m}, {&dat.A, p * n}, {&dat.b, p}}) {
      std::vector<double> raw(k);
      if (k && std::fread(raw.data(), 8, k, f) != size_t(k)) return 2;
      v->assign(raw.begin(), raw.end());
    }
    const int64_t ws = optlayers::backward_workspace_size(n, m, p);
    const int64_t gs = int64_t(n) * n + n + int64_t(m) * n + m + int64_t(p) * n + p;
    std::vector<T> gx(n, T(1));
    for (int path = 0; path < 2; ++path) {
      std::vector<T> work(ws, T(0)), x(n), lam(m), nu(p), grads(gs, T(0)), kshared(int64_t(n) * n);
      int8_t st = -1;
      int32_t it = 0;
      if (path == 0) {
        run(optlayers::SerialGroup{}, dat, set, work.data(), static_cast<T*>(nullptr), x.data(), lam.data(),
            nu.data(), &st, &it, grads.data(), gx.data());
      } else {
        Shared sh(S, L);
        std::vector<std::thread> lanes;
        for (int r = 0; r < S; ++r)
          lanes.emplace_back([&, r] {
            auto go = [&](auto grp) {
              run(grp, dat, set, work.data(), k_shared ? kshared.data() : nullptr, x.data(), lam.data(), nu.data(),
                  &st, &it, grads.data(), gx.data());
            };
            if (S == L)
              go(ThreadGroup<true>{&sh, r, S, L});
            else
              go(ThreadGroup<false>{&sh, r, S, L});
          });
        for (auto& l : lanes) l.join();
      }
      const T* dq = grads.data() + n * n;
      const T* dh = dq + n + m * n;
      const T* db = dh + m + p * n;
      print(path == 0 ? "serial" : "group", int(idx), st, x, lam, nu, std::vector<T>(dq, dq + n),
            std::vector<T>(dh, dh + m), std::vector<T>(db, db + p));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return 2;
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 2;
  const int S = std::atoi(argv[2]);
  const bool k_shared = std::atoi(argv[3]) != 0;
  const int L = argc > 5 ? std::atoi(argv[5]) : (S < 32 ? S : 32);
  if (S < 1 || L < 1 || S % L != 0) return 2;
  return std::atoi(argv[4]) ? main_t<float>(f, S, L, k_shared) : main_t<double>(f, S, L, k_shared);
}
