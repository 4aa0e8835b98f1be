"""Shared test fixtures: small seeded inputs, and the switch between the encoder's loop implementations."""

from __future__ import annotations

import pytest
import torch

from cfc_forecast import native
from cfc_forecast.native import native_available

# the encoder's implementations: the pure-PyTorch loop, the native loop with fused CPU kernels, and the native
# loop with the device-generic ATen kernels (what runs on CUDA)
IMPLS = ["python", "native", "native-generic"]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """Yields the encoder ``impl`` value to use, with the fused kernels switched as the case asks."""
    name = request.param
    if name != "python" and not native_available():
        if __import__("os").environ.get("CI"):
            pytest.fail("the native CfC loop did not build in CI")
        pytest.skip("the native CfC loop is not available here (no compiler)")
    monkeypatch.setattr(native, "ALLOW_FUSED", name != "native-generic")
    return "python" if name == "python" else "native"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
