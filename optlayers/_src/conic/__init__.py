"""Conic layers: DPP CVXPY problems solved by SCS (or Clarabel) and differentiated through the
residual map of their optimality conditions. Public entry point: ``optlayers.conic``."""
