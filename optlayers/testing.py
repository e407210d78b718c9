"""Tools for testing code that uses optimization layers.

- :func:`check_grad` — central finite differences vs. autograd for any function.
"""

from optlayers._src.testing.check_grad import GradCheckReport, check_grad

__all__ = ["GradCheckReport", "check_grad"]
