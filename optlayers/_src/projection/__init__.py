"""Euclidean projections and proximal operators (public as :mod:`optlayers.projection`)."""
