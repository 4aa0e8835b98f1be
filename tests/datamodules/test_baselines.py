"""The naive and linear baselines: exact on hand-made cases."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from jsonargparse import ArgumentParser

from datamodules import (
    ETTDataModule,
    PhysioNetDataModule,
    SeriesDataModule,
    SyntheticDataModule,
    Walker2dDataModule,
    linear_metrics,
    naive_metrics,
)
from datamodules.baselines import locf, naive_forecast


def test_locf_and_naive_forecast_exact(tiny_wide: pl.DataFrame) -> None:
    x = torch.tensor([[[1.0], [0.0], [3.0]]])
    filled, seen = locf(x, torch.tensor([[[False], [False], [True]]]))
    assert filled[0, :, 0].tolist() == [0.0, 0.0, 3.0] and seen[0, :, 0].tolist() == [False, False, True]
    dm = SeriesDataModule.from_frame(
        tiny_wide, id_column="id", lookback=2, horizon=2, scaling="none", split_times=[100.0, 200.0]
    )
    b = dm.dataset("train").collate([1])  # a, inputs at times 1, 2 (x missing at 2)
    assert naive_forecast(b, dm.target_input_index)[0].tolist() == [[2.0, 2.0], [2.0, 2.0]]
    # per target: x -> 2 (carried from time 1) vs 4, 5; y -> 2 vs 3, 4
    assert b.y[0].tolist() == [[4.0, 3.0], [5.0, 4.0]]


def test_naive_metrics_hand_computed() -> None:
    frame = pl.DataFrame({"time": [0.0, 1, 2, 3], "v": [1.0, 2, 4, 7]})
    dm = SeriesDataModule.from_frame(frame, lookback=1, horizon=1, scaling="none", split_times=[100.0, 200.0])
    m = naive_metrics(dm, "train")  # errors 1, 2, 3
    assert m == {
        "mse": pytest.approx(14 / 3),
        "mae": pytest.approx(2.0),
        "mse_per_var": pytest.approx(14 / 3),
        "mae_per_var": pytest.approx(2.0),
        "count": 3,
    }


def test_linear_recovers_a_linear_system() -> None:
    t = np.arange(60.0)
    # sin(0.5 t) + 1 obeys v[t+1] = 2 cos(0.5) v[t] - v[t-1] + const: linear in the last two values
    frame = pl.DataFrame({"time": t, "v": np.sin(0.5 * t) + 1.0})
    dm = SeriesDataModule.from_frame(frame, lookback=3, horizon=2, split_times=[40.0, 50.0])
    assert linear_metrics(dm, "test", ridge=1e-12)["mse"] < 1e-8
    assert naive_metrics(dm, "test")["mse"] > 0.1


def test_synthetic_baselines_are_not_trivial() -> None:
    dm = SyntheticDataModule(n_series=64)
    naive, linear = naive_metrics(dm, "val"), linear_metrics(dm, "val")
    assert linear["mse"] < naive["mse"] < 3.0


@pytest.mark.parametrize(
    "cls", [SeriesDataModule, SyntheticDataModule, ETTDataModule, PhysioNetDataModule, Walker2dDataModule]
)
def test_signatures_are_a_cli(cls: type) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    assert parser.parse_args([]).data is not None
