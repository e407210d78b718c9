// qp_solve's CPU kernel for one scalar type, compiled once per type (qp_cpu_solve_float.cpp,
// qp_cpu_solve_double.cpp) so that the build compiles the two in parallel; qp_cpu.cpp's qp_solve_cpu
// checks the inputs, allocates the outputs and dispatches here.
#pragma once
#include "qp_cpu_common.h"

namespace optlayers_cpu {

// The op's inputs (contiguous) and outputs (allocated) for solve_typed.
struct SolveCall {
  const at::Tensor &Q, &q, &G, &h, &A, &b;
  at::Tensor &x, &lam, &nu, &status, &iters, &factor;
  int64_t batch;
  int n, m, p;
  double tol, inf_tol, kkt_reg, polish_tol, polish_start, step_to_boundary;
  int64_t max_iter;
  bool polish, keep_factor;
};

// Routes the batch to the batch-interleaved lanes (qp_lanes.h), the serial per-problem solver
// (qp_ipm.h) or the small-problem kernel's host emulation (qp_small.h), then finishes float32
// failures in double. Instantiated for float and double only.
template <typename T>
void solve_typed(const SolveCall& c);

}  // namespace optlayers_cpu
