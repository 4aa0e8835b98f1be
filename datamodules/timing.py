"""Time stamps as float times in a declared unit, durations, and calendar features.

Inside the DataModules every time is a float64 number in the declared time unit: for a datetime column, the time
since the Unix epoch (UTC); for a numeric column, the number itself (the user declares its unit). ``TimeCodec``
remembers which, so forecasts are written back with the data's own time stamps and time zone. How time stamps are
read and placed (formats, local times, zones, calendar spacing) is ``datamodules.stamps``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from cfc_forecast.errors import UserError

TimeUnit = Literal["ms", "s", "min", "h", "d", "w", "step"]
CalendarFeature = Literal["hour_of_day", "day_of_week", "day_of_month", "month_of_year"]

UNIT_SECONDS: dict[str, float] = {
    "ms": 1e-3,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "step": 1.0,
}  # "step": abstract steps, numeric time columns only
_ALIASES = {"m": "min", "sec": "s", "hr": "h", "hour": "h", "hours": "h", "day": "d", "days": "d"}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]+)?\s*$")


def check_unit(unit: str, name: str = "time_unit") -> str:
    """Return ``unit`` if it is a known time unit, else raise a ``UserError`` listing the valid ones."""
    if unit not in UNIT_SECONDS:
        raise UserError(f"{name}={unit!r} is not a time unit; choose one of {sorted(UNIT_SECONDS)}")
    return unit


def parse_duration(value: str | float | None, unit: str, name: str) -> float | None:
    """Convert a duration such as ``"6h"``, ``"2d"``, ``"30min"`` or a plain number into ``unit``.

    Args:
        value: a string ``<number><unit>`` or a number already in ``unit``; None passes through.
        unit: the DataModule's time unit.
        name: the argument's name, for the error message.

    Returns:
        The duration in ``unit`` (a float >= 0), or None.

    Raises:
        UserError: unparseable, unknown unit or negative.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise UserError(f"{name}={value!r} is not a duration; write e.g. '6h', '2d', '30min' or a number")
        given = _ALIASES.get(match.group(2) or unit, match.group(2) or unit)
        if given not in UNIT_SECONDS:  # the whole value is shown: "'x' is not a time unit" alone hid the '2'
            raise UserError(
                f"{name}={value!r}: {match.group(2)!r} is not a time unit; write a number and one of "
                f"{', '.join(UNIT_SECONDS)} (or {', '.join(_ALIASES)}), e.g. '6h'"
            )
        number = float(match.group(1)) * UNIT_SECONDS[given] / UNIT_SECONDS[unit]
    if not np.isfinite(number) or number < 0:
        raise UserError(f"{name}={value!r} must be a finite duration >= 0")
    return number


@dataclass
class TimeCodec:
    """How float times map back to the data's time stamps.

    Attributes:
        unit: the float times' unit.
        is_datetime: True when the source column held date-times (floats count from the Unix epoch, UTC).
        time_zone: the source column's time zone, or None for naive date-times or numbers.
        format: the format text time stamps were parsed with (``infer_time_format``), None when they were not text.
    """

    unit: str
    is_datetime: bool
    time_zone: str | None = None
    format: str | None = None  # the chrono format text stamps were read with (None: not text)

    def encode(self, column: pl.Expr) -> pl.Expr:
        """Expression turning a datetime or numeric column into float64 times in ``unit``."""
        if not self.is_datetime:
            return column.cast(pl.Float64)
        return column.dt.epoch("us").cast(pl.Float64) / (UNIT_SECONDS[self.unit] * 1e6)

    def decode(self, times: np.ndarray) -> pl.Series:
        """Turn float times (any shape, flattened) back into the data's time stamps."""
        flat = np.asarray(times, dtype=np.float64).reshape(-1)
        if not self.is_datetime:
            return pl.Series("time", flat)
        micros = np.round(flat * UNIT_SECONDS[self.unit] * 1e6).astype(np.int64)
        stamps = pl.from_epoch(pl.Series("time", micros), "us")
        if self.time_zone is not None:
            stamps = stamps.dt.replace_time_zone("UTC").dt.convert_time_zone(self.time_zone)
        return stamps


def codec_for(frame: pl.DataFrame, column: str, unit: str, time_format: str | None = None) -> TimeCodec:
    """The codec of a parsed time column (datetime or numeric)."""
    dtype = frame.schema[column]
    if isinstance(dtype, pl.Datetime):
        if unit == "step":
            raise UserError(f"time column {column!r} holds date-times: choose a time_unit such as 'h', not 'step'")
        return TimeCodec(unit=unit, is_datetime=True, time_zone=dtype.time_zone, format=time_format)
    return TimeCodec(unit=unit, is_datetime=False)


def calendar_features(times: np.ndarray, codec: TimeCodec, names: list[str]) -> np.ndarray:
    """Calendar features of absolute float times, each scaled to [-0.5, 0.5], in the data's local time.

    Args:
        times: (N,) float64 absolute times in ``codec.unit``.
        codec: the data's time codec; must describe date-times.
        names: features among ``hour_of_day``, ``day_of_week`` (Monday 0), ``day_of_month``, ``month_of_year``.

    Returns:
        (N, len(names)) float32 array.
    """
    if not names:
        return np.zeros((len(times), 0), dtype=np.float32)
    if not codec.is_datetime:
        raise UserError(f"calendar features {names} need a date-time time column; this data has numeric times")
    stamps = codec.decode(times)
    exprs = {
        "hour_of_day": (stamps.dt.hour() + stamps.dt.minute() / 60.0) / 23.0 - 0.5,
        "day_of_week": (stamps.dt.weekday() - 1) / 6.0 - 0.5,
        "day_of_month": (stamps.dt.day() - 1) / 30.0 - 0.5,
        "month_of_year": (stamps.dt.month() - 1) / 11.0 - 0.5,
    }
    unknown = [n for n in names if n not in exprs]
    if unknown:
        raise UserError(f"unknown calendar features {unknown}; choose from {sorted(exprs)}")
    return np.stack([exprs[n].to_numpy().astype(np.float32) for n in names], axis=1)


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


def duration_days(value: str | float) -> int:
    """Whole calendar days of a duration written in days or weeks (``"1d"``, ``"2w"``), else 0."""
    if isinstance(value, (int, float)):
        return 0
    match = _DURATION.match(str(value))
    if match is None:
        return 0
    unit = _ALIASES.get(match.group(2) or "", match.group(2) or "")
    number = float(match.group(1)) * (7 if unit == "w" else 1)
    return int(number) if unit in ("d", "w") and number == int(number) and number > 0 else 0
