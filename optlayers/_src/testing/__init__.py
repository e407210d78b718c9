"""Testing toolkit (public as :mod:`optlayers.testing`)."""
