// qp_solve's CPU kernel for float (qp_cpu_solve.h).
#include "qp_cpu_solve_impl.h"

template void optlayers_cpu::solve_typed<float>(const optlayers_cpu::SolveCall&);
