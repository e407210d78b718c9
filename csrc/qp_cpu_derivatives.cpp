// The CPU kernels of the ops that differentiate a solution or solve a guessed active set (see the
// op list in qp_cpu.cpp): qp_kkt_solve, qp_active_set_solve (the warm start) and qp_backward.
#include "qp_cpu_common.h"

namespace optlayers_cpu {

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
    if (small_kkt(n, m, p)) {
      with_small_tile(n, [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        for_each_dynamic<T>(batch, ws, [&](int64_t i, T* work) {
          thread_local optlayers::small::Rows<T> rows;
          const optlayers::small::Data<T> d{pQ + i * sQ, nullptr, pG + i * sG, nullptr, n, m};
          if (optlayers::small::kkt_solve<T, NT>(d, pm + i * m, T(kkt_reg), pr + i * N, rows, pu + i * N)) return;
          optlayers::Problem<T> dp{pQ + i * sQ, nullptr, pG + i * sG, nullptr, pA + i * sA, nullptr, n, m, p};
          optlayers::kkt_solve(optlayers::SerialGroup{}, dp, pm + i * m, T(kkt_reg), pr + i * N, pu + i * N, work);
        });
      });
      return;
    }
    for_each_dynamic<T>(batch, ws, [&](int64_t i, T* work) {
      optlayers::SerialGroup g;
      optlayers::Problem<T> d{pQ + i * sQ, nullptr, pG + i * sG, nullptr, pA + i * sA, nullptr, n, m, p};
      optlayers::kkt_solve(g, d, pm + i * m, T(kkt_reg), pr + i * N, pu + i * N, work);
    });
  });
  return u;
}


