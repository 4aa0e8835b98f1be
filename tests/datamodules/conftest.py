"""Fixtures for the DataModule tests: the real-data folder (skip without it, fail on CI) and tiny frames."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from datamodules.paths import data_dir


def real_data(*parts: str) -> Path:
    """Path of a real dataset under the data folder; skips when absent, fails when ``CI`` is set."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        message = f"real data not found at {path} (set CFC_FORECAST_DATA or provide ../shared/data)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def physionet_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("physionet_cache")


@pytest.fixture
def tiny_wide() -> pl.DataFrame:
    """Two series, integer times, one missing value: a (6 rows) and b (5 rows)."""
    return pl.DataFrame(
        {
            "id": ["a"] * 6 + ["b"] * 5,
            "time": [0.0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4],
            "x": [1.0, 2, None, 4, 5, 6, 10, 11, 12, 13, 14],
            "y": [0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        }
    )
