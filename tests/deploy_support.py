"""What the deployment tests share (Ray Data, Dask, MLflow): a small trained checkpoint, the optional packages
(skipped with the reason when missing, a failure under ``CI=true``), and a deadline for tests of real services."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest

from datamodules.synthetic import synthetic_frame

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["series", "origin_time", "time", "variable"]
TOL = 1e-5  # other batches of the same windows: float32 rounding apart


def need(name: str) -> ModuleType:
    """Import an optional package (``pip install 'cfc-forecast[deploy]'``): skip without it, fail in CI."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed in CI ({err}); .ci/run installs the [deploy] extra")
        pytest.skip(f"{name} is not installed (pip install 'cfc-forecast[deploy]'): {err}")


def fit_tiny(root: Path, n_series: int = 12) -> dict:
    """A tiny quantile model fitted for one epoch on synthetic series, its data and predict's forecasts."""
    from cfc_forecast.cli import cli

    data = root / "series.parquet"
    synthetic_frame(n_series, 60, 40.0, seed=1).write_parquet(data)
    common = ["--data=SeriesDataModule", f"--data.path={data}", "--data.id_column=series", "--data.time_unit=s",
              "--data.observe=4", "--data.forecast=2", "--data.every=1", "--data.batch_size=16"]  # fmt: skip
    model = ["--model.hidden_size=8", "--model.backbone_units=16", "--model.query_cell_units=8",
             "--model.loss=pinball", "--model.quantiles=[0.1, 0.5, 0.9]"]  # fmt: skip
    old = sys.argv
    sys.argv = ["cfc-forecast"]
    try:
        cli(["fit", *common, *model, f"--run_dir={root / 'run'}", "--trainer.max_epochs=1", "--seed_everything=0",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])  # fmt: skip
        ckpt = root / "run" / "checkpoints" / "last.ckpt"
        cli(["predict", f"--ckpt_path={ckpt}", f"--data.path={data}", f"--run_dir={root / 'p'}"])
    finally:
        sys.argv = old
    predicted = pl.read_parquet(root / "p" / "predictions.parquet")
    return {"ckpt": ckpt, "data": data, "run": root / "run", "predict": predicted}


def assert_same_forecasts(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """The same rows (keys equal, none twice) and the same numbers within ``TOL``."""
    import numpy as np

    a, b = a.sort(KEYS), b.sort(KEYS)
    assert a.columns == b.columns
    assert a.select(KEYS).equals(b.select(KEYS))
    assert a.select(KEYS).is_duplicated().sum() == 0
    for c in a.columns[len(KEYS) :]:
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=TOL, atol=TOL)


@pytest.fixture
def deadline():
    """Fail a test of a real service that runs over 120 s (a starved Ray pool waits forever without an error)."""

    def expired(signum, frame):
        raise TimeoutError("the test ran over its 120 s deadline")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
