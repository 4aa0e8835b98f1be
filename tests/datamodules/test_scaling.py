"""Scaler statistics equal hand-computed values on their fit range."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from datamodules import SeriesDataModule

KW = {"id_column": "id", "lookback": 2, "horizon": 1, "split_times": [3.0, 4.0]}


def stats(dm: SeriesDataModule) -> tuple[np.ndarray, np.ndarray]:
    b = dm.dataset("train").collate([0])
    return b.target_loc[0].double().numpy(), b.target_scale[0].double().numpy()


def test_standard_on_train_rows_ddof0(tiny_wide: pl.DataFrame) -> None:
    loc, scale = stats(SeriesDataModule.from_frame(tiny_wide, **KW))
    x = np.array([1.0, 2, 10, 11, 12])  # rows with time < 3 (a's time 2 is missing)
    y = np.array([0.0, 1, 2, 6, 7, 8])
    np.testing.assert_allclose(loc, [x.mean(), y.mean()], rtol=1e-6)
    np.testing.assert_allclose(scale, [x.std(), y.std()], rtol=1e-6)


def test_minmax_on_train_and_val(tiny_wide: pl.DataFrame) -> None:
    dm = SeriesDataModule.from_frame(tiny_wide, scaling="minmax", scale_fit="train+val", **KW)
    loc, scale = stats(dm)
    np.testing.assert_allclose(loc, [1.0, 0.0])
    np.testing.assert_allclose(scale, [13.0 - 1.0, 9.0 - 0.0])  # time < 4
    b = dm.dataset("val").collate([0])
    assert b.y[0, 0].tolist() == pytest.approx([(4 - 1) / 12, (3 - 0) / 9])  # a at time 3


def test_per_series_standard(tiny_wide: pl.DataFrame) -> None:
    dm = SeriesDataModule.from_frame(tiny_wide, scale_by="series", **KW)
    ds = dm.dataset("train")
    b = ds.collate(list(range(len(ds))))
    a_rows, b_rows = b.series == 0, b.series == 1
    np.testing.assert_allclose(b.target_loc[a_rows][0], [1.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(b.target_scale[b_rows][0], [np.std([10.0, 11, 12]), np.std([6.0, 7, 8])], rtol=1e-6)
    raw = b.unscale(b.y)
    assert torch.allclose(raw[b.y_mask], torch.tensor([2.0, 12.0, 8.0]))  # a: y at time 2; b: x, y


def test_none_and_fit_all(tiny_wide: pl.DataFrame) -> None:
    loc, scale = stats(SeriesDataModule.from_frame(tiny_wide, scaling="none", **KW))
    assert loc.tolist() == [0.0, 0.0] and scale.tolist() == [1.0, 1.0]
    loc, _ = stats(SeriesDataModule.from_frame(tiny_wide, scale_fit="all", **KW))
    np.testing.assert_allclose(loc, [np.mean([1.0, 2, 4, 5, 6, 10, 11, 12, 13, 14]), 55 / 11], rtol=1e-6)


def test_variable_missing_from_fit_range_is_an_error(tiny_wide: pl.DataFrame) -> None:
    late = tiny_wide.with_columns(pl.when(pl.col("time") < 3).then(None).otherwise("x").alias("x"))
    with pytest.raises(ValueError, match=r"\['x'\] have no observation in the scaler's fit range"):
        SeriesDataModule.from_frame(late, **KW).setup()
