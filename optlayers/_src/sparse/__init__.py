"""Sparse QPs through OSQP with a sparse implicit backward (see ``optlayers/sparse.py``)."""
