"""Reading CSV / Parquet and turning wide or long layouts into one canonical wide table.

The canonical table has one row per (series, time stamp): ``__series`` (UInt32 index into the sorted series ids),
``__t`` (float64 time in the declared unit), then one Float64 column per variable with nulls where missing. Every
problem in the input is either a ``UserError`` (a ``ValueError``) that names the source, the column and what to do,
or a counted, logged skip (``Table.counts``) — never a silent drop.
"""

from __future__ import annotations

import difflib
import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from cfc_forecast.errors import UserError
from datamodules.categories import as_labels
from datamodules.stamps import harmonise_zones, in_zone, to_datetime_or_number
from datamodules.timing import TimeCodec, codec_for

log = logging.getLogger(__name__)

Layout = Literal["wide", "long"]
Duplicates = Literal["error", "mean", "first", "last"]
SERIES, TIME = "__series", "__t"


@dataclass
class Table:
    """The canonical wide table and what is needed to map it back to the source.

    Attributes:
        frame: columns ``__series`` (UInt32), ``__t`` (Float64), then the variables (Float64), sorted by both.
        series_ids: the original series ids, sorted; ``frame["__series"]`` indexes it.
        codec: maps ``__t`` back to the source's time stamps.
        counts: skipped items by reason (every skip is counted here and logged).
    """

    frame: pl.DataFrame
    series_ids: pl.Series
    codec: TimeCodec
    counts: dict[str, int] = field(default_factory=dict)


def expand_paths(path: str | list[str]) -> list[Path]:
    """Files named by a path, a folder (its *.csv and *.parquet files) or a glob, sorted."""
    found: list[Path] = []
    for item in [path] if isinstance(path, (str, Path)) else path:
        p = Path(item).expanduser()
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix in (".csv", ".parquet"))
        elif p.is_file():
            found.append(p)
        else:
            found += sorted(Path(g) for g in glob.glob(str(p), recursive=True))
    if not found:
        raise UserError(f"path {path!r} matches no CSV or Parquet file; give a file, a folder or a glob")
    return found


def read_files(
    path: str | list[str],
    time_column: str | None = None,
    columns: list[str] | None = None,
    text_columns: list[str] | None = None,
) -> pl.DataFrame:
    """Read and concatenate CSV / Parquet files (by extension) into one frame; the ``time_column`` of files in
    different time zones is converted to the first file's zone (``stamps.harmonise_zones``).

    ``columns``: read only these (polars' projection: the other columns are not parsed); one a file lacks is left
    out of its frame, for the caller to report by name. ``text_columns``: CSV columns read as text whatever they
    look like (categorical labels: ``1`` and ``1.0`` stay two labels, as written, instead of the whole column
    turning into floats because of one ``1.0``).

    Raises:
        UserError: no file, an unknown file type, or zone-aware and naive time stamps mixed.
    """
    frames, paths = [], expand_paths(path)
    for p in paths:
        if p.suffix == ".parquet":
            present = None if columns is None else [c for c in columns if c in pl.read_parquet_schema(p)]
            frames.append(pl.read_parquet(p, columns=present))
        elif p.suffix in (".csv", ".txt", ".gz"):
            frames.append(_read_csv(p, columns, text_columns))
        else:
            raise UserError(f"{p}: unknown file type {p.suffix!r}; use .csv or .parquet")
    if len(frames) == 1:
        return frames[0]
    if time_column is not None:
        zone = harmonise_zones([f.schema for f in frames], time_column, [p.name for p in paths])
        if zone is not None:
            frames = [f.with_columns(pl.col(time_column).dt.convert_time_zone(zone)) for f in frames]
    return pl.concat(frames, how="vertical_relaxed")


def _read_csv(path: Path, columns: list[str] | None = None, text_columns: list[str] | None = None) -> pl.DataFrame:
    """One comma-separated file (only ``columns`` of it, where given; ``text_columns`` as text); an empty file or
    another separator is an error naming the file and the fix."""
    try:
        header = None if columns is None and not text_columns else pl.read_csv(path, n_rows=0).columns
        if header is not None and (problem := csv_problem(path, header)) is not None:
            raise UserError(problem)
        present = None if columns is None else [c for c in columns if c in (header or [])]
        text = {c: pl.String for c in text_columns or [] if c in (header or [])}
        frame = pl.read_csv(path, infer_schema_length=10_000, columns=present, schema_overrides=text or None)
    except pl.exceptions.NoDataError:
        raise UserError(csv_problem(path, None)) from None
    if columns is None and (problem := csv_problem(path, frame.columns)) is not None:
        raise UserError(problem)
    return frame


