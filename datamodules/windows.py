"""Forecast windows as row ranges into the sorted canonical table, computed with vectorised numpy.

A window is ``(series, in_lo, in_hi, tg_lo, tg_hi, origin)``: inputs are rows ``[in_lo, in_hi)``, targets rows
``[tg_lo, tg_hi)``, all of one series. Three ways to cut them:

- ``count``: lookback L rows, horizon K rows, starts every ``stride`` rows from each series' first row; the
  origin is the last input's time (regular data, the ETT protocol).
- ``duration``: origins every S from ``first time + W``; inputs ``[o - W, o)``, targets ``[o, o + D]``. An S in
  days or weeks ("1d") is calendar days for zone-aware time stamps: the origins keep their wall-clock time. With an
  ``anchor`` ("12:00", "Mon 06:00") the origins are that local time, from the first at or after ``first + W``,
  every S (whole days or weeks), in the data's zone (``stamps.anchor_origins``). An origin is a time, not a row:
  no observation is needed at it.
- ``fixed``: one window per series at origin ``o``; inputs ``[o - W, o)`` (all earlier ones when W is None),
  targets ``[o, o + D]`` (all later ones when D is None) — the PhysioNet protocol.

A window belongs to the split that holds all of its targets (span ``[first target, last target]`` for count
windows, ``[o, o + D]`` for the others); its inputs may reach back into the previous split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cfc_forecast.errors import UserError
from datamodules.timing import duration_days, parse_duration

WindowMode = Literal["count", "duration", "fixed"]


@dataclass
class WindowSpec:
    """Resolved windowing arguments (durations already in the time unit)."""

    mode: WindowMode
    lookback: int = 0
    horizon: int = 0
    stride: int = 1
    observe: float | None = None
    forecast: float | None = None
    every: float | None = None
    origin: float | None = None
    every_days: int = 0  # ``every`` in whole days or weeks: calendar days for zone-aware time stamps
    anchor: str | None = None  # duration windows: origins at this local wall-clock time ("12:00", "Mon 06:00")


@dataclass
class Windows:
    """W windows as (W,) int64 row bounds, their series and (W,) float64 origins."""

    series: np.ndarray
    in_lo: np.ndarray
    in_hi: np.ndarray
    tg_lo: np.ndarray
    tg_hi: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return len(self.series)

    def select(self, keep: np.ndarray) -> Windows:
        """The windows where ``keep`` (W,) bool is True."""
        return Windows(*(a[keep] for a in self.__dict__.values()))


def searchsorted_by_series(
    series: np.ndarray, times: np.ndarray, q_series: np.ndarray, q_times: np.ndarray, side: str
) -> np.ndarray:
    """Global row index where each query (series, time) would be inserted into the rows sorted by both.

    Exact for ties (a lexicographic merge, not an offset trick): ``side="left"`` places a query before rows
    of equal time, ``"right"`` after them.

    Args:
        series: (N,) series index of each row; rows sorted by (series, time).
        times: (N,) float64 row times.
        q_series: (Q,) series of each query.
        q_times: (Q,) float64 query times.
        side: "left" or "right".

    Returns:
        (Q,) int64 row indices.
    """
    n = len(series)
    flag = np.concatenate([np.zeros(n), np.full(len(q_series), -1.0 if side == "left" else 1.0)])
    order = np.lexsort((flag, np.concatenate([times, q_times]), np.concatenate([series, q_series])))
    is_query = order >= n
    queries_before = np.cumsum(is_query) - is_query
    positions = np.flatnonzero(is_query)
    result = np.empty(len(q_series), dtype=np.int64)
    result[order[positions] - n] = positions - queries_before[positions]
    return result


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts (S,), the owner of each of sum(counts) items and its rank within its owner."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(int(counts.sum())) - starts[owner]


def count_windows(offsets: np.ndarray, times: np.ndarray, spec: WindowSpec) -> Windows:
    """All count windows (L inputs, K targets, every ``stride`` rows) of every series."""
    length = np.diff(offsets)
    span = spec.lookback + spec.horizon
    n = np.where(length >= span, (length - span) // spec.stride + 1, 0)
    owner, rank = _ragged(n)
    start = offsets[owner] + rank * spec.stride
    cut = start + spec.lookback
    return Windows(owner, start, cut, cut, cut + spec.horizon, times[cut - 1])


def span_windows(
    series: np.ndarray,
    offsets: np.ndarray,
    times: np.ndarray,
    owner: np.ndarray,
    origin: np.ndarray,
    spec: WindowSpec,
) -> Windows:
    """Windows of the given series at the given origins, bounded by ``spec.observe`` and ``spec.forecast``."""
    in_hi = searchsorted_by_series(series, times, owner, origin, "left")
    if spec.observe is None:
        in_lo = offsets[owner]
    else:
        in_lo = searchsorted_by_series(series, times, owner, origin - spec.observe, "left")
    if spec.forecast is None:
        tg_hi = offsets[owner + 1]
    else:
        tg_hi = searchsorted_by_series(series, times, owner, origin + spec.forecast, "right")
    return Windows(owner, in_lo, in_hi, in_hi, tg_hi, origin)


def duration_windows(
    series: np.ndarray,
    offsets: np.ndarray,
    times: np.ndarray,
    spec: WindowSpec,
    later: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    anchored: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Windows:
    """Origins every ``spec.every`` from each series' first time + W while the forecast span fits.

    ``later(start, days)`` (both (W,)): the time from each start to the same wall-clock time ``days`` calendar days
    later; given, origins every ``spec.every_days`` follow the calendar (``stamps.calendar_offsets``).
    ``anchored(start, stop)`` (both (S,)): the (owner, origin) pairs at ``spec.anchor`` within each series' bounds.
    """
    first, last = times[offsets[:-1]], times[offsets[1:] - 1]
    if spec.anchor is not None:
        if anchored is None:
            raise UserError("origin_anchor needs date-time stamps (a wall-clock time has no meaning for numbers)")
        owner, origin = anchored(first + spec.observe, last - spec.forecast)
        return span_windows(series, offsets, times, owner, origin, spec)
    room = last - first - spec.observe - spec.forecast
    n = np.where(room >= 0, np.floor(np.maximum(room, 0) / spec.every).astype(np.int64) + 1, 0)
    owner, rank = _ragged(n)
    start = first[owner] + spec.observe
    if later is None or not spec.every_days:
        return span_windows(series, offsets, times, owner, start + rank * spec.every, spec)
    origin = start + later(start, rank * spec.every_days)  # 23 or 25 h per day across a DST change
    fits = origin + spec.forecast <= last[owner]
    return span_windows(series, offsets, times, owner[fits], origin[fits], spec)


def fixed_windows(series: np.ndarray, offsets: np.ndarray, times: np.ndarray, spec: WindowSpec) -> Windows:
    """One window per series at ``spec.origin``."""
    owner = np.arange(len(offsets) - 1)
    return span_windows(series, offsets, times, owner, np.full(len(owner), spec.origin), spec)


def target_span(w: Windows, times: np.ndarray, spec: WindowSpec, step_targets: bool) -> tuple[np.ndarray, np.ndarray]:
    """(W,) first and last time a window's targets may take, for assigning it to a split."""
    has_tg = w.tg_hi > w.tg_lo
    first_tg = times[np.minimum(w.tg_lo, len(times) - 1)]
    last_tg = np.where(has_tg, times[np.maximum(w.tg_hi - 1, 0)], w.origin)
    if spec.mode == "count":
        lo = times[w.in_lo] if step_targets else np.where(has_tg, first_tg, w.origin)
        return lo, last_tg
    lo = times[w.in_lo] if step_targets else w.origin
    return lo, (w.origin + spec.forecast) if spec.forecast is not None else last_tg


