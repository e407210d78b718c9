"""``python -m optlayers.native build | cuda-objects DIR`` (see :mod:`optlayers.native`). A package's
``__main__`` rather than a module run as a script: that had printed runpy's "found in sys.modules"
RuntimeWarning on every call, since importing optlayers imports optlayers.native first."""

from __future__ import annotations

import sys

from optlayers.native import build


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "cuda-objects":
        from optlayers._src.native.build import cuda_objects

        print("\n".join(cuda_objects(argv[1])))
        return 0
    if argv != ["build"]:
        print("usage: python -m optlayers.native build | cuda-objects DIR", file=sys.stderr)
        return 0 if argv in (["-h"], ["--help"]) else 2
    ok, why = build(verbose=True)
    print("native kernel: " + ("available" if ok else f"unavailable ({why})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
