"""Every rule about reading and placing time stamps, in one place: fit, ``cfc-forecast predict``, ``forecast_rows``
and the batch job all call these.

- The format of text time stamps is inferred once, at training (``infer_time_format``; refused when the stamps can
  be read more than one way, or by no one format), stored in the checkpoint and reused (``parse_stamps``).
- Local times given as arguments must exist, once, in the data's zone (``user_time``); times shown in messages are
  written back in the data's own form (``shown_time``).
- Files in several zones are read in one; zone-aware mixed with naive is refused (``harmonise_zones``).
- A series spaced by whole days (or weeks) at one wall-clock time has *calendar spacing*: its forecasts fall on the
  same wall-clock time of later days across DST changes (``calendar_days``, ``calendar_offsets``); the default
  grid of other series is their own regular spacing or a clean step (``clean_step``).
- Origins on the clock: at a local wall-clock time ("12:00", "Mon 06:00") every so many calendar days, whatever
  the UTC offset (``anchor_origins``).
- Numeric times that look like they are in another unit than declared are named with the fix
  (``numeric_time_hint``).
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import numpy as np
import polars as pl

from cfc_forecast.errors import UserError
from datamodules.timing import UNIT_SECONDS, TimeCodec, median_steps

log = logging.getLogger(__name__)


def to_datetime_or_number(
    frame: pl.DataFrame, column: str, source: str, time_format: str | None = None
) -> tuple[pl.DataFrame, str | None]:
    """Parse a text time column as date-times (one format for all, ``infer_time_format`` unless ``time_format``
    is given); leave datetime and numeric columns as they are.

    Returns:
        The frame and the format the stamps were read with (None when they were not text).

    Raises:
        UserError: naming ``source``, the column and the stamps that do not parse, or the ways they could be read.
    """
    dtype = frame.schema[column]
    if dtype.is_numeric() or isinstance(dtype, pl.Datetime):
        return frame, None
    if dtype == pl.Date:
        return frame.with_columns(pl.col(column).cast(pl.Datetime("us"))), None
    if dtype != pl.String:
        raise UserError(f"{source}: time column {column!r} has type {dtype}; expected date-times or numbers")
    fmt = time_format or infer_time_format(frame[column], column, source)
    parsed = parse_stamps(frame[column], fmt)
    bad = frame[column].filter(parsed.is_null() & frame[column].is_not_null())
    if len(bad):
        raise UserError(
            f"{source}: {len(bad)} time stamps in column {column!r} do not parse with the format {fmt!r}, "
            f"e.g. {bad.head(3).to_list()}; use one format throughout (or set --data.time_format)"
        )
    return frame.with_columns(parsed.alias(column)), fmt


# -- text time stamps: one format, inferred once -------------------------------------------------------------
_DATES = ("%Y-%m-%d", "%Y/%m/%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y", "%m-%d-%Y")
_CLOCKS = ("", " %H:%M", " %H:%M:%S%.f", "T%H:%M", "T%H:%M:%S%.f")
# the formats tried, in order of preference ("%.f": optional fraction; "%#z": "Z" or an offset such as "+02:00")
FORMATS = tuple(d + c + z for d in _DATES for c in _CLOCKS for z in ("", "%#z") if c or not z)
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_LEAP = r"\d:[0-5]\d:60(\D|$)"
_OFFSET = r"(Z|[+-]\d\d:?\d\d)\s*$"


def parse_stamps(values: pl.Series, fmt: str) -> pl.Series:
    """Text time stamps read with one format (a stamp without its clock part counts as midnight when the format
    has no UTC offset); stamps that do not fit become null, and so do years before 1000 read by ``%Y``.

    Args:
        values: (N,) String series. fmt: a chrono format such as ``"%Y-%m-%d %H:%M:%S%.f"``.

    Returns:
        (N,) Datetime("us") series (UTC when the format reads offsets).
    """
    try:
        parsed = values.str.to_datetime(fmt, strict=False, time_unit="us")
    except pl.exceptions.PolarsError as err:
        raise UserError(f"time_format {fmt!r} is not a date-time format ({err}); write e.g. '%Y-%m-%d %H:%M'") from None
    date = re.split(r"[ T]%H", fmt)[0]
    if date != fmt and "%#z" not in fmt and "%z" not in fmt:
        parsed = parsed.fill_null(values.str.to_datetime(date, strict=False, time_unit="us"))
    if "%Y" in fmt:  # chrono's %Y also reads "21" (the year 21): a two-digit year does not fit a four-digit format
        parsed = pl.select(pl.when(parsed.dt.year() >= 1000).then(parsed)).to_series().alias(values.name)
    return parsed


def _fits(values: pl.Series, fmt: str) -> pl.Series:
    return parse_stamps(values, fmt).is_not_null()


def infer_time_format(values: pl.Series, column: str, source: str) -> str:
    """The one format that reads every text time stamp of ``values``.

    Args:
        values: (N,) String series of time stamps. column, source: named in messages.

    Returns:
        A chrono format (also logged), for ``parse_stamps``.

    Raises:
        UserError: numbers stored as text, leap seconds (second 60), stamps with and without a UTC offset mixed,
            stamps that more than one format reads differently (day/month against month/day), or stamps no
            single format reads.
    """
    text = values.drop_nulls().unique(maintain_order=True)
    where = f"{source}: time column {column!r}"
    if len(text) == 0:
        return FORMATS[0]
    if text.str.contains(_NUMBER).all():
        raise UserError(
            f"{where} holds numbers stored as text, e.g. {text.head(2).to_list()}; store them as numbers "
            "(e.g. pl.col(...).cast(pl.Float64)) and set --data.time_unit to their unit ('s' for Unix seconds)"
        )
    leap = text.filter(text.str.contains(_LEAP))
    if len(leap):
        raise UserError(
            f"{where}: {len(leap)} stamps name a leap second (second 60), e.g. {leap.head(2).to_list()}, which "
            "date-times cannot hold (they would silently become the next minute); replace them by :59 or drop them"
        )
    head = text.head(200)
    alive = [f for f in FORMATS if _fits(head, f).all()]
    full = [f for f in alive if _fits(text, f).all()]
    readings: dict[str, pl.Series] = {}
    for f in full:
        parsed = parse_stamps(text, f).dt.replace_time_zone(None)
        if not any(parsed.equals(other) for other in readings.values()):
            readings[f] = parsed
    if len(readings) > 1:
        (fa, a), (fb, b) = list(readings.items())[:2]
        example = text.filter(a != b).head(1).to_list()
        raise UserError(
            f"{where}: stamps such as {example} read as {fa!r} or as {fb!r}; say which with "
            f"--data.time_format '{fa}' (or write them as ISO 8601, '2021-02-01 00:00')"
        )
    if readings:
        fmt = next(iter(readings))
        utc = " (UTC offsets: the stamps are converted to UTC)" if "%#z" in fmt else ""
        log.info("%s: time stamps read with the format %r%s", where, fmt, utc)
        return fmt
    with_offset = text.str.contains(_OFFSET)
    if with_offset.any() and not with_offset.all():
        raise UserError(
            f"{where} mixes stamps with a UTC offset ({text.filter(with_offset).head(1).to_list()}) and without "
            f"({text.filter(~with_offset).head(1).to_list()}); give all of them with an offset, or none"
        )
    sample = text.head(10_000)
    best = max(FORMATS, key=lambda f: int(_fits(sample, f).sum()))
    bad = sample.filter(~_fits(sample, best))
    if len(bad) == len(sample):
        raise UserError(
            f"{where} does not parse as date-times, e.g. {bad.head(3).to_list()}; write ISO 8601 stamps such as "
            "'2021-02-01 00:00', name their format with --data.time_format, or give numbers with a time_unit"
        )
    raise UserError(
        f"{where}: no one format reads every stamp; {len(bad)} do not fit the most common one ({best!r}), e.g. "
        f"{bad.head(3).to_list()}; use one format throughout, or name it with --data.time_format"
    )


# -- time stamps given as arguments -----------------------------------------------------------------------
def user_time(value: str | float, codec: TimeCodec, name: str) -> float:
    """A user-given time stamp (text in the data's format or ISO 8601, in the data's time zone unless it carries a
    UTC offset) or number, as a float time of ``codec``.

    Raises:
        UserError: not a date-time, or a local time the data's zone skips (spring forward) or repeats (fall back).
    """
    if not codec.is_datetime:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name}={value!r}: this data's times are numbers; give a number") from None
    text = pl.Series(name, [str(value)])
    stamp = parse_stamps(text, codec.format) if codec.format else _iso(text)
    if stamp.null_count():  # the data's own format first (a day/month date reads as in the data), then ISO 8601
        stamp = _iso(text)
    if stamp.null_count():
        raise UserError(f"{name}={value!r} is not a date-time like '2017-06-26 00:00'")
    if codec.time_zone is not None and stamp.dtype.time_zone is None:
        stamp = localize(stamp, codec.time_zone, f"{name}={value!r}")
    return float(pl.select(codec.encode(pl.lit(stamp))).item())


def shown_time(t: float, codec: TimeCodec) -> str:
    """A float time of ``codec`` as a person reads it in a message: a date-time in the data's own format (naive
    stamps read with a format text) or as ISO 8601 with its UTC offset (zoned stamps, whose offset makes a repeated
    fall-back hour unambiguous); a number with at most 6 significant digits (18.998999999999995 -> '18.999'),
    never in exponent form (1.7e9 -> '1700000000'). ``user_time`` reads every form back (numbers to 6 digits).
    """
    if not codec.is_datetime:
        return np.format_float_positional(float(t), precision=6, unique=True, fractional=False, trim="-")
    stamp = codec.decode(np.array([t]))
    if codec.format and codec.time_zone is None:  # a chrono format (polars'), not Python's strftime
        return stamp.dt.to_string(codec.format)[0]
    return stamp[0].isoformat()


def _iso(text: pl.Series) -> pl.Series:
    """Text read as ISO 8601 date-times; null where it is none (polars raises when it finds no format at all, e.g.
    for 'yesterday')."""
    try:
        return text.str.to_datetime(strict=False, time_unit="us")
    except pl.exceptions.ComputeError:
        return pl.Series(text.name, [None] * len(text), dtype=pl.Datetime("us"))


def localize(naive: pl.Series, zone: str, what: str) -> pl.Series:
    """Naive wall-clock stamps read in ``zone``.

    Raises:
        UserError: naming ``what``, for a stamp ``zone`` skips or repeats, with the UTC offsets that make it exact.
    """
    skipped = naive.dt.replace_time_zone(zone, non_existent="null", ambiguous="null")
    lost = skipped.is_null() & naive.is_not_null()  # empty stamps stay empty
    if not lost.any():
        return skipped
    first = naive.filter(lost).head(1)
    early = first.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
    if early.null_count() == 0:  # ambiguous: the hour is repeated
        late = first.dt.replace_time_zone(zone, ambiguous="latest")
        a, b = early.dt.strftime("%:z").item(), late.dt.strftime("%:z").item()
        stamp = first.dt.strftime("%Y-%m-%d %H:%M").item()
        raise UserError(
            f"{what}: {stamp} occurs twice in time zone {zone} (the clocks go back); write it with its UTC offset: "
            f"'{stamp}{a}' (the first) or '{stamp}{b}' (the second)"
        )
    before = (first - timedelta(hours=3)).dt.replace_time_zone(zone).dt.strftime("%:z").item()
    stamp = first.dt.strftime("%Y-%m-%d %H:%M").item()
    raise UserError(
        f"{what}: {stamp} does not exist in time zone {zone} (the clocks skip it); give an existing time, or write "
        f"it with a UTC offset, e.g. '{stamp}{before}'"
    )


def in_zone(stamps: pl.Series, zone: str | None, what: str) -> pl.Series:
    """Date-times in the IANA time zone ``zone`` (``--data.time_zone``): zone-aware stamps (e.g. a CSV's UTC
    offsets, read as UTC) are converted to it, naive ones read as its wall-clock times; None leaves them as they are.

    Raises:
        UserError: an unknown zone, or a naive stamp ``zone`` skips or repeats (``localize``), naming ``what``.
    """
    if zone is None or not isinstance(stamps.dtype, pl.Datetime):
        return stamps
    try:
        if stamps.dtype.time_zone is not None:
            return stamps.dt.convert_time_zone(zone)
        return localize(stamps, zone, what)
    except pl.exceptions.ComputeError as err:  # polars names an unknown zone
        raise UserError(f"--data.time_zone {zone!r} is not a time zone ({err}); give an IANA name such as "
                        "'Europe/Berlin' or 'UTC'") from None  # fmt: skip


# -- files with time stamps in several zones -------------------------------------------------------------------
def harmonise_zones(schemas: list[pl.Schema], column: str, names: list[str]) -> str | None:
    """The one time zone the time columns of several files are read in (the first file's), or None to leave them.

    Args:
        schemas: each file's schema. column: the time column. names: the files, for messages.

    Raises:
        UserError: some files hold zone-aware stamps and others naive ones (naming the files and their zones).
    """
    kinds = [s.get(column) for s in schemas]
    zones = [k.time_zone if isinstance(k, pl.Datetime) else None for k in kinds]
    aware = [isinstance(k, pl.Datetime) and z is not None for k, z in zip(kinds, zones, strict=True)]
    naive = [isinstance(k, pl.Datetime) and z is None for k, z in zip(kinds, zones, strict=True)]
    if any(aware) and any(naive):
        a = [f"{n} ({z})" for n, z, x in zip(names, zones, aware, strict=True) if x][:2]
        b = [n for n, x in zip(names, naive, strict=True) if x][:2]
        raise UserError(
            f"time column {column!r}: files {a} hold stamps with a time zone, files {b} stamps without one; give "
            "every file its time zone (e.g. .dt.replace_time_zone('UTC') on the naive ones)"
        )
    distinct = list(dict.fromkeys(z for z in zones if z is not None))
    if len(distinct) > 1:
        log.info("time column %r: files in time zones %s, all read in %s", column, distinct, distinct[0])
        return distinct[0]
    return None


# -- calendar spacing and the default query grid ---------------------------------------------------------------
def calendar_days(offsets: np.ndarray, times: np.ndarray, codec: TimeCodec, step: np.ndarray) -> np.ndarray:
    """(n_series,) int64 days of each series' calendar spacing, 0 where it has none.

    A series has calendar spacing when its stamps, in the data's zone, share one wall-clock time and its median
    spacing ``step`` (n_series,) is within 1 h of a whole number of days (a week is 7). Its forecasts then fall
    on the same wall-clock time of later days (``calendar_offsets``), across DST changes.
    """
    n = len(offsets) - 1
    if not codec.is_datetime or n == 0:
        return np.zeros(n, dtype=np.int64)
    days = step * UNIT_SECONDS[codec.unit] / 86400.0
    whole = np.round(days)
    near = (whole >= 1) & (np.abs(days - whole) * 24.0 <= 1.0)
    if not near.any():  # most series: no stamps to decode
        return np.zeros(n, dtype=np.int64)
    stamps = codec.decode(times)
    series = np.repeat(np.arange(n), np.diff(offsets))
    clocks = pl.DataFrame({"s": series, "c": stamps.dt.time()}).group_by("s").agg(pl.col("c").n_unique())
    one_clock = np.zeros(n, dtype=bool)
    one_clock[clocks["s"].to_numpy()] = clocks["c"].to_numpy() == 1
    return np.where(near & one_clock, whole, 0).astype(np.int64)


def calendar_offsets(origin: np.ndarray, days: np.ndarray, codec: TimeCodec) -> np.ndarray:
    """(W, K) float times from each origin (W,) to the same wall-clock time ``days`` (W, K) later, in the data's
    zone (23 or 25 h for a day across a DST change), in ``codec.unit``."""
    w, k = days.shape
    start = codec.decode(np.repeat(origin, k))
    frame = pl.DataFrame({"o": start, "d": days.reshape(-1)})
    later = frame.select(pl.col("o").dt.offset_by(pl.format("{}d", pl.col("d")))).to_series()
    return (pl.select(codec.encode(pl.lit(later))).to_series().to_numpy() - np.repeat(origin, k)).reshape(w, k)


_CLEAN = {"s": (1, 2, 5, 10, 15, 30), "min": (1, 2, 5, 10, 15, 30), "h": (1, 2, 3, 4, 6, 8, 12)}


def clean_step(offsets: np.ndarray, times: np.ndarray, step: np.ndarray, codec: TimeCodec) -> np.ndarray:
    """(n_series,) the step of each series' default query grid, from its median spacing ``step`` (n_series,).

    A regular series (at least half of its spacings equal the median, within 1 ms) keeps its own spacing, to the
    millisecond; the median of an irregular one is rounded to a clean step: 1/2/5/10/15/30 seconds or minutes,
    1/2/3/4/6/8/12 hours, or whole days. Numeric times are returned as they are.

    Args:
        offsets: (n_series + 1,) row offsets. times: (N,) float64 times sorted by series, then time.
    """
    if not codec.is_datetime:
        return step
    seconds = np.asarray(step, dtype=np.float64) * UNIT_SECONDS[codec.unit]
    grid = np.asarray([m * UNIT_SECONDS[u] for u, ms in _CLEAN.items() for m in ms] + [86400.0])
    nearest = grid[np.argmin(np.abs(np.log(grid[None, :] / np.maximum(seconds[:, None], 1e-9))), axis=1)]
    days = np.maximum(np.round(seconds / 86400.0), 1.0) * 86400.0
    clean = np.where(seconds >= 86400.0, days, np.where(seconds >= 1.0, nearest, seconds))  # < 1 s: as measured
    series = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[1:]
    same = series == np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[:-1]
    gaps = np.diff(times) * UNIT_SECONDS[codec.unit]
    at_median = same & (np.abs(gaps - seconds[series]) <= 1e-3)
    share = np.bincount(series[at_median], minlength=len(step)) / np.maximum(
        np.bincount(series[same], minlength=len(step)), 1
    )
    exact = np.round(seconds * 1e3) / 1e3
    return np.where(share >= 0.5, exact, clean) / UNIT_SECONDS[codec.unit]


# -- numeric times -------------------------------------------------------------------------------------------------
_EPOCH = {"s": (9e8, 4.2e9), "ms": (9e11, 4.2e12)}  # Unix time stamps from 1998 to 2103
_EPOCH_NAME = {"s": "seconds", "ms": "milliseconds"}


def numeric_time_hint(times: np.ndarray, offsets: np.ndarray, unit: str, source: str) -> str:
    """For numeric times that look like they are not in ``unit`` (Unix epoch stamps of another unit; a median
    spacing of thousands of units that is over a month, e.g. ~3,600 between rows with time_unit 'h'; one under a
    millisecond): a warning (logged) and the hint it gives, else "".

    Args:
        times: (N,) float64 times, sorted by series then time. offsets: (n_series + 1,) row offsets of the series.
    """
    if len(times) < 2 or unit == "step":
        return ""
    step = float(np.median(median_steps(offsets, times)))
    lo, seconds = float(np.nanmin(times)), step * UNIT_SECONDS[unit]
    epoch = next((u for u, (a, b) in _EPOCH.items() if a <= lo <= b and u != unit), None)
    if epoch is not None:
        fix = f"--data.time_unit {epoch} (the values look like Unix epoch {_EPOCH_NAME[epoch]})"
    elif (step >= 1000 and seconds > 30 * 86400) or 0 < seconds < 1e-3:
        fix = "--data.time_unit to their unit"
    else:
        return ""
    hint = f"the numeric times are {step:g} {unit} apart (median): if they are not in {unit!r}, set {fix}"
    log.warning("%s: %s", source, hint)
    return hint


_WEEKDAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_ANCHOR = re.compile(r"^\s*(?:([A-Za-z]{3})[a-z]*\s+)?(\d{1,2}):(\d{2})\s*$")


def parse_anchor(anchor: str, name: str = "origin_anchor") -> tuple[int | None, int]:
    """A wall-clock origin anchor, ``"12:00"`` (every day) or ``"Mon 06:00"`` (every Monday), as (ISO weekday 1-7
    or None, minutes after midnight).

    Raises:
        UserError: anything else.
    """
    match = _ANCHOR.match(str(anchor))
    day = _WEEKDAYS.get((match.group(1) or "").lower()) if match else None
    if match is None or (match.group(1) and day is None) or int(match.group(2)) > 23 or int(match.group(3)) > 59:
        raise UserError(f"{name}={anchor!r}: give a local wall-clock time such as '12:00' or 'Mon 06:00'")
    return day, int(match.group(2)) * 60 + int(match.group(3))


def anchor_origins(
    start: np.ndarray, stop: np.ndarray, anchor: str, every_days: int, codec: TimeCodec
) -> tuple[np.ndarray, np.ndarray, int]:
    """Origins at a wall-clock time in the data's zone: for each series s, the anchor on the local day of
    ``start[s]`` (the first such day on the anchor's weekday), then every ``every_days`` calendar days, kept where
    ``start[s] <= origin <= stop[s]``. Each origin is the anchor's local time whatever the UTC offset (a day across
    a DST change is 23 or 25 h); an anchor a DST change skips (02:30 on the spring-forward day) gives no origin that
    day, one it repeats gives the first of the two.

    Args:
        start, stop: (S,) float times (``codec.unit``) bounding each series' origins. every_days: >= 1.
        codec: a date-time codec (its zone, or naive wall-clock stamps).

    Returns:
        (W,) series index and (W,) float origins, sorted by series then time; and the number of anchors a DST
        change skipped.
    """
    day, minutes = parse_anchor(anchor)
    local = pl.DataFrame({"s": np.arange(len(start)), "a": codec.decode(start), "b": codec.decode(stop)})
    first, last = pl.col("a").dt.date(), pl.col("b").dt.date()
    if day is not None:  # the first day on the anchor's weekday
        first = first + pl.duration(days=(day - first.dt.weekday()) % 7)
    days = local.select("s", pl.date_ranges(first, last, f"{every_days}d").alias("d")).explode("d").drop_nulls("d")
    wall = pl.col("d").cast(pl.Datetime("us")) + pl.duration(minutes=minutes)
    if codec.time_zone is not None:
        wall = wall.dt.replace_time_zone(codec.time_zone, ambiguous="earliest", non_existent="null")
    days = days.with_columns(codec.encode(wall).alias("t"))
    skipped = int(days["t"].null_count())
    if skipped:
        log.warning("origin_anchor %r: %d day(s) without an origin (the clocks skip that time in %s)", anchor,
                    skipped, codec.time_zone)  # fmt: skip
    days = days.drop_nulls("t")
    owner, origin = days["s"].to_numpy().astype(np.int64), days["t"].to_numpy().astype(np.float64)
    keep = (origin >= start[owner]) & (origin <= stop[owner])
    return owner[keep], origin[keep], skipped
