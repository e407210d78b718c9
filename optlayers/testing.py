"""Tools for testing code that uses optimization layers.

- :func:`check_grad` — central finite differences vs. autograd for any function.
- :func:`random_qp` — seeded feasible QPs with a planted, strictly complementary solution.
- :func:`hard_qps` — seeded batches of degenerate, infeasible and unbounded QPs whose answer is
  known by construction (``FAMILIES``).
"""

from optlayers._src.testing.check_grad import GradCheckReport, check_grad
from optlayers._src.testing.hard_qps import FAMILIES, HardQPs, hard_qps
from optlayers._src.testing.random_qp import RandomQP, random_qp

__all__ = ["FAMILIES", "GradCheckReport", "HardQPs", "RandomQP", "check_grad", "hard_qps", "random_qp"]
