"""One chunk of raw rows -> the prediction windows the model reads, and the series it cannot forecast.

Every series is checked on its own (``checks``; a bad series never stops the job), and so is every window (too
few rows before the origin for the model's context, or none in its input span). The rest is prepared as the
DataModule prepares it, with its own code where it can be (``canonical_table`` or an equivalent shortcut, the
scaler fitted in training, ``SeriesTensors``, ``median_steps``, ``WindowDataset``). This is the one preparation of
rows to forecast: ``forecast_rows`` (``cfc-forecast predict``, the Python API) and the batch job both call it.

Covariates (static values, categorical codes, known-future values on rows after the end): ``covariates``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from cfc_forecast.forecast.checks import ID, flag_values, parse_time, series_reasons
from cfc_forecast.forecast.covariates import (
    category_codes,
    future_inputs,
    history_end,
    no_row_reasons,
    query_rows,
    static_values,
    untrained_empty,
    with_empty,
)
from cfc_forecast.forecast.trained import JobError, Trained
from datamodules.build import _first_dt
from datamodules.categories import as_labels
from datamodules.dataset import SeriesTensors, WindowDataset
from datamodules.io import SERIES, TIME, Table, canonical_table
from datamodules.scaling import Scaler
from datamodules.stamps import calendar_days, calendar_offsets, clean_step, shown_time
from datamodules.timing import TimeCodec, median_steps
from datamodules.windows import Windows


@dataclass
class Options:
    """How to forecast: ``origins`` (absolute float times; None = from each series' end), ``query_times`` (after
    the origin, time units; None = the checkpoint's rule), ``min_rows`` (rows a series needs; None = the model's
    context), ``query_days`` (per query time, the calendar days it stands for in a zone-aware series, else 0)."""

    origins: list[float] | None = None
    query_times: list[float] | None = None
    min_rows: int | None = None
    query_days: list[int] | None = None  # per query time: calendar days in the data's zone (0: absolute)
    observed_span: float | None = None  # continuous head: query each window's observed rows in [o, o + span]


@dataclass
class Chunk:
    """A prepared chunk: its dataset (None when nothing is left to forecast), what maps it back, what was skipped.

    Attributes:
        dataset: the prediction windows, or None. series_ids: ``batch.series`` indexes it.
        target_names: the model's targets (``series_ids``, ``target_names`` and ``decode_times`` are what
            ``cfc_forecast.writer.forecast_frame`` reads).
        codec: decodes float times into the input's time stamps. skipped: columns ``series``, ``reason``.
        row_counts: skipped rows by reason (rows with no value observed, ...). spacing: median spacing, time units.
        n_series: series in the chunk. n_forecast: series with at least one forecast window.
        unseen: per categorical column with labels unseen in training (coded unknown, ``datamodules.categories``):
            ``{"values": how many, "examples": the first five, sorted}`` (+ ``"hint"``: a likely match), and
            ``"empty": n`` where the column had no empty value in training (read as the untrained "missing").
    """

    dataset: WindowDataset | None
    series_ids: pl.Series
    target_names: list[str]
    codec: TimeCodec
    skipped: pl.DataFrame
    row_counts: dict[str, int] = field(default_factory=dict)
    spacing: float = float("nan")
    n_series: int = 0
    n_forecast: int = 0
    unseen: dict[str, Any] = field(default_factory=dict)  # categorical labels unseen in training, per column

    def decode_times(self, times: np.ndarray) -> pl.Series:
        return self.codec.decode(times)


def _scaler(trained: Trained, ids: pl.Series) -> Scaler:
    if trained.scaler_ids is None:
        return Scaler(trained.loc, trained.scale, trained.variables)
    index = {v: i for i, v in enumerate(trained.scaler_ids)}
    rows = np.asarray([index[v] for v in ids.to_list()], dtype=np.int64)
    return Scaler(trained.loc[rows], trained.scale[rows], trained.variables)


def prepare(frame: pl.DataFrame, trained: Trained, options: Options, source: str = "input") -> Chunk:
    """Check and prepare one chunk's rows (every row of each of its series, in input order).

    Raises:
        JobError: no rule gives the query times (a one-window model without a forecast span or query times).
    """
    if trained.id_column is None:
        frame = frame.with_columns(pl.lit(0).alias(ID))
    else:
        frame = frame.rename({trained.id_column: ID})
    frame, codec = parse_time(frame, trained)
    value_cols = [trained.value_column] if trained.layout == "long" else trained.numeric
    frame = flag_values(frame, value_cols).with_columns(as_labels(frame[c]) for c in trained.categorical)
    reasons = series_reasons(frame, trained, codec)
    skipped = reasons.filter(pl.col("reason").is_not_null())
    ok = reasons.filter(pl.col("reason").is_null())["series"]
    if len(ok) == 0:
        return Chunk(None, ok.head(0), trained.targets, codec, skipped, n_series=reasons.height)
    clean = frame if skipped.height == 0 else frame.filter(pl.col(ID).is_in(ok.implode()))
    table = _table(clean.drop("text", "inf"), trained, codec, source)
    chunk = _windows(table, trained, options, codec)
    chunk.skipped = pl.concat([skipped, chunk.skipped.cast(skipped.schema)], how="vertical")
    chunk.n_series = reasons.height
    return chunk


def _table(frame: pl.DataFrame, trained: Trained, codec: TimeCodec, source: str) -> Table:
    """The canonical table of series that passed the checks.

    Wide rows without duplicates take a shortcut with the same result as ``canonical_table`` (whose checks for
    duplicates and for text would only repeat ``series_reasons``'): drop rows with nothing observed (counted), number
    the series in sorted order, encode the times, sort. Long layouts and aggregated duplicates go through it.
    """
    if trained.layout == "long" or trained.duplicates != "error":
        return canonical_table(
            frame,
            source=source,
            layout=trained.layout,
            id_column=ID,
            time_column=trained.time_column,
            variables=trained.numeric + trained.categorical,
            time_unit=trained.time_unit,
            categorical=trained.categorical,
            # "error": series with duplicates were skipped in series_reasons, so "first" leaves every row as it is
            duplicates="first" if trained.duplicates == "error" else trained.duplicates,
            variable_column=trained.variable_column,
            value_column=trained.value_column,
            every_variable=False,  # a chunk's series may all lack a variable (a missing value, as in training)
        )
    columns = trained.numeric + trained.categorical
    empty = pl.all_horizontal(pl.col(v).is_null() for v in columns)
    n_empty = int(frame.select(empty.sum()).item())
    frame = frame.filter(~empty) if n_empty else frame
    ids = frame[ID]
    frame = frame.select(
        (ids.rank("dense").cast(pl.UInt32) - 1).alias(SERIES),
        codec.encode(pl.col(trained.time_column)).alias(TIME),
        *columns,
    ).sort(SERIES, TIME)
    counts = {"rows with no value observed": n_empty} if n_empty else {}
    return Table(frame=frame, series_ids=ids.unique().sort(), codec=codec, counts=counts)


def _windows(table: Table, trained: Trained, options: Options, codec: TimeCodec) -> Chunk:
    series = table.frame[SERIES].to_numpy().astype(np.int64)
    times = table.frame[TIME].to_numpy().astype(np.float64)
    n = len(table.series_ids)
    offsets = np.searchsorted(series, np.arange(n + 1)).astype(np.int64)
    scaler = _scaler(trained, table.series_ids)
    scaled = scaler.transform(table.frame.select(trained.variables).to_numpy().astype(np.float64), series)
    mask = ~np.isnan(scaled)
    scaled[~mask] = 0.0
    loc, scale = scaler.columns(trained.targets)
    codes, static_codes, unseen_labels = category_codes(table, trained)
    cat_dyn = list(dict.fromkeys(trained.cat_inputs + trained.cat_future))
    tensors = SeriesTensors(
        values=torch.from_numpy(scaled.astype(np.float32)),
        mask=torch.from_numpy(mask),
        times=torch.from_numpy(times),
        dt=torch.from_numpy(_first_dt(series, times, trained.first_dt_from_zero).astype(np.float32)),
        input_cols=torch.tensor([trained.variables.index(c) for c in trained.inputs], dtype=torch.int64),
        target_cols=torch.tensor([trained.variables.index(c) for c in trained.targets], dtype=torch.int64),
        target_loc=torch.from_numpy(loc.astype(np.float32)),
        target_scale=torch.from_numpy(scale.astype(np.float32)),
        static=static_values(table, trained),
        codes=codes,
        input_cat_cols=torch.tensor([cat_dyn.index(c) for c in trained.cat_inputs], dtype=torch.int64),
        future_cat_cols=torch.tensor([cat_dyn.index(c) for c in trained.cat_future], dtype=torch.int64),
        static_codes=static_codes,
    )
    end = history_end(trained, mask, codes, offsets)
    w, problems = _origin_windows(series, offsets, times, trained, options, codec, end)
    step = median_steps(offsets, times)
    w, q, valid = _queries(w, step, offsets, times, codec, trained, options, problems)
    future_rows, no_future = query_rows(series, times, offsets, w, q, valid, trained)
    keep = ~problems.any(axis=0) & ~no_future
    reasons = _window_reasons(problems, w, codec, options, trained)
    no_row_reasons(reasons, no_future, future_rows, w, q, valid, trained, codec)
    skipped = pl.DataFrame(
        {"series": table.series_ids.gather(w.series[~keep]), "reason": pl.Series(reasons[~keep], dtype=pl.String)}
    )
    w, q, valid, future_rows = w.select(keep), q[keep], valid[keep], future_rows[keep]
    order = np.argsort(w.in_hi - w.in_lo, kind="stable")  # similar lengths together: less padding per batch
    w, q, valid, future_rows = w.select(order), q[order], valid[order], future_rows[order]
    future, future_cat = future_inputs(w, q, valid, future_rows, scaled, tensors, trained, codec)
    dataset = None
    if len(w):
        dataset = WindowDataset(
            tensors,
            w,
            with_targets=False,
            queries=torch.from_numpy(q),
            query_mask=torch.from_numpy(valid),
            query_future=future,
            query_future_cat=future_cat,
        )
    chunk = Chunk(dataset, table.series_ids, trained.targets, codec, skipped, dict(table.counts))
    chunk.spacing = float(np.median(step)) if len(step) else float("nan")
    chunk.n_forecast = len(np.unique(w.series))
    chunk.unseen = with_empty(unseen_labels, untrained_empty(table, trained, end, offsets))
    return chunk


def _rows_before(series: np.ndarray, offsets: np.ndarray, times: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """(n_series,) index of each series' first row at or after ``cut`` (n_series,): what
    ``searchsorted_by_series(..., "left")`` gives for one query per series, in O(N) without a sort."""
    return offsets[:-1] + np.add.reduceat((times < cut[series]).astype(np.int64), offsets[:-1])


def _last_anchor(
    series: np.ndarray, offsets: np.ndarray, times: np.ndarray, trained: Trained, codec: TimeCodec, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A model trained on anchored origins forecasts from each series' last anchor at or before its last row (inputs
    before it); a series without one gets its first time as origin (too short for the model's context)."""
    from datamodules.stamps import anchor_origins

    first, last = times[offsets[:-1]], times[end]
    owner, origin, _ = anchor_origins(first, last, trained.spec.anchor, max(trained.spec.every_days, 1), codec)
    at = first.copy()
    at[owner] = origin  # sorted by series then time: the last one of each series wins
    return _rows_before(series, offsets, times, at), at


def _origin_windows(
    series: np.ndarray,
    offsets: np.ndarray,
    times: np.ndarray,
    trained: Trained,
    options: Options,
    codec: TimeCodec | None = None,
    end: np.ndarray | None = None,
) -> tuple[Windows, np.ndarray]:
    """Windows ending at each series' last history row (``end``, default: its last row) or before each origin,
    and (3, W) flags: too few rows for the context, one row only (set by ``_queries`` when the spacing decides
    the query times), no input row."""
    spec, first = trained.spec, offsets[:-1]
    end = offsets[1:] - 1 if end is None else end
    ends = (
        [_last_anchor(series, offsets, times, trained, codec, end)]
        if options.origins is None and spec.anchor is not None
        else [(end + 1, times[end])]
        if options.origins is None
        else [
            (_rows_before(series, offsets, times, np.full(len(first), o)), np.full(len(first), o))
            for o in options.origins
        ]
    )
    parts = []
    for in_hi, origin in ends:
        if spec.mode == "count":
            in_lo = np.maximum(in_hi - spec.lookback, first)
        elif spec.observe is None:
            in_lo = first
        else:
            in_lo = _rows_before(series, offsets, times, origin - spec.observe)
        parts.append(Windows(np.arange(len(first)), in_lo, in_hi, in_hi, in_hi, origin))
    w = Windows(*(np.concatenate(a) for a in zip(*(p.__dict__.values() for p in parts), strict=True)))
    before = w.in_hi - offsets[w.series]  # rows up to the origin
    need = options.min_rows or (spec.lookback if spec.mode == "count" else 1)
    return w, np.stack([before < need, np.zeros(len(w), dtype=bool), w.in_hi <= w.in_lo])


def _queries(
    w: Windows,
    step: np.ndarray,
    offsets: np.ndarray,
    times: np.ndarray,
    codec: TimeCodec,
    trained: Trained,
    options: Options,
    problems: np.ndarray,
) -> tuple[Windows, np.ndarray, np.ndarray]:
    """(W, K) query times after each origin and their validity: the given ones, else the checkpoint's
    ``predict_queries``, else the trained horizon K (count windows) or the forecast span D, every step of the
    series' own spacing: calendar days in the data's zone for a series with calendar spacing, else its own spacing
    (regular series) or its median spacing rounded to a clean step (``stamps.calendar_days``, ``stamps.clean_step``)."""
    if options.observed_span is not None:
        return (w, *_observed_queries(w, offsets, times, options.observed_span))
    given = options.query_times if options.query_times is not None else trained.predict_queries
    if given is not None:
        q = np.tile(np.asarray(given, dtype=np.float64), (len(w), 1))
        if options.query_times is not None and options.query_days is not None and len(w):
            days = np.tile(np.asarray(options.query_days, dtype=np.int64), (len(w), 1))
            q = np.where(days > 0, calendar_offsets(w.origin, days, codec), q)
        return w, q, np.ones_like(q, dtype=bool)
    spec = trained.spec
    grid = clean_step(offsets, times, step, codec)  # (n_series,) the step between query times
    if spec.mode == "count":
        n = np.full(len(w), spec.horizon)
    elif spec.forecast is not None:  # as many steps of the grid as fit in the trained forecast span, at least 1
        n = np.maximum(np.floor(spec.forecast / grid[w.series] + 1e-9).astype(np.int64), 1)
    else:
        raise JobError("the model forecasts one window per series without a forecast span: give --query_times")
    # each series' spacing comes from its own rows: a one-row series has none (predict falls back to the overall
    # median, which would depend on the chunk), so it needs query times
    problems[1] = np.diff(offsets)[w.series] < 2
    k = np.arange(1, int(n.max(initial=1)) + 1)
    valid = k[None, :] <= n[:, None]
    q = grid[w.series, None] * k[None, :]
    days = calendar_days(offsets, times, codec, step)[w.series, None] * k[None, :]
    if days.any():
        q = np.where(days > 0, calendar_offsets(w.origin, days, codec), q)
    return w, np.where(valid, q, 0.0), valid


def _observed_queries(
    w: Windows, offsets: np.ndarray, times: np.ndarray, span: float
) -> tuple[np.ndarray, np.ndarray]:
    """(W, K) query times at each window's own rows in [origin, origin + span] (what a backtest scores an irregular
    series at: no resampling), and their validity (a window without such rows has none)."""
    from datamodules.windows import searchsorted_by_series

    row_series = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    hi = searchsorted_by_series(row_series, times, w.series, w.origin + span, "right")
    n = np.maximum(hi - w.in_hi, 0)
    k = np.arange(max(int(n.max(initial=0)), 1))
    valid = k[None, :] < n[:, None]
    rows = np.minimum(w.in_hi[:, None] + k[None, :], len(times) - 1)
    return np.where(valid, times[rows] - w.origin[:, None], 0.0), valid


def _window_reasons(problems: np.ndarray, w: Windows, codec: TimeCodec, options: Options, trained: Trained):
    """(W,) reason a window cannot be forecast (None where it can); ``problems`` (3, W) as ``_origin_windows``."""
    spec = trained.spec
    need = options.min_rows or (spec.lookback if spec.mode == "count" else 1)
    messages = [
        f"too short for the model's context: fewer than {need} rows before the origin",
        "one row only: the query times follow each series' median spacing, which needs 2 (or give --query_times)",
        "no observation in the model's input window before the origin",
    ]
    out = np.full(len(w), None, dtype=object)
    for flags, message in reversed(list(zip(problems, messages, strict=True))):  # the first problem wins
        out[flags] = message
    if options.origins is not None and len(w):
        stamps = [shown_time(o, codec) for o in w.origin]
        out = np.asarray(
            [None if r is None else f"origin {s}: {r}" for r, s in zip(out, stamps, strict=True)], dtype=object
        )
    return out
