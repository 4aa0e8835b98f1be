"""Per-series checks of a chunk's raw rows: which series cannot be forecast, and why.

A series is skipped (never the whole job) for time stamps that are empty, do not parse, repeat, or go backwards in
the input's row order; text or infinite values; rows without a variable name (long layout); nothing observed;
no target ever observed (its forecasts would rest on nothing the series said about what is forecast; a variable
that a series never observed while it observed a target is a missing value like any other, as in training, where
windows routinely lack some channels); no per-series scaling statistics when the model was scaled per series.
Rows of variables the model does not read (long layout) are left out and counted, as columns it does not read are
ignored, and as in training. ``cfc-forecast predict``, ``forecast_rows`` and the batch job all apply these rules
(and ``prepare``'s).
"""

from __future__ import annotations

import logging

import polars as pl

from cfc_forecast.errors import UserError
from cfc_forecast.forecast.trained import JobError, Trained
from datamodules.io import TIME
from datamodules.stamps import in_zone, infer_time_format, parse_stamps
from datamodules.timing import TimeCodec

ID = "__id"
log = logging.getLogger(__name__)


def parse_time(frame: pl.DataFrame, trained: Trained) -> tuple[pl.DataFrame, TimeCodec]:
    """The time column as date-times (unparseable stamps become empty) or numbers, and its codec.

    Text stamps are read with the format inferred in training (``Trained.time_format``); when the training data's
    stamps were not text, the one format of this input is inferred as in training; checkpoints older than the
    stored format let polars infer it, as they did. Date-times are read in the training data's time zone
    (``stamps.in_zone``).

    Raises:
        JobError: text stamps that no one format reads, or that several read differently.
    """
    col = frame[trained.time_column]
    if not trained.time_is_datetime:
        return frame.with_columns(col.cast(pl.Float64)), TimeCodec(trained.time_unit, False)
    fmt = trained.time_format
    if col.dtype == pl.String and (fmt is not None or trained.time_format_saved):
        try:
            fmt = fmt or infer_time_format(col, trained.time_column, "input")
        except UserError as err:
            raise JobError(str(err)) from None
        text, col = col, parse_stamps(col, fmt)
        naive_fmt = fmt.removesuffix("%#z").removesuffix("%z")
        missing = col.is_null() & text.is_not_null()
        if naive_fmt != fmt and missing.any():  # trained on stamps with UTC offsets, given stamps without: their
            # wall-clock times in the training data's zone (UTC when it had none), as for any naive input
            naive = parse_stamps(text, naive_fmt)
            try:
                local = in_zone(naive, trained.time_zone or "UTC", f"input column {trained.time_column!r}")
            except UserError as err:
                raise JobError(str(err)) from None
            col = col.fill_null(local.dt.convert_time_zone(col.dtype.time_zone or "UTC"))
        if text.is_not_null().any() and col.null_count() == len(col):
            # not one stamp is written as in training (another separator, no seconds, ...): this input's own one
            # format, refused when it could be read more than one way, and logged
            try:
                own = infer_time_format(text, trained.time_column, "input")
            except UserError as err:
                raise JobError(f"{err} (training read {fmt!r})") from None
            log.warning("input column %r: no time stamp has the training format %r; read with %r", trained.time_column,
                        fmt, own)  # fmt: skip
            fmt, col = own, parse_stamps(text, own)
    elif col.dtype == pl.String:
        try:
            col = col.str.to_datetime(strict=False, time_unit="us")
        except pl.exceptions.PolarsError:  # no format fits the first values: every stamp counts as unparseable
            col = pl.Series(col.name, [None] * len(col), pl.Datetime("us"))
    elif col.dtype == pl.Date:
        col = col.cast(pl.Datetime("us"))
    try:  # in the training data's zone: a CSV's offsets (read as UTC) converted, naive stamps read in it
        col = in_zone(col, trained.time_zone, f"input column {trained.time_column!r}")
    except UserError as err:
        raise JobError(str(err)) from None
    return frame.with_columns(col), TimeCodec(trained.time_unit, True, col.dtype.time_zone, fmt)


