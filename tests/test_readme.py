"""Every ``python`` block of README.md runs, in order, in one namespace (as a reader would paste
them), so the documented API cannot drift from the real one."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    # spot checks of what the blocks compute
    H = namespace["H"]
    assert H.shape == (2, 2) and abs(float(H[0, 0]) + 0.5) < 1e-12
    assert namespace["J"].shape == (8, 2, 2)
