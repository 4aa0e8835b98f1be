"""Exact windows on hand-made frames; searchsorted; the split rules."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from datamodules import SeriesDataModule
from datamodules.windows import searchsorted_by_series


def test_searchsorted_by_series_is_exact_at_ties() -> None:
    series = np.array([0, 0, 0, 1, 1])
    times = np.array([1.0, 2.0, 2.0, 0.0, 5.0])
    q_series, q_times = np.array([0, 0, 1, 1, 1]), np.array([2.0, 9.0, -1.0, 5.0, 6.0])
    assert searchsorted_by_series(series, times, q_series, q_times, "left").tolist() == [1, 3, 3, 4, 5]
    assert searchsorted_by_series(series, times, q_series, q_times, "right").tolist() == [3, 3, 3, 5, 5]


def test_count_windows_exact_tensors(tiny_wide: pl.DataFrame) -> None:
    dm = SeriesDataModule.from_frame(
        tiny_wide,
        id_column="id",
        targets=["y"],
        inputs=["x", "y"],
        lookback=2,
        horizon=2,
        split_times=[4.0, 6.0],
        scaling="none",
    )
    train = dm.dataset("train")
    # train targets < 4: a and b each have one window, targets at times (2, 3)
    assert len(train) == 2
    b = train.collate([0, 1])
    assert torch.equal(b.x, torch.tensor([[[1.0, 0.0], [2.0, 1.0]], [[10.0, 6.0], [11.0, 7.0]]]))
    assert torch.equal(b.t, torch.tensor([[-1.0, 0.0], [-1.0, 0.0]]))
    assert torch.equal(b.dt, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert torch.equal(b.query_t, torch.tensor([[1.0, 2.0], [1.0, 2.0]]))
    assert torch.equal(b.y[..., 0], torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    assert b.origin.tolist() == [1.0, 1.0]
    assert b.series.tolist() == [0, 1]
    # val targets in [4, 6): only a's window with targets at (4, 5); b's (3, 4) straddles the cut
    assert len(dm.dataset("val")) == 1
    val = dm.dataset("val").collate([0])
    assert torch.equal(val.x_mask[0, :, 0], torch.tensor([False, True]))  # x missing at a, time 2
    assert torch.equal(val.x[0, :, 0], torch.tensor([0.0, 4.0]))
    assert torch.equal(val.y[0, :, 0], torch.tensor([4.0, 5.0]))
    assert len(dm.dataset("test")) == 0


def test_duration_windows_pad_and_mask() -> None:
    frame = pl.DataFrame({"time": [0.0, 0.5, 2.0, 2.5, 3.0, 4.5, 6.0], "v": [1.0, 2, 3, 4, 5, 6, 7]})
    dm = SeriesDataModule.from_frame(
        frame, observe=2.0, forecast=1.0, every=1.5, scaling="none", split_times=[100.0, 200.0]
    )
    b = dm.dataset("train").collate([0, 1, 2])
    # origins 2.0, 3.5, 5.0: inputs [o-2, o), targets [o, o+1]
    assert b.origin.tolist() == [2.0, 3.5, 5.0]
    assert torch.equal(b.x[..., 0], torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0], [5.0, 6.0, 0.0]]))
    assert torch.equal(b.step_mask, torch.tensor([[True, True, False], [True, True, True], [True, True, False]]))
    assert torch.equal(b.t, torch.tensor([[-2.0, -1.5, 0.0], [-1.5, -1.0, -0.5], [-2.0, -0.5, 0.0]]))
    assert torch.equal(b.dt, torch.tensor([[0.0, 0.5, 0.0], [1.5, 0.5, 0.5], [0.5, 1.5, 0.0]]))
    assert torch.equal(b.query_t, torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(b.y[..., 0], torch.tensor([[3.0, 4.0, 5.0], [6.0, 0.0, 0.0], [7.0, 0.0, 0.0]]))
    assert torch.equal(b.query_mask, torch.tensor([[True, True, True], [True, False, False], [True, False, False]]))


def test_fixed_origin_keeps_series_without_targets() -> None:
    frame = pl.DataFrame({"id": [1, 1, 1, 2, 2], "time": [0.0, 1.0, 3.0, 0.0, 0.5], "v": [1.0, 2, 3, 4, 5]})
    dm = SeriesDataModule.from_frame(
        frame,
        id_column="id",
        origin=1.0,
        forecast=2.0,
        scaling="none",
        split_by="series",
        split_fractions=(1.0, 0.0, 0.0),
    )
    b = dm.dataset("train").collate([0, 1])
    assert torch.equal(b.x[..., 0], torch.tensor([[1.0, 0.0], [4.0, 5.0]]))
    assert torch.equal(b.y[..., 0], torch.tensor([[2.0, 3.0], [0.0, 0.0]]))
    assert b.y_mask[..., 0].tolist() == [[True, True], [False, False]]
    assert b.query_t.tolist() == [[0.0, 2.0], [0.0, 0.0]]


def test_no_target_outside_its_split_and_order_of_splits() -> None:
    rng = np.random.default_rng(1)
    times = np.sort(rng.uniform(0, 100, 400))
    frame = pl.DataFrame({"id": rng.integers(0, 4, 400), "time": times, "v": rng.normal(size=400)})
    frame = frame.unique(["id", "time"])
    dm = SeriesDataModule.from_frame(
        frame, id_column="id", observe=10.0, forecast=5.0, every=2.0, split_times=[60.0, 80.0]
    )
    bounds = {"train": (-np.inf, 60.0), "val": (60.0, 80.0), "test": (80.0, np.inf)}
    last = {}
    for split, (lo, hi) in bounds.items():
        ds = dm.dataset(split)
        b = ds.collate(list(range(len(ds))))
        target_t = (b.origin[:, None] + b.query_t.double())[b.y_mask[..., 0]]
        assert target_t.min() >= lo and target_t.max() < hi
        assert (b.origin + 5.0).max() < hi  # the whole forecast span, not just the observed targets
        last[split] = (target_t.min().item(), target_t.max().item())
    assert last["train"][1] < last["val"][0] and last["val"][1] < last["test"][0]


def test_step_targets_and_dt_from_zero() -> None:
    frame = pl.DataFrame({"time": [2.0, 3.0, 5.0, 6.0], "s": [1.0, 2, 3, 4], "n": [2.0, 3, 4, 5]})
    dm = SeriesDataModule.from_frame(
        frame,
        inputs=["s"],
        targets=["n"],
        lookback=3,
        horizon=0,
        stride=1,
        step_targets=True,
        scaling="none",
        split_times=[100.0, 200.0],
    )
    b = dm.dataset("train").collate([0, 1])
    assert b.query_t.shape == (2, 0)
    assert torch.equal(b.y_step[..., 0], torch.tensor([[2.0, 3.0, 4.0], [3.0, 4.0, 5.0]]))
    assert torch.equal(b.dt, torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 1.0]]))


def test_the_predict_split_is_the_test_windows_without_targets(tiny_wide: pl.DataFrame) -> None:
    dm = SeriesDataModule.from_frame(
        tiny_wide, id_column="id", targets=["y"], lookback=2, horizon=1, scaling="none", split_times=[3.0, 4.0]
    )
    test, predict = dm.dataset("test"), dm.dataset("predict")
    assert len(predict) == len(test) > 0
    a, b = test.collate(list(range(len(test)))), predict.collate(list(range(len(test))))
    assert b.y is None and a.y is not None
    for name in ("x", "t", "query_t", "origin", "series"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_too_short_series_are_counted_and_nothing_left_is_an_error(tiny_wide: pl.DataFrame) -> None:
    dm = SeriesDataModule.from_frame(
        tiny_wide, id_column="id", targets=["y"], lookback=4, horizon=2, split_times=[100.0, 200.0]
    )
    dm.setup()
    assert dm.counts["series shorter than one window"] == 1
    with pytest.raises(ValueError, match="no training window"):
        SeriesDataModule.from_frame(tiny_wide, id_column="id", lookback=6, horizon=2).setup()
