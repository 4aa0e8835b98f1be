"""Forecasting options in the model's terms, checked against what the model can honour (every path: ``predict``,
``forecast_rows``, the batch job)."""

from __future__ import annotations

import polars as pl

from cfc_forecast.forecast.prepare import Options
from cfc_forecast.forecast.trained import JobError, Trained


def options_for(
    trained: Trained,
    time_dtype: pl.DataType | None,
    origins: list[str | float] | None = None,
    query_times: list[str | float] | None = None,
    min_rows: int | None = None,
    flag: str = "--",
) -> Options:
    """Forecasting options in the model's terms: origins as float times (time stamps in the data's time zone, or
    numbers), query times as durations in the time unit ("6h", or numbers; "1d" / "2w" are calendar days and
    weeks for zone-aware time stamps).

    Raises:
        JobError: an unparseable origin or duration, or options the model cannot honour (see
            ``check_trained_options``).
    """
    from datamodules.stamps import user_time
    from datamodules.timing import TimeCodec, duration_days, parse_duration

    # the input is read in the training data's zone (``checks.parse_time``); older checkpoints: the input's own
    zone = trained.time_zone or getattr(time_dtype, "time_zone", None)
    codec = TimeCodec(trained.time_unit, trained.time_is_datetime, zone, trained.time_format)
    queries = days = None
    try:
        if query_times:
            # days and weeks are calendar ones in a time zone (the same wall-clock time, 23 or 25 h across DST)
            calendar = codec.time_zone is not None
            given = {parse_duration(q, trained.time_unit, f"{flag}query_times"): q for q in query_times}
            queries = sorted(given)
            days = [duration_days(given[q]) if calendar else 0 for q in queries]
        when = sorted({user_time(o, codec, f"{flag}origins") for o in origins}) if origins is not None else None
    except ValueError as err:
        raise JobError(str(err)) from None
    if min_rows is not None and min_rows < 1:
        raise JobError(f"{flag}min_rows must be >= 1, got {min_rows}")
    options = Options(
        origins=when, query_times=queries, min_rows=min_rows, query_days=days if any(days or []) else None
    )
    check_trained_options(trained, options, flag)
    return options


def check_trained_options(trained: Trained, options: Options, flag: str = "--") -> None:
    """Refuse query times a model cannot honour, before anything is written.

    Raises:
        JobError: query times for a model whose head forecasts fixed steps, query times <= 0, or none for a
            model trained on one window per series without a forecast span.
    """
    spec = trained.spec
    if options.query_times is None and trained.predict_queries is None and spec.mode == "fixed" and not spec.forecast:
        raise JobError(f"the model forecasts one window per series without a forecast span: give {flag}query_times")
    if options.query_times is None:
        return
    if trained.head != "continuous":
        raise JobError(
            f"{flag}query_times needs a model with the continuous-time head; this model's head is {trained.head!r} "
            f"(it forecasts {trained.spec.horizon or 'its trained'} steps ahead)"
        )
    if min(options.query_times) <= 0:
        raise JobError(f"{flag}query_times must be > 0 (times after the origin), got {options.query_times}")
