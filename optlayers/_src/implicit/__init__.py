"""Generic implicit differentiation (public as :mod:`optlayers.implicit`).

Submodules are imported explicitly by their users (``optlayers.implicit``,
``optlayers._src.linear_solve``); this file imports nothing, so that the pytree helpers can be
used by the linear solvers without an import cycle.
"""
