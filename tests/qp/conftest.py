"""``backend`` fixture: every dense QP backend must meet the same contract.

``"native"`` (the csrc/ kernel, JIT-built and cached on first use) is skipped with the reason
when it cannot be built here; ``"torch"`` is always available.
"""

import pytest


@pytest.fixture(params=["torch", "native"])
def backend(request):
    if request.param == "native":
        from optlayers._src.native.backend import native_status

        ok, why = native_status()
        if not ok:
            pytest.skip(f"native backend unavailable: {why}")
    return request.param