// Warm start (optlayers/_src/qp/warm_start.py): per problem, the KKT system of a guessed active set
// (guess (B, m), nonzero = active) through the polish — its solve, acceptance test (primal
// feasibility, multiplier signs and KKT residual to polish_tol, exactly the interior point's final
// test), the NNLS multiplier repair, and rounds − 1 corrected guesses (violated rows join, rows with
// negative multipliers leave). Status SOLVED with x, λ, ν where a guess is accepted; MAX_ITER (x, λ,
// ν zero) where none is: the caller solves those from scratch. With keep_factor the accepted
// polish LU is kept as qp_solve keeps it (for qp_backward; k = −1 where there is none). The polish
// reads its guess as {r : λ̂_r > h_r − g_rᵀx}; it gets x = 0 and λ̂_r = ±∞, so the guess is exactly
// the given one (its multiplier-shifted second solve, which needs a finite λ̂, changes nothing).
// float64 batches the lanes path takes (use_lanes) are polished W problems a block
// (qp_lanes.h::guess_block, as qp_solve polishes them); otherwise problems with n ≤ 16, m ≤ 128,
// p = 0 take qp_small.h's polish (double precision, n×n Cholesky), the rest qp_ipm.h's (compact
// LU); the small-problem shift-less duplicate solve is skipped. One op call, no Python per round:
// it replaced ~20 tensor ops a round around qp_kkt_solve (benchmarks/warm_start.py).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_active_set_solve_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_, const at::Tensor& A_,
    const at::Tensor& b_, const at::Tensor& guess_, double kkt_reg, double polish_tol, int64_t rounds,
    bool keep_factor) {
  const auto st = q_.scalar_type();
  const int64_t batch = guess_.dim() == 2 ? guess_.size(0) : -1;
  TORCH_CHECK(batch >= 0, "optlayers native: guess must be (batch, m)");
  check_data(Q_, "Q", 2, batch, st); check_data(q_, "q", 1, batch, st);
  check_data(G_, "G", 2, batch, st); check_data(h_, "h", 1, batch, st);
  check_data(A_, "A", 2, batch, st); check_data(b_, "b", 1, batch, st);
  check_data(guess_, "guess", 1, batch, st);
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), h = h_.contiguous();
  auto A = A_.contiguous(), b = b_.contiguous(), guess = guess_.contiguous();
  const int n = q.size(-1), m = h.size(-1), p = b.size(-1);
  TORCH_CHECK(m > 0 && guess.size(1) == m, "optlayers native: guess must be (batch, m) with m > 0");
  TORCH_CHECK(rounds >= 1, "optlayers native: rounds must be positive");
  auto opts = q.options();
  auto x = at::zeros({batch, n}, opts), lam = at::zeros({batch, m}, opts), nu = at::zeros({batch, p}, opts);
  auto status = at::full({batch}, int8_t(optlayers::kMaxIter), opts.dtype(at::kChar));
  const int64_t fs = optlayers::factor_size(n, m, p);
  auto factor = keep_factor ? at::zeros({batch, fs}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_active_set_solve_cpu", [&] {
    using T = scalar_t;
    optlayers::Settings<T> set{T(0), T(0), T(kkt_reg), T(polish_tol), T(0), 0, true, T(0)};
    const int64_t sQ = stride_of(Q, 2), sq = stride_of(q, 1), sG = stride_of(G, 2), sh = stride_of(h, 1);
    const int64_t sA = stride_of(A, 2), sb = stride_of(b, 1);
    const T *pQ = Q.data_ptr<T>(), *pq = q.data_ptr<T>(), *pG = G.data_ptr<T>(), *ph = h.data_ptr<T>();
    const T *pA = A.data_ptr<T>(), *pb = b.data_ptr<T>(), *pg = guess.data_ptr<T>();
    T *px = x.data_ptr<T>(), *pl = lam.data_ptr<T>(), *pn = nu.data_ptr<T>();
    int8_t* ps = status.data_ptr<int8_t>();
    T* pf = keep_factor ? factor.data_ptr<T>() : nullptr;
    const T inf = std::numeric_limits<T>::infinity();
    constexpr int W = optlayers::lanes::width<T>();
    // Problem i through qp_small.h's polish (status SOLVED where accepted); nt: the tile.
    auto small_guess = [&](auto nt, int64_t i) {
      namespace sm = optlayers::small;
      thread_local sm::Rows<T> rows;
      const sm::Data<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, n, m};
      if (sm::polish_guess<T, decltype(nt)::value>(d, set, pg + i * m, rows, int(rounds), px + i * n, pl + i * m))
        ps[i] = optlayers::kSolved;
    };
    if (pf == nullptr && optlayers::lanes::block_kkt<T>() && use_lanes(n, m, p, batch, W)) {
      // float64 batches of small problems: W problems a block through the lanes' polish
      // (qp_lanes.h::guess_block), as qp_solve polishes them. Lanes the block does not accept go
      // on to qp_small.h's polish where it takes them (its n×n Cholesky: on 4,800 grasp QPs,
      // whose degenerate guesses are often rejected by the block round, the op took 22.9 ms with
      // the serial LU polish there), else to the serial polish.
      const optlayers::lanes::BatchData<T> bd{pQ, pq, pG, ph, pA, pb, sQ, sq, sG, sh, sA, sb, n, m, p};
      const bool small_rest = optlayers::small::eligible(n, m, p);
      with_small_tile(n, [&](auto nt) {
        for_each_block<T>((batch + W - 1) / W, optlayers::lanes::block_vectors(n, m, p),
                          optlayers::lanes::polish_scalars(n, m, p), [&](int64_t blk, auto* vw, T* sw) {
          const int64_t i0 = blk * W;
          const int count = int(std::min<int64_t>(W, batch - i0));
          optlayers::lanes::guess_block<T>(bd, i0, count, pg + i0 * m, set, vw, sw, px + i0 * n, pl + i0 * m,
                                           pn + i0 * p, ps + i0, int(rounds), !small_rest);
          if (!small_rest) return;
          for (int64_t i = i0; i < i0 + count; ++i)
            if (ps[i] != optlayers::kSolved) small_guess(nt, i);
        });
      });
      return;
    }
    if (optlayers::small::eligible(n, m, p)) {
      if (pf != nullptr) {  // qp_small.h's polish keeps no LU: k = −1 marks "no usable factor"
        for (int64_t i = 0; i < batch; ++i) pf[i * fs + fs - 1] = T(-1);
      }
      with_small_tile(n, [&](auto nt) { for_each_dynamic<T>(batch, 1, [&](int64_t i, T*) { small_guess(nt, i); }); });
      return;
    }
    for_each_dynamic<T>(batch, optlayers::polish_workspace_size(n, m, p), [&](int64_t i, T* work) {
      optlayers::SerialGroup g;
      optlayers::Problem<T> d{pQ + i * sQ, pq + i * sq, pG + i * sG, ph + i * sh, pA + i * sA, pb + i * sb, n, m, p};
      T* xi = px + i * n;
      T* li = pl + i * m;
      for (int r = 0; r < m; ++r) li[r] = pg[i * m + r] != T(0) ? inf : -inf;
      int8_t st_i = optlayers::kMaxIter;
      T* keep = pf != nullptr ? pf + i * fs : nullptr;
      if (optlayers::polish(g, d, set, work, xi, li, pn + i * p, &st_i, int(rounds), keep)) {
        ps[i] = optlayers::kSolved;
        return;
      }
      if (keep != nullptr) keep[fs - 1] = T(-1);
      for (int j = 0; j < n; ++j) xi[j] = T(0);
      for (int r = 0; r < m; ++r) li[r] = T(0);
      for (int e = 0; e < p; ++e) pn[i * p + e] = T(0);
    });
  });
  return {x, lam, nu, status, factor};
}