def csv_problem(path: Path, columns: list[str] | None) -> str | None:
    """What is wrong with a CSV file whose header reads as ``columns`` (None: no header, the file is empty), with
    the fix; None when nothing is. Every reader of CSV files (fit, ``predict``, the batch job) asks this."""
    if columns is None:
        return f"{path}: the file is empty (no header, no rows); give a CSV with a header row"
    if len(columns) == 1:
        found = [sep for sep in (";", "\t", "|") if sep in columns[0]]
        if found:
            return (
                f"{path}: one column {columns[0]!r}: the file is separated by {found[0]!r}, not by commas; "
                "save it comma-separated (or as Parquet)"
            )
    return None


def _looks_like_time(frame: pl.DataFrame) -> list[str]:
    """Columns holding date-times, or text whose first values parse as date-times."""
    found = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime) or dtype == pl.Date:
            found.append(name)
        elif dtype == pl.String:
            head = frame[name].drop_nulls().head(20)
            try:
                if len(head) and head.str.to_datetime(strict=False, time_unit="us").null_count() == 0:
                    found.append(name)
            except pl.exceptions.PolarsError:  # no date-time format fits: not a time column
                pass
    return found


def require_option_column(frame: pl.DataFrame, column: str, option: str, source: str) -> None:
    """Raise a ``UserError`` when the column an option names is missing: the option, close names, the columns.

    For the time column, the columns holding date-times come first among the suggestions (``timestamp`` -> ``ts``).
    """
    if column in frame.columns:
        return
    close = difflib.get_close_matches(column, frame.columns, n=2)
    if option == "time_column":
        close = list(dict.fromkeys([*_looks_like_time(frame), *close]))[:2]
    hint = f"did you mean --data.{option} {close[0]}? " if close else ""
    raise UserError(f"{source}: {option} {column!r} (--data.{option}) is not a column; {hint}columns: {frame.columns}")


