"""Matrix-free linear solvers over pytrees (public as :mod:`optlayers.linear_solve`)."""