// Reverse-mode gradients of qp_solve (see optlayers::kkt_backward). Problems with status ≠ 0
// contribute nothing. Shared inputs are summed over the batch: the batch is cut into a fixed
// number of contiguous chunks (independent of the thread count), each chunk sums into its own
// buffer, and the buffers are added in chunk order, so results do not depend on scheduling.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> qp_backward_cpu(
    const at::Tensor& Q_, const at::Tensor& q_, const at::Tensor& G_, const at::Tensor& h_,
    const at::Tensor& A_, const at::Tensor& b_, const at::Tensor& x_, const at::Tensor& lam_,
    const at::Tensor& nu_, const at::Tensor& status_, const at::Tensor& factor_, const std::optional<at::Tensor>& gx_,
    const std::optional<at::Tensor>& glam_, const std::optional<at::Tensor>& gnu_, double kkt_reg, int64_t needs) {
  const auto st = x_.scalar_type();
  const int64_t batch = x_.size(0);
  check_data(Q_, "Q", 2, batch, st); check_data(q_, "q", 1, batch, st);
  check_data(G_, "G", 2, batch, st); check_data(h_, "h", 1, batch, st);
  check_data(A_, "A", 2, batch, st); check_data(b_, "b", 1, batch, st);
  TORCH_CHECK(status_.scalar_type() == at::kChar && status_.numel() == batch, "optlayers native: bad status");
  auto Q = Q_.contiguous(), q = q_.contiguous(), G = G_.contiguous(), h = h_.contiguous();
  auto A = A_.contiguous(), b = b_.contiguous(), x = x_.contiguous(), lam = lam_.contiguous();
  auto nu = nu_.contiguous(), status = status_.contiguous(), factor = factor_.contiguous();
  auto opt = [](const std::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); };
  auto gx = opt(gx_), glam = opt(glam_), gnu = opt(gnu_);
  const int n = x.size(1), m = lam.size(1), p = nu.size(1);
  std::array<at::Tensor, 6> ins{Q, q, G, h, A, b};
  std::array<at::Tensor, 6> outs;
  // Bit k of `needs`: gradient k wanted (else an empty tensor, and its outer products are skipped:
  // ∇Q and ∇G are B·n² and B·m·n numbers, most of the work when only ∇q is wanted).
  auto wanted = [&](int k) { return ((needs >> k) & 1) != 0; };
  for (int k = 0; k < 6; ++k) outs[k] = wanted(k) ? at::zeros_like(ins[k]) : at::empty({0}, ins[k].options());
  AT_DISPATCH_FLOATING_TYPES(st, "optlayers_qp_backward_cpu", [&] {
    using T = scalar_t;
    std::array<int64_t, 6> stride;
    std::array<int64_t, 6> core;  // elements of one problem's slice
    std::array<T*, 6> out_ptr;
    std::array<const T*, 6> in_ptr;
    for (int k = 0; k < 6; ++k) {
      const int64_t cd = (k % 2 == 0) ? 2 : 1;
      stride[k] = stride_of(ins[k], cd);
      core[k] = ins[k].dim() > cd ? stride[k] : ins[k].numel();
      out_ptr[k] = wanted(k) ? outs[k].data_ptr<T>() : nullptr;
      in_ptr[k] = ins[k].data_ptr<T>();
    }
    const T *px = x.data_ptr<T>(), *pl = lam.data_ptr<T>(), *pn = nu.data_ptr<T>();
    const int8_t* ps = status.data_ptr<int8_t>();
    const int64_t fs = optlayers::factor_size(n, m, p);
    TORCH_CHECK(factor.numel() == 0 || (factor.dim() == 2 && factor.size(0) == batch && factor.size(1) == fs &&
                                        factor.scalar_type() == st),
                "optlayers native: factor must be empty or (batch, ", fs, ")");
    const T* pf = factor.numel() ? factor.data_ptr<T>() : nullptr;
    const T* pgx = gx.defined() ? gx.data_ptr<T>() : nullptr;
    const T* pgl = glam.defined() ? glam.data_ptr<T>() : nullptr;
    const T* pgn = gnu.defined() ? gnu.data_ptr<T>() : nullptr;
    // Chunk buffers only for shared inputs.
    int64_t shared_elems = 0;
    std::array<int64_t, 6> shared_off;
    for (int k = 0; k < 6; ++k) {
      shared_off[k] = shared_elems;
      if (stride[k] == 0 && wanted(k)) shared_elems += core[k];
    }
    // Where problem i's gradients go: its own slice, or chunk buffer `buf` for shared inputs (null:
    // not wanted).
    auto outputs = [&](int64_t i, T* buf) {
      std::array<T*, 6> o;
      for (int k = 0; k < 6; ++k)
        o[k] = !wanted(k) ? nullptr : stride[k] ? out_ptr[k] + i * stride[k] : buf + shared_off[k];
      return o;
    };
    constexpr int W = optlayers::lanes::width<T>();
    const bool lanes = pf == nullptr && optlayers::lanes::block_kkt<T>() && use_lanes(n, m, p, batch, W);
    // Chunks: of whole blocks for the lanes, of problems otherwise.
    const int64_t blocks = (batch + W - 1) / W;
    const int64_t units = lanes ? blocks : batch;
    const int64_t chunks = shared_elems > 0 ? std::min<int64_t>(units, 32) : std::min<int64_t>(units, lanes ? units : 1024);
    std::vector<T> acc(shared_elems > 0 ? chunks * shared_elems : 0, T(0));
    auto chunk_buf = [&](int64_t c) { return acc.empty() ? static_cast<T*>(nullptr) : acc.data() + c * shared_elems; };
    if (lanes) {
      const optlayers::lanes::BatchData<T> bd{in_ptr[0], in_ptr[1], in_ptr[2], in_ptr[3], in_ptr[4], in_ptr[5],
                                              stride[0], stride[1], stride[2], stride[3], stride[4], stride[5],
                                              n, m, p};
      for_each_block<T>(chunks, optlayers::lanes::block_vectors(n, m, p), optlayers::lanes::polish_scalars(n, m, p),
                        [&](int64_t c, auto* vw, T* sw) {
        T* buf = chunk_buf(c);
        auto out = [&](int64_t i) { return outputs(i, buf); };
        for (int64_t blk = blocks * c / chunks; blk < blocks * (c + 1) / chunks; ++blk) {
          const int64_t i0 = blk * W;
          optlayers::lanes::backward_block<T>(bd, px, pl, pn, ps, pgx, pgl, pgn, i0,
                                              int(std::min<int64_t>(W, batch - i0)), T(kkt_reg), vw, sw, out);
        }
      });
    } else {
      const int64_t ws = optlayers::backward_workspace_size(n, m, p);
      for_each_dynamic<T>(chunks, ws, [&](int64_t c, T* work) {
        optlayers::SerialGroup g;
        const int64_t i0 = batch * c / chunks, i1 = batch * (c + 1) / chunks;
        T* buf = chunk_buf(c);
        for (int64_t i = i0; i < i1; ++i) {
          if (ps[i] != 0) continue;
          const auto o = outputs(i, buf);
          optlayers::Problem<T> d{in_ptr[0] + i * stride[0], in_ptr[1] + i * stride[1], in_ptr[2] + i * stride[2],
                                  in_ptr[3] + i * stride[3], in_ptr[4] + i * stride[4], in_ptr[5] + i * stride[5],
                                  n, m, p};
          optlayers::kkt_backward(g, d, px + i * n, pl + i * m, pn + i * p, pgx ? pgx + i * n : nullptr,
                                  pgl ? pgl + i * m : nullptr, pgn ? pgn + i * p : nullptr, T(kkt_reg), o[0], o[1],
                                  o[2], o[3], o[4], o[5], work, pf ? pf + i * fs : nullptr);
        }
      });
    }
    for (int k = 0; k < 6; ++k) {
      if (stride[k] != 0 || !wanted(k)) continue;
      T* dst = out_ptr[k];
      for (int64_t c = 0; c < chunks; ++c) {
        const T* src = acc.data() + c * shared_elems + shared_off[k];
        for (int64_t e = 0; e < core[k]; ++e) dst[e] += src[e];
      }
    }
  });
  return {outs[0], outs[1], outs[2], outs[3], outs[4], outs[5]};
}

}  // namespace optlayers_cpu