def flag_values(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Columns cast to Float64 (NaN -> missing), with per-row flags ``text`` and ``inf`` (infinite values)."""
    bad_text, bad_inf = [], []
    casts = []
    for c in columns:
        raw = pl.col(c)
        if frame.schema[c] == pl.String:  # an empty CSV cell, quoted or not, is a missing value
            raw = raw.str.strip_chars().replace("", None)
        cast = raw.cast(pl.Float64, strict=False)
        bad_text.append(cast.is_null() & raw.is_not_null())
        bad_inf.append(cast.is_infinite().fill_null(False))
        casts.append(cast.fill_nan(None).alias(c))
    flags = [pl.any_horizontal(bad_text).alias("text"), pl.any_horizontal(bad_inf).alias("inf")]
    return frame.with_columns(flags).with_columns(casts)


def series_reasons(frame: pl.DataFrame, trained: Trained, codec: TimeCodec) -> pl.DataFrame:
    """(series, reason) for every series of ``frame`` (reason null when it may be forecast)."""
    t, var, val = pl.col(TIME), pl.col(trained.variable_column), pl.col(trained.value_column)
    long = trained.layout == "long"
    observed = [
        (var.eq(v) & val.is_not_null()).any() if long else pl.col(v).is_not_null().any() for v in trained.variables
    ]
    # rows in any order, as in training (each series is sorted by time before windowing; a series split over
    # several files is read whole): sorted, a wide row repeats a time stamp iff its time equals the previous row's;
    # a long row repeats a (time, variable) pair
    repeated = pl.struct(TIME, trained.variable_column).is_duplicated().any() if long else (t.sort().diff() == 0).any()
    duplicated = repeated if trained.duplicates == "error" else pl.lit(False)
    by_layout = [var.is_null().sum().alias("no_name")] if long else []
    # a static covariate is one value per series: a series giving two is skipped (training refuses the whole data)
    static = [pl.col(c).drop_nulls().n_unique().alias(f"static/{c}") for c in trained.static + trained.cat_static]
    per = (
        frame.with_columns(codec.encode(pl.col(trained.time_column)).alias(TIME))
        .group_by(ID)
        .agg(
            pl.col(TIME).is_null().sum().alias("no_time"),
            pl.col("text").any(),
            pl.col("inf").any(),
            duplicated.alias("dup"),
            *by_layout,
            *static,
            *[o.alias(f"has/{v}") for o, v in zip(observed, trained.variables, strict=True)],
        )
    )
    has = [pl.col(f"has/{v}") for v in trained.variables]
    has_target = [pl.col(f"has/{v}") for v in trained.targets]
    checks = [
        (pl.col("no_time") > 0, pl.format("{} empty or unparseable time stamps", pl.col("no_time"))),
        (pl.col("dup"), pl.lit("duplicate time stamps")),
        (pl.col("text"), pl.lit("non-numeric values")),
        (pl.col("inf"), pl.lit("infinite values")),
    ]
    if long:
        checks.append((pl.col("no_name") > 0, pl.lit("rows with an empty variable name")))
    for c in trained.static + trained.cat_static:
        checks.append((pl.col(f"static/{c}") > 1, pl.lit(f"static column {c!r} changes within the series")))
    checks.append((~pl.any_horizontal(has), pl.lit("nothing observed")))
    never = pl.any_horizontal(has) & ~pl.any_horizontal(has_target)
    checks.append((never, pl.lit(f"no target observed [{', '.join(trained.targets)}]")))
    if trained.scaler_ids is not None:
        unseen = ~pl.col(ID).is_in(pl.Series(trained.scaler_ids))
        checks.append((unseen, pl.lit("no per-series scaling statistics (series not in the training data)")))
    reason = pl.concat_str([pl.when(c).then(r) for c, r in checks], separator="; ", ignore_nulls=True)
    return per.select(pl.col(ID).alias("series"), pl.when(reason != "").then(reason).alias("reason"))
