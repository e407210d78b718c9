"""Build (JIT, cached) and load the native QP ops from ``csrc/``.

The ops are compiled on first use with ``torch.utils.cpp_extension.load`` against the torch
that is already installed (no pip build isolation, so no second torch download) and cached in
``$OPTLAYERS_CACHE`` (default ``~/.cache/optlayers``), keyed by torch version and a hash of the
kernel sources (a changed source builds into a new directory). ``python -m optlayers.native build`` builds ahead of time.

If anything fails (no compiler, no sources, ``OPTLAYERS_NATIVE=0``), :func:`availability`
reports why, one warning is emitted, and ``backend="auto"`` uses the PyTorch backend.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import warnings

import torch

_ENV_DISABLE = "OPTLAYERS_NATIVE"
_ENV_CACHE = "OPTLAYERS_CACHE"


def source_dir() -> pathlib.Path | None:
    """``csrc/`` of the source checkout this package runs from (editable installs)."""
    here = pathlib.Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "csrc"
        if (cand / "optlayers" / "qp_ipm.h").is_file():
            return cand
    return None


def _cuda_buildable() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None


@functools.lru_cache(maxsize=None)
def _load(verbose: bool = False) -> tuple[bool, str]:
    if os.environ.get(_ENV_DISABLE, "1").lower() in ("0", "off", "false", "no"):
        return False, f"disabled by {_ENV_DISABLE}={os.environ[_ENV_DISABLE]}"
    src = source_dir()
    if src is None:
        return False, "the C++ sources (csrc/) were not found next to the package; install from a source checkout (pip install -e .)"
    try:
        from torch.utils import cpp_extension
    except Exception as exc:  # pragma: no cover - torch always ships it
        return False, f"torch.utils.cpp_extension unavailable: {exc}"
    cache = pathlib.Path(os.environ.get(_ENV_CACHE, pathlib.Path.home() / ".cache" / "optlayers"))
    cuda = _cuda_buildable()
    # Keyed by torch version, device kind and a hash of the kernel sources, so two checkouts (or two
    # versions of the ops' schemas) never build over each other's library.
    digest = hashlib.sha1()
    for f in sorted(src.rglob("*")):
        if f.suffix in (".h", ".cuh", ".cpp", ".cu") and f.is_file():
            digest.update(f.relative_to(src).as_posix().encode())
            digest.update(f.read_bytes())
    tag = (f"torch{torch.__version__.replace('+', '_').replace('.', '_')}" + ("_cuda" if cuda else "_cpu")
           + f"_{digest.hexdigest()[:12]}")
    build_dir = cache / f"native_{tag}"
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(src / "qp_cpu.cpp")]
    if cuda:
        # One translation unit per scalar type: the two -O3 device compilations run in parallel.
        sources += [str(src / "qp_cuda_float.cu"), str(src / "qp_cuda_double.cu"), str(src / "qp_cuda_binding.cpp")]
    try:
        cpp_extension.load(
            name=f"optlayers_native_{tag}",
            sources=sources,
            extra_include_paths=[str(src)],
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-DOPTLAYERS_WITH_CUDA=%d" % int(cuda)],
            extra_ldflags=["-fopenmp"],
            extra_cuda_cflags=["-O3"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()
        return False, f"building the native kernel failed: {first[-1] if first else type(exc).__name__}"
    return True, ""


_warned = False


def availability(*, warn: bool = True) -> tuple[bool, str]:
    """``(True, "")`` once the native ops are loaded, else ``(False, reason)``.

    Builds on first call (tens of seconds once; cached afterwards). Emits one warning per
    process when the build is unavailable and ``warn`` is set.
    """
    global _warned
    ok, why = _load()
    if not ok and warn and not _warned:
        _warned = True
        warnings.warn(f"optlayers: native QP kernel unavailable ({why}); using the PyTorch backend.", RuntimeWarning, stacklevel=3)
    return ok, why


def build(verbose: bool = True) -> tuple[bool, str]:
    """Build the native ops now (ahead of time); returns ``(ok, reason)``."""
    _load.cache_clear()
    return _load(verbose)