def window_spec(
    unit: str,
    lookback: int | None,
    horizon: int | None,
    stride: int,
    observe: Any,
    forecast: Any,
    every: Any,
    origin: float | None,
    step_targets: bool,
    anchor: str | None = None,
) -> WindowSpec:
    """Resolve the windowing arguments into one mode, or raise a ``UserError`` saying what to give."""
    if anchor is not None and (lookback is not None or horizon is not None or origin is not None):
        raise UserError(
            "origin_anchor places duration windows' origins (observe/forecast/every): count windows (lookback/"
            "horizon) start at rows, not times, and a fixed origin is one time already"
        )
    if lookback is not None or horizon is not None:
        if origin is not None or observe is not None or forecast is not None or every is not None:
            raise UserError("give either lookback/horizon (count windows) or observe/forecast/every/origin")
        if lookback is None or horizon is None or lookback < 1 or horizon < 0 or stride < 1:
            raise UserError(
                f"count windows need lookback >= 1, horizon >= 0, stride >= 1; got "
                f"lookback={lookback}, horizon={horizon}, stride={stride}"
            )
        if horizon == 0 and not step_targets:
            raise UserError("horizon=0 leaves nothing to forecast; set step_targets=True or horizon >= 1")
        return WindowSpec("count", lookback=lookback, horizon=horizon, stride=stride)
    w = parse_duration(observe, unit, "observe")
    d = parse_duration(forecast, unit, "forecast")
    if origin is not None:
        return WindowSpec("fixed", observe=w, forecast=d, origin=origin)
    if w is None or d is None:
        raise UserError(
            "choose a windowing: forecast (the duration to forecast, e.g. --data.forecast 6h; observe and every "
            "then default to 4x and 1x it on the command line), observe+forecast[+every] (duration windows), "
            "lookback+horizon (counts of rows), or origin[+observe][+forecast] (one window per series)"
        )
    if anchor is not None:
        from datamodules.stamps import parse_anchor

        weekly = parse_anchor(anchor)[0] is not None
        every = every if every is not None else ("1w" if weekly else "1d")
        if duration_days(every) == 0 or (weekly and duration_days(every) % 7):
            raise UserError(
                f"origin_anchor={anchor!r} repeats every whole {'week' if weekly else 'day'}: give every as "
                f"{'1w, 2w' if weekly else '1d, 2d, 1w'}, ..., got every={every!r}"
            )
    s = parse_duration(every, unit, "every") if every is not None else d
    if not s or s <= 0:
        raise UserError(f"every={every!r} must be a positive duration")
    days = duration_days(every) if every is not None else 0
    return WindowSpec("duration", observe=w, forecast=d, every=s, every_days=days, anchor=anchor)
