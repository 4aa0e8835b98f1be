"""Tensors of all series and the window datasets that cut batches from them.

Every split's dataset shares one ``SeriesTensors`` (values stored once, scaled, as torch tensors: DataLoader
workers never see polars). ``__getitem__`` returns the window's index and ``collate`` gathers a whole batch at once
with index arithmetic, padding to the longest window in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cfc_forecast.batch import Batch
from datamodules.windows import Windows


@dataclass
class SeriesTensors:
    """All N rows (series, time) of the canonical table, scaled.

    Attributes:
        values: (N, V) float32 scaled values, 0 where missing.
        mask: (N, V) bool, True where observed.
        times: (N,) float64 absolute times in the time unit.
        dt: (N,) float32 time since the series' previous row.
        input_cols: (F,) int64 columns of ``values`` that are inputs.
        target_cols: (C,) int64 columns that are targets.
        target_loc: (G, C) float32 target offsets (G = 1 or the number of series).
        target_scale: (G, C) float32 target factors.
        future: (N, Fk) float32 known-future covariates per row (scaled; calendar features), or None.
        static: (n_series, S) float32 scaled static covariates, or None.
        step_targets: whether batches carry per-step targets at the input rows.
        codes: (N, Vc) int64 codes of the time-varying categorical columns per row (``datamodules.categories``),
            or None. input_cat_cols: (Fc,) int64 columns of ``codes`` that are past inputs. future_cat_cols: (Fkc,)
            int64 columns that are known-future covariates.
        static_codes: (n_series, Sc) int64 codes of the static categorical columns, or None.
    """

    values: Tensor
    mask: Tensor
    times: Tensor
    dt: Tensor
    input_cols: Tensor
    target_cols: Tensor
    target_loc: Tensor
    target_scale: Tensor
    future: Tensor | None = None
    static: Tensor | None = None
    step_targets: bool = False
    codes: Tensor | None = None
    input_cat_cols: Tensor | None = None
    future_cat_cols: Tensor | None = None
    static_codes: Tensor | None = None


def _rows(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L) row indices lo..hi-1 (padded with row 0) and the (B, L) validity mask, L the longest range."""
    width = int((hi - lo).max()) if len(lo) else 0
    rows = lo[:, None] + torch.arange(width)
    valid = rows < hi[:, None]
    return torch.where(valid, rows, 0), valid


class WindowDataset(Dataset):
    """The windows of one split over shared series tensors.

    Args:
        data: the series tensors.
        windows: this split's windows.
        with_targets: False for prediction (``y`` and ``y_mask`` are None).
        queries: (W, K) float64 query times relative to the origin for prediction, else None (the target rows'
            times are the queries).
        query_mask: (W, K) bool validity of ``queries``.
        query_future: (W, K, Fk) float32 known-future covariates at ``queries``, or None.
        query_future_cat: (W, K, Fkc) int64 codes of the categorical known-future covariates at ``queries``, or None.
    """

    def __init__(
        self,
        data: SeriesTensors,
        windows: Windows,
        with_targets: bool = True,
        queries: Tensor | None = None,
        query_mask: Tensor | None = None,
        query_future: Tensor | None = None,
        query_future_cat: Tensor | None = None,
    ) -> None:
        self.data = data
        self.series = torch.as_tensor(windows.series, dtype=torch.int64)
        bounds = np.stack([windows.in_lo, windows.in_hi, windows.tg_lo, windows.tg_hi]).astype(np.int64)
        self.bounds = torch.from_numpy(bounds.reshape(4, -1))  # (4, W)
        self.origin = torch.as_tensor(windows.origin, dtype=torch.float64)
        self.with_targets = with_targets
        self.queries, self.query_mask, self.query_future = queries, query_mask, query_future
        self.query_future_cat = query_future_cat

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> Batch:
        """Gather windows ``indices`` into one padded ``Batch``.

        A negative index ``-1 - i`` (:func:`datamodules.sharding.placeholder`) gives window ``i`` with every target
        masked out: it counts in no loss or metric (what an evaluation rank without windows of its own runs).
        """
        d = self.data
        w = torch.as_tensor(indices, dtype=torch.int64)
        counted = w >= 0  # (B,)
        w = torch.where(counted, w, -1 - w)
        in_lo, in_hi, tg_lo, tg_hi = self.bounds[:, w]
        series, origin = self.series[w], self.origin[w]
        rows, step_mask = _rows(in_lo, in_hi)  # (B, T)
        x, x_mask = _gather(d, rows, step_mask, d.input_cols)
        times = d.times[rows]  # (B, T) float64 absolute
        t = torch.where(step_mask, (times - origin[:, None]).float(), 0.0)
        g = series if d.target_loc.shape[0] > 1 else torch.zeros_like(series)
        batch = Batch(
            x=x,
            x_mask=x_mask,
            t=t,
            dt=torch.where(step_mask, d.dt[rows], 0.0),
            step_mask=step_mask,
            query_t=torch.zeros(len(w), 0),
            query_mask=torch.zeros(len(w), 0, dtype=torch.bool),
            series=series,
            origin=origin,
            target_loc=d.target_loc[g],
            target_scale=d.target_scale[g],
            static=None if d.static is None else d.static[series],
            t_abs=torch.where(step_mask, times, 0.0),
            static_cat=None if d.static_codes is None else d.static_codes[series],
        )
        if d.codes is not None and len(d.input_cat_cols):
            batch.x_cat = d.codes[rows][..., d.input_cat_cols] * step_mask[..., None]  # (B, T, Fc), 0 at padding
        if d.step_targets:
            batch.y_step, batch.y_step_mask = _gather(d, rows, step_mask & counted[:, None], d.target_cols)
        if self.queries is not None:
            queries = self.queries[w]  # (B, K) float64 relative
            batch.query_t = queries.float()
            batch.query_mask = self.query_mask[w]
            batch.query_t_abs = torch.where(batch.query_mask, origin[:, None] + queries.double(), 0.0)
            batch.future = None if self.query_future is None else self.query_future[w]
            batch.future_cat = None if self.query_future_cat is None else self.query_future_cat[w]
        else:
            k_rows, query_mask = _rows(tg_lo, tg_hi)  # (B, K)
            k_times = d.times[k_rows]  # (B, K) float64 absolute
            batch.query_t = torch.where(query_mask, (k_times - origin[:, None]).float(), 0.0)
            batch.query_mask = query_mask
            batch.query_t_abs = torch.where(query_mask, k_times, 0.0)
            if d.future is not None:
                batch.future = d.future[k_rows] * query_mask[..., None]
            if d.codes is not None and len(d.future_cat_cols):
                batch.future_cat = d.codes[k_rows][..., d.future_cat_cols] * query_mask[..., None]  # (B, K, Fkc)
            if self.with_targets:
                batch.y, batch.y_mask = _gather(d, k_rows, query_mask & counted[:, None], d.target_cols)
        batch.check()
        return batch


def _gather(d: SeriesTensors, rows: Tensor, valid: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L, len(cols)) values and mask at ``rows``, zero and False where not ``valid``."""
    mask = d.mask[rows][..., cols] & valid[..., None]
    return d.values[rows][..., cols] * mask, mask
