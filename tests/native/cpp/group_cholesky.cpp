// The thread groups' Cholesky (csrc/optlayers/qp_ipm.h: `cholesky`, the variant of one lane set — a
// warp — and the panel variant of several — a block) against the serial one, on positive definite
// matrices and on matrices made indefinite at one pivot (first, inside, and past the first panel):
// the same verdict on every member, the same factor, and L mirrored above the diagonal.
// Output, one line per case: n bad lanes width serial_ok group_ok uniform max|L_group − L_serial| max|mirror|.
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "optlayers/qp_ipm.h"
#include "thread_group.h"

template <bool kOne>
void run(int n, int bad, int S, int L, std::mt19937& rng) {
  std::normal_distribution<double> N(0, 1);
  std::vector<double> A(n * n), K(n * n);
  for (auto& a : A) a = N(rng);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      double v = 0;
      for (int k = 0; k < n; ++k) v += A[i * n + k] * A[j * n + k];
      K[i * n + j] = v + (i == j ? 0.5 : 0.0);
    }
  if (bad >= 0) {  // row and column `bad` zero, its diagonal −1: the factorization fails at pivot `bad`
    for (int j = 0; j < n; ++j) K[bad * n + j] = K[j * n + bad] = 0;
    K[bad * n + bad] = -1;
  }
  auto Ks = K, Kg = K;
  const bool ser = optlayers::cholesky(optlayers::SerialGroup{}, Ks.data(), n);
  emulation::Shared sh(S, L);
  std::vector<int> res(S);
  std::vector<std::thread> members;
  for (int r = 0; r < S; ++r)
    members.emplace_back([&, r] { res[r] = optlayers::cholesky(emulation::ThreadGroup<kOne>{&sh, r, S, L}, Kg.data(), n); });
  for (auto& t : members) t.join();
  bool uniform = true;
  for (int r = 1; r < S; ++r) uniform &= res[r] == res[0];
  double diff = 0, mirror = 0;
  if (ser && res[0])
    for (int i = 0; i < n; ++i)
      for (int j = 0; j <= i; ++j) {
        diff = std::fmax(diff, std::fabs(Kg[i * n + j] - Ks[i * n + j]));
        if (j < i) mirror = std::fmax(mirror, std::fabs(Kg[j * n + i] - Kg[i * n + j]));
      }
  std::printf("%d %d %d %d %d %d %d %.3e %.3e\n", n, bad, S, L, int(ser), res[0], int(uniform), diff, mirror);
}

int main() {
  std::mt19937 rng(1);
  for (int n : {5, 8, 9, 17, 30})
    for (int bad : {-1, 0, 3, 8, 12, 25}) {
      if (bad >= n) continue;
      run<false>(n, bad, 8, 4, rng);   // a block: two lane sets of 4
      run<false>(n, bad, 3, 1, rng);   // three lane sets of 1
      run<true>(n, bad, 4, 4, rng);    // a warp: one lane set
    }
}
