"""Reference forecasts on a DataModule's split: the naive last value and a linear autoregressive model.

Both are scored exactly as a model is: on the same scaled targets, with the same masks. ``mse`` and ``mae`` average
over every observed target value; ``mse_per_var`` and ``mae_per_var`` first average per variable, then over the
variables that have a target (the PhysioNet protocol). Tasks with per-step targets (Walker2d) score ``y_step``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from cfc_forecast.batch import Batch

if TYPE_CHECKING:
    from datamodules.base import SeriesDataModule


def _batches(dm: SeriesDataModule, split: str, batch_size: int) -> Iterator[Batch]:
    ds = dm.dataset(split)
    for start in range(0, len(ds), batch_size):
        yield ds.collate(list(range(start, min(start + batch_size, len(ds)))))


def _truth(batch: Batch) -> tuple[Tensor, Tensor]:
    return (batch.y_step, batch.y_step_mask) if batch.y_step is not None else (batch.y, batch.y_mask)


def locf(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Carry the last observation forward along T: (B, T, F) values and (B, T, F) 'seen yet' mask."""
    steps = torch.arange(x.shape[1]).view(1, -1, 1)
    last = torch.where(mask, steps, -1).cummax(dim=1).values  # (B, T, F) index of the last observation
    return torch.gather(x, 1, last.clamp(min=0)) * (last >= 0), last >= 0


def naive_forecast(batch: Batch, source: list[int]) -> Tensor:
    """Last observed value of each target's source input (0, the scaled reference, when never observed).

    Args:
        batch: the batch.
        source: (C,) input column of each target (``dm.target_input_index``); -1 forecasts 0.

    Returns:
        (B, K, C) forecasts, or (B, T, C) with per-step targets (the value observed up to each step).
    """
    filled, _ = locf(batch.x, batch.x_mask)  # (B, T, F)
    idx = torch.tensor([max(s, 0) for s in source])
    known = torch.tensor([s >= 0 for s in source])
    per_step = filled[..., idx] * known  # (B, T, C)
    if batch.y_step is not None:
        return per_step
    return per_step[:, -1:, :].expand(-1, batch.query_t.shape[1], -1)


def evaluate(dm: SeriesDataModule, split: str, forecast: Callable[[Batch], Tensor], batch_size: int = 512) -> dict:
    """Masked MSE / MAE of ``forecast`` over a split, overall and per variable first."""
    sq = ab = n = None
    for batch in _batches(dm, split, batch_size):
        y, m = _truth(batch)
        err = (forecast(batch) - y) * m
        dims = tuple(range(err.dim() - 1))
        sums = err.pow(2).sum(dims).double(), err.abs().sum(dims).double(), m.sum(dims).double()
        sq, ab, n = sums if sq is None else (sq + sums[0], ab + sums[1], n + sums[2])
    if n is None or n.sum() == 0:
        raise ValueError(f"split {split!r} has no observed target to score")
    has = n > 0
    return {
        "mse": float(sq.sum() / n.sum()),
        "mae": float(ab.sum() / n.sum()),
        "mse_per_var": float((sq[has] / n[has]).mean()),
        "mae_per_var": float((ab[has] / n[has]).mean()),
        "count": int(n.sum()),
    }


def naive_metrics(dm: SeriesDataModule, split: str = "test") -> dict:
    """Scores of the naive last-value forecast on ``split``."""
    source = dm.target_input_index
    return evaluate(dm, split, lambda b: naive_forecast(b, source))


def _features(batch: Batch, order: int) -> Tensor:
    """Per-window (B, D) or per-step (B, T, D) regressors: the last ``order`` carried-forward inputs, 1."""
    filled, seen = locf(batch.x, batch.x_mask)
    if batch.y_step is not None:  # per step: the current state, its elapsed time, 1
        return torch.cat([filled, seen.float(), batch.dt[..., None], torch.ones_like(batch.dt[..., None])], -1)
    last = batch.step_mask.sum(1) - 1  # (B,) index of the last real step
    steps = (last[:, None] - torch.arange(order)).clamp(min=0)  # (B, order)
    lagged = torch.gather(filled, 1, steps[..., None].expand(-1, -1, filled.shape[2]))  # (B, order, F)
    lagged_seen = torch.gather(seen, 1, steps[..., None].expand(-1, -1, seen.shape[2]))
    return torch.cat([lagged.flatten(1), lagged_seen.flatten(1).float(), torch.ones(len(last), 1)], 1)


