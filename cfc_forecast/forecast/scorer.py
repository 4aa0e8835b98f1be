"""``Scorer``: a model loaded once, called directly on frames of series rows; what every engine's worker holds.

A Ray Data actor (``cfc_forecast.forecast.engine``), a Dask or Spark partition function and the MLflow pyfunc model
(``cfc_forecast.export``) keep one ``Scorer`` per worker process and hand it frames that hold every row of some
series. Each call goes through the steps of :func:`cfc_forecast.forecast.rows.forecast_report` (the checkpoint's data
contract, ``check_schema``, ``options_for``, ``prepare``, ``sorted_frame``): the same checks, the same preprocessing
and the same skipped-series report, without a Lightning ``Trainer`` per call (the model's ``predict_step`` is called
on the same batches ``trainer.predict`` would make).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch.utils.data import DataLoader

from cfc_forecast.forecast.options import options_for
from cfc_forecast.forecast.prepare import Chunk, Options, prepare
from cfc_forecast.forecast.rows import Forecasts, empty_frame, sorted_frame, spacing_note
from cfc_forecast.forecast.trained import JobError, check_schema, model_from, read_checkpoint

__all__ = ["Scorer", "as_polars", "score_frame"]

_SCORERS: dict[tuple[str, str], Scorer] = {}


def as_polars(frame: Any) -> pl.DataFrame:
    """A polars frame from a polars, pandas or Arrow frame (zero-copy where the types allow).

    Raises:
        JobError: anything else.
    """
    if isinstance(frame, pl.DataFrame):
        return frame
    if type(frame).__module__.startswith("pyarrow"):
        return pl.from_arrow(frame)
    if type(frame).__module__.startswith("pandas"):
        return pl.from_pandas(frame, nan_to_null=True)  # a missing value is null, as in the training data
    raise JobError(f"give the rows as a polars, pandas or Arrow frame, got {type(frame).__name__}")


class Scorer:
    """A trained model and its data contract, loaded once (``weights_only=True``), for many frames of rows.

    Args:
        ckpt_path: a checkpoint written by ``cfc-forecast fit``.
        device: where the model runs ("cpu", "cuda", "cuda:1").
        batch_size: windows per forward pass.

    Raises:
        JobError: an unusable checkpoint (the message names it and says what to do).
    """

    def __init__(self, ckpt_path: str | Path, device: str = "cpu", batch_size: int = 256) -> None:
        if batch_size < 1:
            raise JobError(f"batch_size must be >= 1, got {batch_size}")
        ckpt, self.trained = read_checkpoint(ckpt_path)
        self.device, self.batch_size = torch.device(device), batch_size
        self.model = model_from(ckpt).to(self.device)

    @property
    def quantiles(self) -> list[float] | None:
        return self.trained.quantiles

    def options(
        self,
        frame: pl.DataFrame,
        origins: list[str | float] | None = None,
        query_times: list[str | float] | None = None,
        min_rows: int | None = None,
    ) -> Options:
        """The forecasting options in the model's terms for ``frame``'s time type (``options_for``).

        Raises:
            JobError: an unparseable origin or duration, or options the model cannot honour.
        """
        return options_for(self.trained, frame.schema[self.trained.time_column], origins, query_times, min_rows, "")

    def report(
        self,
        frame: Any,
        origins: list[str | float] | None = None,
        query_times: list[str | float] | None = None,
        min_rows: int | None = None,
        source: str = "frame",
    ) -> Forecasts:
        """Forecast every series of ``frame`` (every row of each, any order) from its own rows.

        Args:
            frame: polars, pandas or Arrow rows in the layout the model was trained on (other columns ignored).
            origins, query_times, min_rows: as for :func:`cfc_forecast.forecast.rows.forecast_rows`.
            source: names the rows in messages.

        Returns:
            The forecasts (long layout, sorted by series, origin, time, variable) and the skipped series.

        Raises:
            JobError: a column missing or of the wrong kind, no row with a series id, bad options.
        """
        frame = as_polars(frame)
        notes = check_schema(frame.schema, self.trained, source)
        frame = frame.select(self.trained.columns)
        options = self.options(frame, origins, query_times, min_rows)
        no_id = pl.DataFrame(schema={"series": pl.String, "reason": pl.String})
        if self.trained.id_column is not None and (n := frame[self.trained.id_column].null_count()):
            frame = frame.filter(pl.col(self.trained.id_column).is_not_null())
            no_id = pl.DataFrame({"series": [None], "reason": [f"{n} rows with an empty series id"]}, no_id.schema)
        if frame.height == 0:
            raise JobError(f"{source}: no rows with a series id to forecast")
        chunk = prepare(frame, self.trained, options, source)
        forecasts = self.forecast_chunk(chunk)
        return Forecasts(
            frame=forecasts,
            skipped=pl.concat([chunk.skipped.with_columns(pl.col("series").cast(pl.String)), no_id]),
            n_series=chunk.n_series,
            n_forecast=chunk.n_forecast,
            notes=notes + spacing_note(chunk.spacing, self.trained),
            row_counts=dict(chunk.row_counts),
        )

    @torch.no_grad()
    def forecast_chunk(self, chunk: Chunk) -> pl.DataFrame:
        """The long forecast frame of a prepared chunk: ``predict_step`` on its windows, batch after batch."""
        if chunk.dataset is None:
            return empty_frame(chunk, self.quantiles)
        ds = chunk.dataset
        loader = DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=ds.collate)
        outputs = []
        for i, batch in enumerate(loader):
            out = self.model.predict_step(batch.to(self.device), i)
            outputs.append({k: v.cpu() for k, v in out.items()})
        return sorted_frame(outputs, chunk, self.quantiles)

    def warm_up(self, frame: Any) -> None:
        """Forecast ``frame`` once and drop the result: builds or loads the native loop and touches every layer, so
        the first real call costs what any other does."""
        self.report(frame)


def score_frame(rows: Any, ckpt_path: str, device: str = "cpu", **options: Any) -> Any:
    """A partition function for Dask's ``map_partitions`` or Spark's ``applyInPandas``: pandas rows (every row of
    each of their series) in, the pandas long forecast frame out; the model is loaded once per worker process.

    Args:
        rows: the partition's rows in the training layout (no rows: the forecast columns, no rows).
        ckpt_path: a checkpoint every worker can read. device: where the model runs.
        options: ``origins``, ``query_times``, ``min_rows`` (as for ``forecast_rows``).

    Raises:
        JobError: a column missing or of the wrong kind, bad options.
    """
    key = (str(ckpt_path), device)
    scorer = _SCORERS.get(key) or _SCORERS.setdefault(key, Scorer(ckpt_path, device))
    frame = as_polars(rows)
    if frame.height == 0:
        check_schema(frame.schema, scorer.trained, "partition")
        chunk = prepare(frame.select(scorer.trained.columns), scorer.trained, scorer.options(frame), "partition")
        return empty_frame(chunk, scorer.quantiles).to_pandas()
    return scorer.report(frame, source="partition", **options).frame.to_pandas()
