"""Dense batched QP layers: validation, backends, the shared KKT adjoint and the public API."""