def require_columns(frame: pl.DataFrame, columns: list[str], source: str, role: str) -> None:
    """Raise a ``UserError`` naming each missing column, its closest matches and the available ones."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hints = {c: difflib.get_close_matches(c, frame.columns, n=2) for c in missing}
        hint = "; ".join(f"{c!r}: did you mean {h}?" for c, h in hints.items() if h)
        raise UserError(f"{source}: {role} {missing} not found. {hint} Available columns: {frame.columns}")


def numeric_columns(frame: pl.DataFrame, columns: list[str], source: str) -> pl.DataFrame:
    """Cast columns to Float64 (NaN and empty text become missing); raise on text that is not a number and on
    infinities."""
    exprs = []
    for c in columns:
        col = frame[c]
        if col.dtype == pl.String:  # a quoted empty cell ("" or " ", as some exports write them) is an empty cell
            col = pl.Series(c, col.str.strip_chars()).replace("", None)
        cast = col.cast(pl.Float64, strict=False)
        bad = col.filter(cast.is_null() & col.is_not_null())
        if len(bad):
            raise UserError(f"{source}: column {c!r} has {len(bad)} non-numeric values, e.g. {bad.head(3).to_list()}; "
                             + _text_column_hint(col, bad))  # fmt: skip
        n_inf = int(cast.is_infinite().sum())
        if n_inf:
            raise UserError(f"{source}: column {c!r} has {n_inf} infinite values; replace them by empty cells")
        exprs.append(cast.fill_nan(None).alias(c))
    return frame.with_columns(exprs)


def _text_column_hint(col: pl.Series, bad: pl.Series) -> str:
    """The likely fix for text in a value column: a series label (no number at all) or stray text in numbers."""
    if len(bad) == col.drop_nulls().len():  # text throughout: a label, not a measurement
        return (
            f"if it names the series, give --data.id_column {col.name}; if it holds categories (labels such as "
            f"{bad[0]!r}), declare it --data.categorical '[{col.name}]' with a covariate role; otherwise leave it out "
            "of the variables (--data.inputs, --data.targets)"
        )
    return "leave missing values empty"


def _count(counts: dict[str, int], reason: str, n: int, source: str) -> None:
    if n:
        counts[reason] = counts.get(reason, 0) + n
        log.warning("%s: skipped %d %s", source, n, reason)


def _aggregate(keys: list[str], variables: list[str], how: Duplicates) -> list[pl.Expr]:
    if how == "mean":
        return [pl.col(v).mean() for v in variables]
    pick = pl.Expr.first if how == "first" else pl.Expr.last
    return [pick(pl.col(v).drop_nulls()) for v in variables]


def _raise_duplicates(frame: pl.DataFrame, keys: list[str], source: str) -> None:
    dup = frame.group_by(keys).len().filter(pl.col("len") > 1)
    if dup.height:
        example = dup.sort(keys).head(3).drop("len").rows()
        raise UserError(
            f"{source}: {dup.height} duplicate time stamps within a series (by {keys}), e.g. {example}; "
            "fix the data or pass duplicates='mean' / 'first' / 'last' to aggregate them"
        )


def long_to_wide(
    frame: pl.DataFrame,
    keys: list[str],
    variable: str,
    value: str,
    variables: list[str],
    duplicates: Duplicates,
    source: str,
    counts: dict[str, int],
    every_variable: bool = True,
) -> pl.DataFrame:
    """Spread a long frame (keys, variable, value) into one column per requested variable (``every_variable``:
    each must occur at least once, else a ``UserError``; rows to forecast may lack some).

    One sort by (keys, variable), then numpy: cells are runs of equal (keys, variable), aggregated with
    ``bincount`` (mean) or their first / last row, and scattered into a (rows, variables) array.
    """
    require_columns(frame, [variable, value], source, "long-layout columns")
    _count(counts, "rows with an empty variable name", int(frame[variable].is_null().sum()), source)
    frame = frame.filter(pl.col(variable).is_not_null()).with_columns(pl.col(variable).cast(pl.String))
    present = set(frame[variable].unique().to_list())
    absent = [v for v in variables if v not in present]
    if absent and every_variable:
        hints = {v: difflib.get_close_matches(v, sorted(present), n=2) for v in absent}
        raise UserError(f"{source}: variables {absent} never occur in column {variable!r} (close: {hints})")
    _count(counts, "rows of variables not used", int((~frame[variable].is_in(variables)).sum()), source)
    frame = numeric_columns(frame.filter(pl.col(variable).is_in(variables)), [value], source)
    _count(counts, "rows with an empty value", int(frame[value].is_null().sum()), source)
    code = pl.col(variable).cast(pl.Enum(variables)).to_physical().cast(pl.Int64).alias("__v")
    # a stable sort: duplicates="first" / "last" mean the first / last row of a cell in the input's order
    frame = frame.filter(pl.col(value).is_not_null()).select(*keys, code, value).sort(*keys, "__v", maintain_order=True)
    changed = pl.any_horizontal(pl.col(k).ne_missing(pl.col(k).shift()) for k in keys)
    frame = frame.with_columns(changed.fill_null(True).alias("__new"))
    new_row = frame["__new"].to_numpy()
    var, val = frame["__v"].to_numpy(), frame[value].to_numpy()
    new_cell = new_row | np.concatenate([[True], var[1:] != var[:-1]])
    if duplicates == "error" and not new_cell.all():
        example = frame.filter(pl.Series(~new_cell)).head(3).select(*keys, "__v").rows()
        raise UserError(
            f"{source}: {int((~new_cell).sum())} duplicate (series, time, variable) rows, e.g. {example} "
            f"(variable as its index in {variables}); pass duplicates='mean' / 'first' / 'last' to aggregate them"
        )
    row, cell = np.cumsum(new_row) - 1, np.cumsum(new_cell) - 1
    first = np.flatnonzero(new_cell)
    if duplicates == "mean":
        cell_value = np.bincount(cell, weights=val) / np.bincount(cell)
    elif duplicates == "last":
        cell_value = val[np.append(first[1:] - 1, len(val) - 1)]
    else:
        cell_value = val[first]
    wide = np.full((int(row[-1]) + 1, len(variables)), np.nan, order="F")  # contiguous columns for polars
    wide[row[first], var[first]] = cell_value
    columns = pl.from_numpy(wide, schema=variables).with_columns(pl.all().fill_nan(None))
    return pl.concat([frame.filter(pl.Series(new_row)).select(keys), columns], how="horizontal")


def _empty_cells(frame: pl.DataFrame, column: str, time_column: str, source: str) -> str:
    n = frame[column].null_count()
    if column == time_column and frame[column].dtype.is_numeric():
        # often a column of measurements named as the time column: then the fix is another column, not filling it
        return (
            f"{source}: time column {column!r} holds numbers with {n} empty cells of {frame.height}; if it is not "
            f"the time column, name the right one with --data.time_column (columns: {frame.columns}), else give "
            "every row a time"
        )
    what = "time column" if column == time_column else "series id column"
    return f"{source}: {what} {column!r} has {n} empty cells; fill them or drop those rows"


def canonical_table(
    frame: pl.DataFrame,
    *,
    source: str,
    layout: Layout,
    id_column: str | None,
    time_column: str,
    variables: list[str],
    time_unit: str,
    duplicates: Duplicates = "error",
    variable_column: str = "variable",
    value_column: str = "value",
    every_variable: bool = True,
    time_format: str | None = None,
    time_zone: str | None = None,
    categorical: list[str] | None = None,
) -> Table:
    """Validate a wide or long frame and return the canonical wide ``Table`` of ``variables``.

    ``categorical``: variables read as text labels (``categories.as_labels``: String columns, empty cells null)
    instead of numbers; wide layout only (a long layout's one value column holds numbers).

    ``every_variable=False`` (rows to forecast, not to fit on) accepts a variable that is never observed.
    ``time_format``: the format of text time stamps (default: inferred, ``stamps.infer_time_format``).
    ``time_zone``: the IANA zone the date-times are read in (``stamps.in_zone``; default: as they are).

    Raises:
        UserError: empty input, missing columns, unparseable or null time stamps, null series ids,
            non-numeric or infinite values, duplicate time stamps (unless aggregated), or a variable with no
            observation at all (unless ``every_variable`` is False).
    """
    if frame.height == 0:
        raise UserError(f"{source}: the input has no rows")
    keys = [c for c in (id_column, time_column) if c is not None]
    for column, option in ((id_column, "id_column"), (time_column, "time_column")):
        if column is not None:
            require_option_column(frame, column, option, source)
    for c in keys:
        if frame[c].null_count():
            raise UserError(_empty_cells(frame, c, time_column, source))
    frame, time_format = to_datetime_or_number(frame, time_column, source, time_format)
    what = f"{source}: column {time_column!r}"
    frame = frame.with_columns(in_zone(frame[time_column], time_zone, what))
    counts: dict[str, int] = {}
    labels = [v for v in variables if v in (categorical or [])]
    if labels and duplicates == "mean":
        raise UserError(
            f"{source}: duplicates='mean' cannot average the categorical columns {labels}; give duplicates 'first' "
            "or 'last' (or 'error')"
        )
    if labels and layout == "long":
        raise UserError(
            f"{source}: categorical columns {labels} need the wide layout (a long layout's value column holds "
            "numbers); give them as columns of their own"
        )
    if layout == "long":
        frame = long_to_wide(
            frame, keys, variable_column, value_column, variables, duplicates, source, counts, every_variable
        )
    else:
        require_columns(frame, variables, source, "variables")
        numbers = [v for v in variables if v not in labels]
        frame = numeric_columns(frame.select(*keys, *variables), numbers, source)
        frame = frame.with_columns(as_labels(frame[c]) for c in labels)
        if duplicates == "error":
            _raise_duplicates(frame, keys, source)
        elif frame.select(keys).is_duplicated().any():
            frame = frame.group_by(keys, maintain_order=True).agg(_aggregate(keys, variables, duplicates))
    empty = pl.all_horizontal(pl.col(v).is_null() for v in variables)
    _count(counts, "rows with no value observed", int(frame.select(empty.sum()).item()), source)
    frame = frame.filter(~empty)
    never = [v for v in variables if frame[v].null_count() == frame.height] if every_variable else []
    if never or frame.height == 0:
        raise UserError(f"{source}: variables {never or variables} have no observation at all; drop them")
    codec = codec_for(frame, time_column, time_unit, time_format)
    ids = frame[id_column] if id_column is not None else pl.Series("series", [0] * frame.height)
    series_ids = ids.unique().sort()
    frame = frame.select(
        (ids.rank("dense").cast(pl.UInt32) - 1).alias(SERIES) if id_column else pl.lit(0, pl.UInt32).alias(SERIES),
        codec.encode(pl.col(time_column)).alias(TIME),
        *variables,
    ).sort(SERIES, TIME)
    return Table(frame=frame, series_ids=series_ids, codec=codec, counts=counts)
