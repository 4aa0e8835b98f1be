"""Prediction windows: one per series, from its last observation, at future query times."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from datamodules.build import Built
from datamodules.dataset import WindowDataset
from datamodules.timing import calendar_features

if TYPE_CHECKING:
    from datamodules.base import SeriesDataModule


def median_steps(offsets: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(n_series,) median spacing of each series' time stamps (the overall median for one-row series)."""
    series = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    same = series[1:] == series[:-1]  # spacings within a series (rows are sorted by series, then time)
    frame = pl.DataFrame({"s": series[1:][same], "d": np.diff(times)[same]})
    medians = frame.group_by("s").agg(pl.col("d").median())
    per = np.full(len(offsets) - 1, np.nan)  # a one-row series has no spacing
    per[medians["s"].to_numpy()] = medians["d"].to_numpy()
    overall = np.nanmedian(per) if np.isfinite(per).any() else 1.0
    return np.where(np.isfinite(per) & (per > 0), per, overall)


def predict_dataset(dm: SeriesDataModule, built: Built) -> WindowDataset:
    """Windows at the end of every series with query times from ``predict_queries``, else the series' median
    spacing times 1..K (count windows) or up to the forecast duration D.

    Raises:
        ValueError: known-future variables (their future values are not in the data), non-positive query
            times, or no way to choose query times.
    """
    h, spec, w = dm.cfg, dm.spec, built.predict
    if h.known_future:
        raise ValueError(
            f"known-future variables {h.known_future} have no values after the end of the series; "
            "append rows with those values (and empty targets) to predict"
        )
    if h.predict_queries is not None:
        q = np.tile(np.asarray(h.predict_queries, dtype=np.float64), (len(w), 1))
        valid = np.ones_like(q, dtype=bool)
        if (q <= 0).any():
            raise ValueError(f"predict_queries must be > 0 (times after the last observation), got {q[0]}")
    else:
        step = median_steps(built.offsets, built.tensors.times.numpy())
        if spec.mode == "count":
            n = np.full(len(w), spec.horizon)
        elif spec.forecast is not None:
            n = np.maximum(np.floor(spec.forecast / step + 1e-9).astype(np.int64), 1)
        else:
            raise ValueError("one window per series without a forecast duration: give predict_queries")
        k = np.arange(1, int(n.max()) + 1)
        valid = k[None, :] <= n[:, None]
        q = np.where(valid, step[:, None] * k[None, :], 0.0)
    future = None
    if h.calendar:
        cal = calendar_features((w.origin[:, None] + q).reshape(-1), dm._table.codec, list(h.calendar))
        future = torch.from_numpy(cal.reshape(*q.shape, -1) * valid[..., None])
    return WindowDataset(
        built.tensors,
        w,
        with_targets=False,
        queries=torch.from_numpy(q),
        query_mask=torch.from_numpy(valid),
        query_future=future,
    )
