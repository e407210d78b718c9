"""The runnable examples of the docs pages run as written (the other ``python`` blocks there are
signatures, e.g. ``solve(matvec, b, *, init=None, …)``). README.md's blocks: test_readme.py;
docs/sparse.md's quick start: tests/sparse/test_sparse_docs.py."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def _block(page: str, index: int) -> str:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)[index]


def _run(page: str, index: int) -> tuple[dict, str]:
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_block(page, index), f"{page} python block {index + 1}", "exec"), namespace)
    return namespace, out.getvalue()


def test_implicit_quick_example():
    _, printed = _run("implicit.md", 0)
    assert printed.split()[-2:] == ["True", "True"]  # the closed form, reverse and forward mode


def test_conic_quick_example():
    pytest.importorskip("cvxpy")
    ns, _ = _run("conic.md", 0)
    assert tuple(ns["x_star"].shape) == (32, 5) and tuple(ns["A_t"].grad.shape) == (7, 5)
