"""Tools for testing code that uses optimization layers.

- :func:`check_grad` — central finite differences vs. autograd for any function.
- :func:`random_qp` — seeded feasible QPs with a planted, strictly complementary solution.
"""

from optlayers._src.testing.check_grad import GradCheckReport, check_grad
from optlayers._src.testing.random_qp import RandomQP, random_qp

__all__ = ["GradCheckReport", "RandomQP", "check_grad", "random_qp"]
