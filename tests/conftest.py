"""Shared test fixtures: small seeded inputs, and the switch between the encoder's loop implementations."""

from __future__ import annotations

import os

# One thread for torch and for every process a test starts, unless the caller chose (set OMP_NUM_THREADS). The models
# here are small: one thread is about as fast on idle cores, and stays fast when other work shares them, where
# OpenMP threads spinning on each other made small training steps many times slower (the suite beside one
# quickstart fit on 2 cores). Set before torch loads, as the OpenMP runtime reads it then. The tests that need the
# threaded paths of the native loop ask for them with the ``two_threads`` fixture.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Triton's CPU interpreter for the fused kernel's tests (tests/test_kernels.py): it must be on before triton is first
# imported (torch._dynamo, loaded by lightning, imports it early), and nothing else in the suite runs triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from cfc_forecast.core import native
from cfc_forecast.core.native import native_available

# the encoder's implementations: the pure-PyTorch loop, the native loop (its raw-pointer loop where it applies,
# fused CPU kernels), the native loop over ATen views with the fused kernels, and the native loop with the
# device-generic ATen kernels (what runs on CUDA), and the raw loop with our own small GEMM instead of the BLAS
IMPLS = ["python", "native", "native-aten", "native-generic", "native-own-gemm"]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """Yields the encoder ``impl`` value to use, with the fused kernels switched as the case asks."""
    name = request.param
    if name != "python" and not native_available():
        if os.environ.get("CI"):
            pytest.fail("the native CfC loop did not build in CI")
        pytest.skip("the native CfC loop is not available here (no compiler)")
    monkeypatch.setattr(native, "ALLOW_FUSED", name != "native-generic")
    monkeypatch.setattr(native, "ALLOW_RAW", name in ("native", "native-own-gemm"))
    monkeypatch.setattr(native, "OWN_GEMM", name == "native-own-gemm")
    return "python" if name == "python" else "native"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def two_threads():
    """Two intra-op threads for one test (the native loop's and the BLAS's threaded paths), then the suite's again."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_synthetic():
    """A small SyntheticDataModule (8 irregular series, duration windows): builds in well under a second."""
    from datamodules import SyntheticDataModule

    dm = SyntheticDataModule(
        n_series=8, mean_observations=60, duration=40.0, observe=4.0, forecast=2.0, every=1.0, batch_size=16
    )
    dm.setup("fit")
    return dm


def model_for(dm, **kwargs):
    """A small ForecastModule with the data-derived sizes linked from ``dm``, as the CLI links them."""
    from cfc_forecast.forecaster.module import ForecastModule

    linked = dict(
        n_inputs=dm.n_inputs,
        n_targets=dm.n_targets,
        horizon=dm.horizon,
        lookback=dm.lookback,
        n_static=dm.n_static,
        n_future=dm.n_future,
        time_unit=dm.time_unit,
        target_inputs=dm.target_input_index,
        input_names=dm.input_names,
        target_names=dm.target_names,
    )
    small = dict(hidden_size=16, backbone_units=32, head_hidden_sizes=[16], query_cell_units=16)
    return ForecastModule(**{**linked, **small, **kwargs})