def _design(batch: Batch, order: int, direct: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Rows (N, D), targets (N, C') and masks (N, C') of the least-squares problem for one batch."""
    feats = _features(batch, order).double()
    y, m = _truth(batch)
    if batch.y_step is not None:  # one row per real step
        keep = batch.step_mask.reshape(-1)
        return (
            feats.reshape(-1, feats.shape[-1])[keep],
            y.reshape(-1, y.shape[-1])[keep],
            m.reshape(-1, m.shape[-1])[keep],
        )
    if direct:  # one row per window, K * C outputs
        return feats, y.flatten(1), m.flatten(1)
    keep = batch.query_mask.reshape(-1)
    return _query_rows(batch, feats), y.reshape(-1, y.shape[-1])[keep], m.reshape(-1, m.shape[-1])[keep]


def _query_rows(batch: Batch, feats: Tensor) -> Tensor:
    """(N, D + 2) rows of the real queries: window features (B, D), query time, its square (no targets needed)."""
    k = batch.query_t.shape[1]
    q = batch.query_t.double()[..., None]
    rows = torch.cat([feats[:, None, :].expand(-1, k, -1), q, q.pow(2)], -1)
    return rows.reshape(-1, rows.shape[-1])[batch.query_mask.reshape(-1)]


def _gram(x: Tensor, m: Tensor, shared: bool) -> Tensor:
    """(C, D, D) Gram matrix of the rows where each target is observed ((1, D, D) when ``shared``)."""
    if shared or bool(m.all()):
        g = (x.T @ x)[None]
        return g if shared else g.expand(m.shape[1], -1, -1)
    return torch.stack([x[m[:, c]].T @ x[m[:, c]] for c in range(m.shape[1])])  # a loop over targets


def linear_forecaster(
    dm: SeriesDataModule, order: int | None = None, ridge: float = 1e-3, queries: bool = False
) -> Callable[[Batch], Tensor]:
    """A linear autoregressive forecast fitted by ridge least squares on the training windows.

    With a regular horizon K (count windows) one linear map from the last ``order`` steps (default: the whole
    lookback, at most 96) to all K x C values, fitted on windows whose targets are all observed; with continuous
    queries, one map per target from the window's last ``order`` (default 1) carried-forward inputs, the query
    time and its square; with per-step targets, a map from each step's carried-forward inputs and dt.

    Args:
        dm: the DataModule. order: lags used. ridge: L2 penalty relative to the mean diagonal of the Gram matrix.
        queries: fit the continuous-query form even with count windows (for a continuous-head model, whose
            forecasts are at the batch's query times, not on the K grid steps).

    Returns:
        The forecast of a batch: (B, K, C) scaled values, or (B, T, C) with per-step targets.
    """
    direct = not queries and dm.horizon is not None and dm.horizon > 0 and not dm.cfg.step_targets
    order = order or (min(dm.cfg.lookback, 96) if direct else 1)
    gram = cross = None
    for batch in _batches(dm, "train", 512):
        x, y, m = _design(batch, order, direct)
        if direct:  # only windows with every target observed, so one Gram matrix serves all outputs
            full = m.all(1)
            x, y, m = x[full], y[full], m[full]
        g = _gram(x, m, shared=direct)
        c = x.T @ (y.double() * m)
        gram, cross = (g, c) if gram is None else (gram + g, cross + c)
    eye = torch.eye(gram.shape[-1], dtype=torch.float64)
    reg = gram + ridge * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * eye + 1e-9 * eye
    # (D, K*C) for the direct map, else (D, C) from one system per target
    weights = torch.linalg.solve(reg[0], cross) if direct else torch.linalg.solve(reg, cross.T[..., None])[..., 0].T

    def forecast(batch: Batch) -> Tensor:
        if batch.y_step is None and not direct:
            rows = _query_rows(batch, _features(batch, order).double())  # also for windows without targets
            out = torch.zeros(*batch.query_t.shape, weights.shape[1], dtype=torch.float64)
            out[batch.query_mask] = rows @ weights
            return out.float()
        feats = _features(batch, order).double()
        out = feats @ weights
        return (out.view(*batch.query_t.shape, -1) if direct else out).float()

    return forecast


def linear_metrics(dm: SeriesDataModule, split: str = "test", order: int | None = None, ridge: float = 1e-3) -> dict:
    """Scores of :func:`linear_forecaster` on ``split`` (the metrics of ``evaluate``)."""
    return evaluate(dm, split, linear_forecaster(dm, order, ridge))
