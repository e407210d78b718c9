"""Build (JIT, cached) and load the native QP ops from ``csrc/``.

The ops are compiled on first use with ``torch.utils.cpp_extension.load`` against the torch
that is already installed (no pip build isolation, so no second torch download) and cached in
``$OPTLAYERS_CACHE`` (default ``~/.cache/optlayers``), keyed by torch version and a hash of the
kernel sources (a changed source builds into a new directory). ``python -m optlayers.native build`` builds ahead of time.
``python -m optlayers.native cuda-objects DIR`` compiles just the CUDA kernels (nvcc only, no GPU
needed); ``OPTLAYERS_CUDA_OBJECTS=DIR`` then makes a GPU machine's build link those instead of
compiling them (falling back to compiling if they are stale or do not link).

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
# A folder with the CUDA kernels compiled ahead of time (cuda_objects below): the JIT build then
# compiles only the host C++ and links them. For a GPU machine lent for a few minutes, where the
# two -O3 device compilations would take most of the time; nvcc compiles them anywhere.
_ENV_CUDA_OBJECTS = "OPTLAYERS_CUDA_OBJECTS"
_CUDA_UNITS = ("qp_cuda_float", "qp_cuda_double")
_CPU_UNITS = ("qp_cpu", "qp_cpu_solve_float", "qp_cpu_solve_double", "qp_cpu_derivatives")


def source_dir() -> pathlib.Path | None:
    """``csrc/`` of the source checkout this package runs from (editable installs)."""
    here = pathlib.Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "csrc"
        if (cand / "optlayers" / "qp_ipm.h").is_file():
            return cand
    return None


def source_digest(src: pathlib.Path) -> str:
    """sha1 of the kernel sources (names and contents of every .h/.cuh/.cpp/.cu under csrc/)."""
    digest = hashlib.sha1()
    for f in sorted(src.rglob("*")):
        if f.suffix in (".h", ".cuh", ".cpp", ".cu") and f.is_file():
            digest.update(f.relative_to(src).as_posix().encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()


def cuda_objects(out_dir: str | os.PathLike, arch: str = "sm_90", nvcc: str = "nvcc") -> list[str]:
    """Compile the torch-free CUDA units of csrc/ to objects in ``out_dir`` (with a stamp of the
    sources' digest), for ``OPTLAYERS_CUDA_OBJECTS``. Needs only nvcc, not a GPU or torch's CUDA."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    src = source_dir()
    if src is None:
        raise RuntimeError("csrc/ not found")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def one(unit: str) -> str:
        obj = out / f"{unit}.o"
        subprocess.run([nvcc, "-std=c++17", "-O3", f"-arch={arch}", "-Xcompiler", "-fPIC", f"-I{src}", "-c",
                        str(src / f"{unit}.cu"), "-o", str(obj)], check=True)
        return str(obj)

    with ThreadPoolExecutor(len(_CUDA_UNITS)) as pool:
        objs = list(pool.map(one, _CUDA_UNITS))
    (out / "sources.sha1").write_text(source_digest(src) + "\n")
    return objs


def _prebuilt_objects(digest: str) -> list[str] | None:
    """The objects of $OPTLAYERS_CUDA_OBJECTS if they were built from these sources, else None."""
    folder = os.environ.get(_ENV_CUDA_OBJECTS)
    if not folder:
        return None
    d = pathlib.Path(folder)
    objs = [d / f"{u}.o" for u in _CUDA_UNITS]
    stamp = d / "sources.sha1"
    if not (all(o.is_file() for o in objs) and stamp.is_file() and stamp.read_text().strip() == digest):
        warnings.warn(f"optlayers: {_ENV_CUDA_OBJECTS}={folder} holds no objects of these sources; compiling them",
                      RuntimeWarning, stacklevel=2)
        return None
    return [str(o) for o in objs]


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
    digest = source_digest(src)
    tag = (f"torch{torch.__version__.replace('+', '_').replace('.', '_')}" + ("_cuda" if cuda else "_cpu")
           + f"_{digest[:12]}")
    objects = _prebuilt_objects(digest) if cuda else None

    def build(tag: str, sources: list[str], objects: list[str]) -> None:
        build_dir = cache / f"native_{tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name=f"optlayers_native_{tag}",
            sources=sources,
            extra_include_paths=[str(src)],
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-DOPTLAYERS_WITH_CUDA=%d" % int(cuda)],
            extra_ldflags=["-fopenmp", *objects],
            extra_cuda_cflags=["-O3"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
            with_cuda=cuda,
        )

    # The CPU ops in four units (csrc/qp_cpu_common.h): ninja compiles them in parallel (MAX_JOBS).
    cpu_units = [str(src / f"{u}.cpp") for u in _CPU_UNITS]
    host = cpu_units + ([str(src / "qp_cuda_binding.cpp")] if cuda else [])
    try:
        if objects is not None:
            try:
                build(tag + "_pre", host, objects)
                return True, ""
            except Exception as exc:  # e.g. objects from another CUDA version: compile them after all
                warnings.warn(f"optlayers: linking the prebuilt CUDA objects failed ({exc}); compiling them",
                              RuntimeWarning, stacklevel=2)
        # One translation unit per scalar type: the two -O3 device compilations run in parallel.
        device = [str(src / f"{u}.cu") for u in _CUDA_UNITS] if cuda else []
        build(tag, cpu_units + device + host[len(cpu_units):], [])
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
