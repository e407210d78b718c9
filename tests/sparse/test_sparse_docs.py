"""The quick start of docs/sparse.md runs as written and prints what the page shows."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "sparse.md"


def test_quick_start_runs_and_matches_the_page():
    pytest.importorskip("osqp")
    import optlayers as ol

    text = DOC.read_text()
    code, shown = re.search(r"## Quick start\n\n```python\n(.*?)```\n\n```\n(.*?)```", text, re.S).groups()
    ol.sparse.clear_cache()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {})
    assert out.getvalue().split() == shown.split()
