"""Test scores a person can read: per target, in the data's own units, for the model and the baselines alike.

For each target, over every observed target value of the test windows (the masks the model is scored with):

- ``mae``: mean absolute error; ``rmse``: root mean squared error; ``bias``: mean of forecast - actual (above 0:
  the forecasts sit above the actuals on average);
- with quantile forecasts: ``coverage``, the share of actuals inside the outermost interval (an 80% interval
  should hold about 0.8), and ``width``, its mean width;
- ``wql``: weighted quantile loss, sum over values of 2 x pinball loss averaged over the quantile levels, divided by
  the sum of |actual|, in original units (0 is perfect; a point forecast is scored as its median, which makes it
  sum |error| / sum |actual|).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from cfc_forecast.batch import Batch
from cfc_forecast.forecaster.losses import pinball, point_index

NAMES = ("mae", "rmse", "bias", "coverage", "width", "wql")


def _truth(batch: Batch) -> tuple[Tensor, Tensor]:
    return (batch.y_step, batch.y_step_mask) if batch.y_step is not None else (batch.y, batch.y_mask)


def scores_in_units(
    dm: Any, split: str, forecast: Callable[[Batch], Tensor], quantiles: list[float] | None, batch_size: int = 512
) -> dict[str, dict[str, float]]:
    """Per-target scores of ``forecast`` on ``split``, in the data's units.

    Args:
        dm: a built ``SeriesDataModule`` (``dataset``, ``target_names``).
        split: "val" or "test".
        forecast: a batch -> scaled forecasts (B, K, C, Q), or (B, K, C) for a point forecast.
        quantiles: the Q levels (sorted), or None for a point forecast.

    Returns:
        ``{target name: {mae, rmse, bias[, coverage, width], wql}}`` (a target never observed in ``split`` is left
        out).
    """
    levels = torch.tensor(quantiles or [0.5], dtype=torch.float64)
    ds, sums = dm.dataset(split), None
    for start in range(0, len(ds), batch_size):
        batch = ds.collate(list(range(start, min(start + batch_size, len(ds)))))
        pred = forecast(batch)
        pred = pred[..., None] if pred.dim() == 3 else pred  # (B, K, C, Q)
        pred = batch.to_original_units(pred.detach().cpu())
        y, m = _truth(batch)
        y, m = batch.unscale(y).double(), m.to(torch.float64)  # (B, K, C)
        point = pred[..., point_index(quantiles)]
        err = (point - y) * m
        part = [err.abs(), err.pow(2), err, m, (y.abs() * m)]
        part.append((pinball(pred, y, levels.to(pred.dtype)).double() * m[..., None]).sum(-1) * 2 / len(levels))
        if quantiles:
            lo, hi = pred[..., 0], pred[..., -1]
            part += [((y >= lo) & (y <= hi)).double() * m, (hi - lo) * m]
        part = [p.sum(tuple(range(p.dim() - 1))) for p in part]  # each (C,)
        sums = part if sums is None else [a + b for a, b in zip(sums, part, strict=True)]
    out: dict[str, dict[str, float]] = {}
    if sums is None:
        return out
    ab, sq, bias, n, abs_y, ql, *interval = sums
    for c, name in enumerate(dm.target_names):
        if n[c] == 0:
            continue
        row = {"mae": ab[c] / n[c], "rmse": (sq[c] / n[c]).sqrt(), "bias": bias[c] / n[c]}
        if interval:
            row.update(coverage=interval[0][c] / n[c], width=interval[1][c] / n[c])
        row["wql"] = ql[c] / abs_y[c].clamp(min=1e-12)
        out[name] = {k: float(v) for k, v in row.items()}
    return out


def units_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """A fixed-width table: a line per (target, forecaster), a column per score in ``NAMES`` ("-" where none)."""
    targets = list(dict.fromkeys(t for per_target in rows.values() for t in per_target))
    width = max([len(t) for t in targets] + [6]) + 2
    who = max(len(n) for n in rows) + 2
    lines = [f"{'target':<{width}}{'':<{who}}" + "".join(f"{n:>12}" for n in NAMES)]
    for target in targets:
        for forecaster, per_target in rows.items():
            values = per_target.get(target, {})
            cells = "".join(f"{values[n]:>12.4g}" if n in values else f"{'-':>12}" for n in NAMES)
            lines.append(f"{target:<{width}}{forecaster:<{who}}" + cells)
    return "\n".join(lines)


def interval_scores(
    values: np.ndarray,
    y: np.ndarray,
    levels: list[float],
    intervals: list[float],
    variable: np.ndarray,
    bucket: np.ndarray,
    names: list[str],
) -> pl.DataFrame:
    """Coverage and mean width of central intervals, and the weighted quantile loss, in the data's units.

    Over observed target values only (the caller passes those). ``coverage``: share of actuals in
    ``[q_(1-L)/2, q_(1+L)/2]``; ``width``: the mean of ``q_(1+L)/2 - q_(1-L)/2``; ``wql``: sum of 2 x pinball loss
    averaged over the Q levels, divided by sum |actual|; ``crps``: the mean of the same 2 x averaged pinball loss, the
    quantile approximation of the continuous ranked probability score (Gneiting and Raftery 2007, eq. 17; with
    Q = 1 at level 0.5 it is the MAE).

    Args:
        values: (N, Q) forecasts at the quantile ``levels`` (increasing). y: (N,) actuals.
        intervals: the central levels L to score; a level whose bounds are not among ``levels`` is left out.
        variable: (N,) target index into ``names``. bucket: (N,) horizon bucket.

    Returns:
        ``scope`` ("pooled", "variable", "bucket", "variable_bucket"), ``variable``, ``bucket``, ``level``, ``n``,
        ``coverage``, ``width``, ``wql``, ``crps``: one row per scope group and level (``level`` null: no interval).
    """
    from cfc_forecast.forecaster.conformal import interval_bounds

    q = np.asarray(levels, dtype=np.float64)
    diff = y[:, None] - values
    ql = 2 * np.maximum(q * diff, (q - 1) * diff).mean(1)
    cols = {"variable": np.asarray(names, dtype=object)[variable].astype(str), "bucket": bucket.astype(np.int64),
            "abs_y": np.abs(y), "ql": ql}  # fmt: skip
    rounded = [round(v, 10) for v in levels]
    scored = []
    for level, (a, b) in zip(intervals, interval_bounds(intervals), strict=True):
        if a in rounded and b in rounded:
            lo, hi = values[:, rounded.index(a)], values[:, rounded.index(b)]
            cols[f"cov{level:g}"], cols[f"wid{level:g}"] = ((y >= lo) & (y <= hi)).astype(np.float64), hi - lo
            scored.append(level)
    frame = pl.DataFrame(cols)
    aggs = [pl.len().alias("n"), (pl.col("ql").sum() / pl.col("abs_y").sum().clip(1e-12)).alias("wql"),
            pl.col("ql").mean().alias("crps")]  # fmt: skip
    aggs += [pl.col(f"{k}{lv:g}").mean() for lv in scored for k in ("cov", "wid")]
    parts = []
    for scope, by in (("pooled", []), ("variable", ["variable"]), ("bucket", ["bucket"]),
                      ("variable_bucket", ["variable", "bucket"])):  # fmt: skip
        part = frame.group_by(by, maintain_order=True).agg(aggs) if by else frame.select(aggs)
        part = part.with_columns(pl.lit(scope).alias("scope"), *[pl.lit(None).alias(k) for k in
                                 ("variable", "bucket") if k not in by])  # fmt: skip
        rows = [part.select("scope", "variable", "bucket", pl.lit(lv, pl.Float64).alias("level"), "n",
                            pl.col(f"cov{lv:g}").alias("coverage"), pl.col(f"wid{lv:g}").alias("width"), "wql", "crps")
                for lv in scored]  # fmt: skip
        rows = rows or [part.select("scope", "variable", "bucket", pl.lit(None, pl.Float64).alias("level"), "n",
                                    pl.lit(None, pl.Float64).alias("coverage"), pl.lit(None, pl.Float64).alias("width"),
                                    "wql", "crps")]  # fmt: skip
        parts += [r.with_columns(pl.col("variable").cast(pl.String), pl.col("bucket").cast(pl.Int64)) for r in rows]
    return pl.concat(parts).sort("scope", "variable", "bucket", "level", nulls_last=False)
