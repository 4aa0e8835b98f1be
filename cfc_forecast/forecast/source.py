"""Reading a job's input lazily and cutting it into chunks of whole series.

A first streaming pass collects the distinct series ids with their row counts and first rows (the only thing held
for the whole input: a few values per series) and numbers them in sorted order into chunks of ``chunk_size``
series. When the input is Parquet and already sorted by series id (each series' rows together: the usual layout
of a nightly drop), chunk k is one row range, read by a sliced scan. Otherwise a second streaming pass routes every
row to its chunk's scratch file (polars' partitioned sink), keeping the input's row order within each series.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cfc_forecast.errors import UserError
from cfc_forecast.forecast.trained import JobError, Trained
from datamodules.io import csv_problem, expand_paths
from datamodules.stamps import harmonise_zones

CHUNK = "__chunk"
ROW = "__row"


def input_files(spec: str | list[str], option: str = "--input") -> list[Path]:
    """The CSV / Parquet files named by a file, a folder, a glob or a list of these; ``option`` names them in
    messages (the caller's own option: ``--input``, ``--data.path``, ``data``).

    Raises:
        JobError: nothing matches, or a file is neither CSV nor Parquet.
    """
    try:
        files = expand_paths(spec)
    except ValueError as err:
        raise JobError(f"{option}: {err}") from None
    bad = [str(p) for p in files if p.suffix not in (".csv", ".parquet")]
    if bad:
        raise JobError(f"{option}: {bad} are neither .csv nor .parquet files; convert them or leave them out")
    return files


def scan(files: list[Path], trained: Trained, option: str = "--input") -> tuple[pl.LazyFrame, list[str], bool]:
    """A lazy frame over every file, with only the columns the model reads (and the input row number), notes on
    ignored columns, and whether a slice of it reads only the rows it needs (a single Parquet scan). ``option``
    names the files in messages, as in :func:`input_files`.

    Raises:
        JobError: a file lacks a column or has a time column of the wrong kind (the file is named).
    """
    frames, notes, schemas, per_file = [], [], set(), []
    for path in files:
        # categorical labels as text, as written: one `1.0` among `1`s must not turn the whole column into floats
        text = {c: pl.String for c in trained.categorical} or None
        lf = (pl.scan_parquet(path) if path.suffix == ".parquet"
              else pl.scan_csv(path, infer_schema_length=10_000, schema_overrides=text))  # fmt: skip
        try:
            schema = lf.collect_schema()
        except pl.exceptions.NoDataError:
            raise JobError(csv_problem(path, None)) from None
        except pl.exceptions.PolarsError as err:
            raise JobError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
        if path.suffix == ".csv" and (problem := csv_problem(path, list(schema))) is not None:
            raise JobError(problem)
        from cfc_forecast.forecast.trained import check_schema

        notes += [f"{path.name}: {n}" for n in check_schema(schema, trained, str(path))]
        frames.append(lf.select(trained.columns))
        schemas.add(tuple((c, str(schema[c])) for c in trained.columns))
        per_file.append(schema)
    try:  # files in several time zones are read in one (the first file's); aware mixed with naive is refused
        zone = harmonise_zones(per_file, trained.time_column, [p.name for p in files])
    except UserError as err:
        raise JobError(f"{option}: {err}") from None
    if zone is not None:
        frames = [f.with_columns(pl.col(trained.time_column).dt.convert_time_zone(zone)) for f in frames]
        schemas = {"several zones"} | schemas  # not one plain scan: each file is converted on its own
    sliceable = all(p.suffix == ".parquet" for p in files) and len(schemas) == 1
    if sliceable:  # one scan over every file seeks to a row range through the files' metadata (row index in the
        # scan itself: a projection before it would stop the slice from reaching the reader)
        return pl.scan_parquet(files, row_index_name=ROW).select(ROW, *trained.columns), notes, True
    lf = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]  # CSV: parsed from the top
    return lf.with_row_index(ROW), notes, False


@dataclass
class Plan:
    """The series of the input, in sorted order, cut into chunks.

    Attributes:
        ids: (n_series,) the distinct series ids, sorted (one value when the model has no id column).
        chunk_size: series per chunk.
        rows_without_id: input rows whose series id is empty (they belong to no series and are reported).
        ranges: (n_chunks + 1,) first input row of each chunk (and the end) when every series' rows lie together
            in sorted order, else None (the rows must be spilled into chunks).
    """

    ids: pl.Series
    chunk_size: int
    rows_without_id: int
    ranges: np.ndarray | None = None

    @property
    def n_chunks(self) -> int:
        return -(-len(self.ids) // self.chunk_size)


def plan(lf: pl.LazyFrame, trained: Trained, chunk_size: int) -> Plan:
    """First pass: the distinct series ids, sorted, how many rows have none, and whether chunks are row ranges.

    Raises:
        JobError: a chunk size below 1, or no row with a series id.
    """
    if chunk_size < 1:
        raise JobError(f"--chunk_size must be >= 1, got {chunk_size}")
    if trained.id_column is None:
        n = lf.select(pl.len()).collect(engine="streaming").item()
        ids, empty = pl.Series("series", [0] if n else []), 0
        ranges = np.asarray([0, n])
    else:
        col = pl.col(trained.id_column)
        per = lf.group_by(trained.id_column).agg(pl.len(), pl.col(ROW).min().alias("first"))
        per = per.collect(engine="streaming").sort(trained.id_column, nulls_last=True)
        nulls = per.filter(col.is_null())
        empty = int(nulls["len"].sum()) if nulls.height else 0
        per = per.filter(col.is_not_null())
        ids, first, count = per[trained.id_column], per["first"].to_numpy(), per["len"].to_numpy()
        # sorted and together: series i + 1 starts right where series i ends, and no row lacks an id
        together = empty == 0 and len(ids) > 0 and first[0] == 0 and bool((first[1:] == first[:-1] + count[:-1]).all())
        ranges = np.append(first[::chunk_size], first[-1] + count[-1]) if together else None
    if len(ids) == 0:
        raise JobError("--input: no rows with a series id to forecast")
    return Plan(ids=ids, chunk_size=chunk_size, rows_without_id=empty, ranges=ranges)


class ChunkReader:
    """Reads chunk k: a slice of the input when ``the_plan.ranges`` is known, else its spilled file.

    Args:
        lf: the input scan and sliceable: whether slicing it is cheap (both from :func:`scan`).
        trained: the model's data contract. the_plan: the chunks.
        folder: where spilled chunks live (written by :meth:`prepare` when needed).
    """

    def __init__(self, lf: pl.LazyFrame, sliceable: bool, trained: Trained, the_plan: Plan, folder: Path) -> None:
        self.lf, self.trained, self.plan, self.folder = lf, trained, the_plan, folder
        self.sliced = sliceable and the_plan.ranges is not None

    def prepare(self) -> None:
        """Spill the input into chunks unless they can be sliced from it (call on one process only)."""
        if not self.sliced:
            spill(self.lf, self.trained, self.plan, self.folder)

    def read(self, k: int) -> pl.DataFrame:
        """The rows of chunk ``k`` (every row of each of its series), in input order."""
        if self.sliced:
            lo, hi = int(self.plan.ranges[k]), int(self.plan.ranges[k + 1])
            frame = self.lf.slice(lo, hi - lo).collect()
            # the plan found the ids sorted: say so, and polars groups and sorts by them faster
            return frame.with_columns(pl.col(self.trained.id_column).set_sorted()) if self.trained.id_column else frame
        return pl.read_parquet(self.folder / f"{CHUNK}={k}").sort(ROW)


def spill(lf: pl.LazyFrame, trained: Trained, the_plan: Plan, folder: Path) -> None:
    """Second pass: write every row to ``folder/<chunk>`` (input row order kept); atomic as a whole.

    The partitions are written into a temporary folder that is renamed when complete, so a job killed while
    spilling starts the spill again instead of reading half of it.
    """
    if folder.is_dir():
        return
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    chunk_of = pl.int_range(pl.len(), dtype=pl.UInt32) // the_plan.chunk_size
    if trained.id_column is None:
        routed = lf.with_columns(pl.lit(0, pl.UInt32).alias(CHUNK))
    else:
        table = the_plan.ids.to_frame(trained.id_column).with_columns(chunk_of.alias(CHUNK)).lazy()
        routed = lf.join(table, on=trained.id_column, how="inner", maintain_order="left")
    # polars 2 names the key scheme PartitionBy(key=...), polars 1 PartitionByKey(by=...)
    if hasattr(pl, "PartitionBy"):
        target = pl.PartitionBy(tmp, key=CHUNK, include_key=False)
    else:
        target = pl.PartitionByKey(tmp, by=CHUNK, include_key=False)
    # a scratch copy read once: fast compression, no statistics
    routed.sink_parquet(target, mkdir=True, engine="streaming", compression="lz4", statistics=False)
    os.replace(tmp, folder)


def describe_ids(ids: pl.Series) -> list[Any]:
    """Series ids as plain JSON values (text for anything that is not a number or a string)."""
    values = ids.to_list()
    return [v if isinstance(v, (int, float, str)) or v is None else str(v) for v in values]
