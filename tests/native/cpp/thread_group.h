// A thread group of real threads for the host emulation of the CUDA code path of
// csrc/optlayers/qp_ipm.h (see group_emulation.cpp): S std::threads in lane sets of L, a barrier for
// sync() and lane_sync(), all-reduces through shared slots — the semantics of WarpGroup/BlockGroup in
// csrc/optlayers/qp_cuda_kernels.cuh.
#pragma once

#include <barrier>
#include <memory>
#include <vector>

#include "optlayers/qp_ipm.h"

namespace emulation {

struct Shared {
  // s members in lane sets of `lanes` (lanes divides s), each set with its own barrier and slots.
  Shared(int s, int lanes) : bar(s), slots(s), lane_slots(s), index_slots(s), lane_bars(s / lanes) {
    for (auto& b : lane_bars) b = std::make_unique<std::barrier<>>(lanes);
  }
  std::barrier<> bar;
  std::vector<double> slots, lane_slots, index_slots;
  std::vector<std::unique_ptr<std::barrier<>>> lane_bars;
};

// kOne: one lane set (S = L, a warp's code paths), else several (a block's).
template <bool kOne>
struct ThreadGroup {
  static constexpr bool kSerial = false;
  static constexpr bool kOneLaneSet = kOne;
  Shared* sh;
  int r, s, l;
  int rank() const { return r; }
  int size() const { return s; }
  int lanes() const { return l; }
  void sync() const { sh->bar.arrive_and_wait(); }
  // (v, i) with the largest v, the smallest i among ties, over the whole group.
  template <typename T>
  int argmax(T v, int i) const {
    sh->slots[r] = double(v);
    sh->index_slots[r] = double(i);
    sync();
    double bv = sh->slots[0];
    int bi = int(sh->index_slots[0]);
    for (int k = 1; k < s; ++k)
      if (optlayers::argmax_better(sh->slots[k], int(sh->index_slots[k]), bv, bi)) {
        bv = sh->slots[k];
        bi = int(sh->index_slots[k]);
      }
    sync();
    return bi;
  }
  // Barrier of this member's lane set (__syncwarp on the GPU): only the set's members take part.
  void lane_sync() const { sh->lane_bars[r / l]->arrive_and_wait(); }
  // Sum over this member's lane set (a warp shuffle on the GPU): only the set's members take part.
  template <typename T>
  T lane_sum(T v) const {
    std::barrier<>& bar = *sh->lane_bars[r / l];
    sh->lane_slots[r] = double(v);
    bar.arrive_and_wait();
    double acc = 0;
    for (int i = r / l * l; i < r / l * l + l; ++i) acc += sh->lane_slots[i];
    bar.arrive_and_wait();
    return T(acc);
  }
  template <typename T>
  T reduce(T v, bool is_max) const {
    sh->slots[r] = double(v);
    sync();
    double acc = sh->slots[0];
    for (int i = 1; i < s; ++i) acc = is_max ? (sh->slots[i] > acc ? sh->slots[i] : acc) : acc + sh->slots[i];
    sync();
    return T(acc);
  }
  template <typename T>
  T sum(T v) const { return reduce(v, false); }
  template <typename T>
  T max(T v) const { return reduce(v, true); }
};

}  // namespace emulation
