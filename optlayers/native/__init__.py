"""The native QP kernel (csrc/): availability and ahead-of-time build.

``status()`` tells whether ``backend="native"`` is usable here and, if not, why. The kernel is
compiled on first use (tens of seconds, once; cached under ``~/.cache/optlayers`` or
``$OPTLAYERS_CACHE``); ``python -m optlayers.native build`` compiles it ahead of time; ``python -m optlayers.native
cuda-objects DIR`` compiles only the CUDA kernels (nvcc, no GPU needed) for ``OPTLAYERS_CUDA_OBJECTS=DIR``.
Set ``OPTLAYERS_NATIVE=0`` to disable it (``backend="auto"`` then uses the PyTorch backend).
"""

from __future__ import annotations

from optlayers._src.native.backend import native_status as status
from optlayers._src.native.build import build as _build

__all__ = ["build", "status"]


def build(verbose: bool = True) -> tuple[bool, str]:
    """Compile (or load the cached) native kernel now; returns ``(ok, reason)``."""
    ok, why = _build(verbose)
    if ok:
        from optlayers._src.native import ops

        ops.ensure_loaded(warn=False)
    return ok, why
