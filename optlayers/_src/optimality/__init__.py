"""Optimality conditions for implicit differentiation (public as :mod:`optlayers.optimality`)."""
