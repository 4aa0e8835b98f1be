"""``forecast_rows``: the one way from a trained model and raw rows to forecasts.

``cfc-forecast predict``, the Python API (``forecast_rows`` / ``predict_frame``) and each chunk of
``cfc-forecast forecast`` go through the same steps: the data contract comes from the checkpoint (columns by name,
the scaler fitted in training, the time codec, the windowing, the query rule: ``trained``), the rows are checked
against it (``trained.check_schema``) and prepared series by series (``prepare``: a series' forecast depends only
on its own rows, nothing is fitted on the rows being forecast), and the forecasts come back in long layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader

from cfc_forecast.forecast.options import options_for
from cfc_forecast.forecast.prepare import Chunk, Options, prepare
from cfc_forecast.forecast.trained import JobError, Trained, check_schema, contract, live_checkpoint, model_from
from cfc_forecast.runs import is_global_zero
from cfc_forecast.writer import forecast_frame

log = logging.getLogger(__name__)
KEYS = ["series", "origin_time", "time", "variable"]
Source = str | Path | L.LightningModule
Data = pl.DataFrame | str | Path | list[str]


@dataclass
class Forecasts:
    """Forecasts and what could not be forecast.

    Attributes:
        frame: long layout: ``series, origin_time, time, variable, prediction`` (+ ``q<level>`` per quantile),
            in the data's own units and time stamps, sorted by the first four.
        skipped: ``series, reason``: every series (or series and origin) not forecast, and rows without a series.
        n_series: series in the input. n_forecast: series with at least one forecast.
        notes: things worth knowing that did not stop anything (ignored columns, an unusual spacing).
        row_counts: rows left out by reason (rows with nothing observed).
        unseen: per categorical column with labels unseen in training (forecast with the unknown embedding):
            ``{"values": how many values, "examples": the first five labels}`` (+ ``"hint"``: a training label they
            look like), and ``"empty": n`` where training had no empty value in the column (the untrained
            "missing" embedding); each also a line in ``notes``.
    """

    frame: pl.DataFrame
    skipped: pl.DataFrame
    n_series: int = 0
    n_forecast: int = 0
    notes: list[str] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    unseen: dict[str, Any] = field(default_factory=dict)


def unseen_notes(unseen: dict[str, Any]) -> list[str]:
    """The notes on categorical values unseen in training, per column: labels never seen (read as 'unknown', with
    a hint at a likely match), and empty values where training had none (read as the untrained 'missing')."""
    notes = []
    for c, u in unseen.items():
        n = u["values"]
        if n:
            hint = f"; {u['hint']}" if u.get("hint") else ""
            notes.append(f"categorical column {c!r}: {n} {'value' if n == 1 else 'values'} of categories unseen in "
                         f"training, read as 'unknown' (e.g. {u['examples']}){hint}")  # fmt: skip
        if u.get("empty"):
            k = u["empty"]
            notes.append(f"categorical column {c!r}: {k} empty {'value' if k == 1 else 'values'}, a category never "
                         "seen in training, read as 'missing' (untrained)")  # fmt: skip
    return notes


def load(source: Source, datamodule: Any = None) -> tuple[L.LightningModule, Trained]:
    """The model (eval mode, on the CPU) and its data contract, from a checkpoint file or a model fitted in Python.

    Args:
        source: a checkpoint written by ``cfc-forecast fit`` (or ``Trainer.save_checkpoint``), or a
            ``ForecastModule``. datamodule: for a model, the DataModule it was fitted on (default: the one of its
            last ``Trainer.fit``); only its fitted state is read.

    Raises:
        JobError: an unusable checkpoint, or a model without the DataModule it was fitted on.
    """
    if isinstance(source, (str, Path)):
        from cfc_forecast.forecast.trained import read_checkpoint

        ckpt, trained = read_checkpoint(source)
        return model_from(ckpt), trained
    if datamodule is None:
        datamodule = getattr(getattr(source, "_trainer", None), "datamodule", None)
    if datamodule is None:
        raise JobError(
            "a model alone does not say how its data were scaled: give its checkpoint, or the DataModule it was "
            "fitted on (datamodule=dm)"
        )
    ckpt = live_checkpoint(source, datamodule)
    return model_from(ckpt), contract(ckpt, f"{type(datamodule).__name__} of the model")


def read_rows(data: Data, trained: Trained, option: str = "data") -> tuple[pl.DataFrame, list[str]]:
    """The columns the model reads from a frame or CSV / Parquet file(s), and notes on ignored columns; ``option``
    names the paths in messages (the caller's own option, e.g. ``--data.path`` for ``cfc-forecast predict``).

    Raises:
        JobError: no such file, or a column missing or of the wrong kind (named, with the closest names).
    """
    if isinstance(data, L.LightningDataModule):
        raise JobError(
            "give the rows to forecast (a polars frame, or CSV / Parquet paths), not a DataModule; a model's "
            "DataModule goes to datamodule= (only its fitted state is read)"
        )
    if isinstance(data, pl.DataFrame):
        notes = check_schema(data.schema, trained, "frame")
        return data.select(trained.columns), notes
    from cfc_forecast.forecast.source import ROW, input_files, scan

    files = input_files([str(d) for d in data] if isinstance(data, list) else str(data), option)
    lf, notes, _ = scan(files, trained, option)
    return lf.collect().drop(ROW), notes


def trainer_for(trainer_kwargs: dict[str, Any] | None = None) -> L.Trainer:
    """A quiet ``Trainer`` for prediction; several devices default to the "ddp" strategy (re-runs the command
    per process: nothing is pickled)."""
    kwargs = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    kwargs.update(trainer_kwargs or {})
    if kwargs.get("strategy", "auto") == "auto" and kwargs.get("devices", 1) not in (1, "1", [0], "auto"):
        kwargs["strategy"] = "ddp"
    return L.Trainer(**kwargs)


def predict_chunk(
    trainer: L.Trainer, model: L.LightningModule, chunk: Chunk, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """A prepared chunk's ``predict_step`` outputs (with several processes: every process's, on rank 0)."""
    if chunk.dataset is None:
        return []
    ds = chunk.dataset
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=ds.collate)
    outputs = [{k: v.cpu() for k, v in o.items()} for o in trainer.predict(model, loader)]
    if trainer.world_size > 1:
        gathered = [None] * trainer.world_size if trainer.global_rank == 0 else None
        torch.distributed.gather_object(outputs, gathered, dst=0)
        outputs = [o for part in gathered or [] for o in part]
    return outputs


def sorted_frame(outputs: list[dict[str, torch.Tensor]], chunk: Chunk, quantiles: list[float] | None) -> pl.DataFrame:
    """``forecast_frame`` with its rows sorted by ``KEYS``: the windows put in (series, origin) order and the
    targets in name order first, so a sort of every row is needed only when a window's query times do not
    increase. No outputs: the same columns, no rows."""
    if not outputs:
        return empty_frame(chunk, quantiles)
    cat = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
    order = np.lexsort((cat["origin"].numpy(), cat["series"].numpy()))
    names = list(chunk.target_names)
    by_name = sorted(range(len(names)), key=names.__getitem__)
    cat = {k: v[torch.from_numpy(order)] for k, v in cat.items()}
    cat["prediction"] = cat["prediction"][:, :, by_name]  # (W, K, C, Q)
    if "point" in cat:  # a calibrated model's own point forecast, (W, K, C)
        cat["point"] = cat["point"][:, :, by_name]
    frame = forecast_frame([cat], replace(chunk, target_names=[names[i] for i in by_name]), quantiles)
    times, mask = cat["time"].numpy(), cat["mask"].numpy()  # (W, K): real queries come first
    increasing = bool((np.diff(times, axis=1) > 0)[mask[:, 1:]].all())
    return frame if increasing else frame.sort(KEYS, maintain_order=True)


def empty_frame(chunk: Chunk, quantiles: list[float] | None) -> pl.DataFrame:
    """The forecasts' columns and types, without rows."""
    stamps = chunk.decode_times(np.zeros(0))
    columns = {"series": chunk.series_ids.head(0).alias("series"), "origin_time": stamps.alias("origin_time"),
               "time": stamps.alias("time"), "variable": pl.Series("variable", [], pl.String),
               "prediction": pl.Series("prediction", [], pl.Float64)}  # fmt: skip
    columns |= {f"q{q:g}": pl.Series(f"q{q:g}", [], pl.Float64) for q in quantiles or []}
    return pl.DataFrame(columns)


def spacing_note(spacing: float, trained: Trained) -> list[str]:
    """A note when the input's median spacing (time units) is far from the training data's."""
    here, ref = spacing, trained.median_step
    if here == here and ref > 0 and not 0.1 <= here / ref <= 10:
        return [
            f"the input's median spacing is {here:g} {trained.time_unit}, the training data's {ref:g}: are the "
            f"times in {trained.time_unit!r} as the model expects?"
        ]
    return []


def with_observed_span(options: Options, trained: Trained, span: float | None) -> Options:
    """``options`` that query each window's observed rows in [origin, origin + span] (None: as they are).

    Raises:
        JobError: a model without the continuous-time head (its head forecasts fixed steps), or a span <= 0.
    """
    if span is None:
        return options
    if trained.head != "continuous":
        raise JobError(f"forecasts at the observed times need the continuous-time head; this model's head is "
                       f"{trained.head!r}")  # fmt: skip
    if span <= 0:
        raise JobError(f"the span of observed times after the origin must be > 0 ({trained.time_unit}), got {span:g}")
    return replace(options, observed_span=float(span))


def forecast_report(
    source: Source,
    data: Data,
    *,
    datamodule: Any = None,
    origins: list[str | float] | None = None,
    query_times: list[str | float] | None = None,
    min_rows: int | None = None,
    batch_size: int = 256,
    trainer_kwargs: dict[str, Any] | None = None,
    observed_span: float | None = None,
    data_option: str = "data",
) -> Forecasts:
    """:func:`forecast_rows` with its report: the skipped series with reasons, notes and counts.

    ``data_option``: how messages name ``data`` (the caller's option: ``--data.path`` for ``cfc-forecast predict``).

    ``observed_span`` (time units; continuous-time head, with ``origins``): forecast at each series' own rows in
    [origin, origin + span] instead of the query rule (what ``cfc-forecast backtest`` scores irregular series at).
    """
    if batch_size < 1:
        raise JobError(f"batch_size must be >= 1, got {batch_size}")
    model, trained = load(source, datamodule)
    frame, notes = read_rows(data, trained, data_option)
    options = options_for(trained, frame.schema[trained.time_column], origins, query_times, min_rows, flag="")
    options = with_observed_span(options, trained, observed_span)
    no_id = pl.DataFrame(schema={"series": pl.String, "reason": pl.String})
    if trained.id_column is not None and (n := frame[trained.id_column].null_count()):
        frame = frame.filter(pl.col(trained.id_column).is_not_null())
        no_id = pl.DataFrame({"series": [None], "reason": [f"{n} rows with an empty series id"]}, schema=no_id.schema)
    if frame.height == 0:
        raise JobError("the input has no rows with a series id to forecast")
    chunk = prepare(frame, trained, options, "input")
    trainer = trainer_for(trainer_kwargs)
    outputs = predict_chunk(trainer, model, chunk, batch_size)
    frame = sorted_frame(outputs, chunk, trained.quantiles)
    if trainer.world_size > 1 and frame.height:  # the distributed sampler gives each window to one process, or pads
        frame = frame.unique(KEYS, maintain_order=True).sort(KEYS, maintain_order=True)
    skipped = pl.concat([chunk.skipped.with_columns(pl.col("series").cast(pl.String)), no_id])
    return Forecasts(
        frame=frame,
        skipped=skipped,
        n_series=chunk.n_series,
        n_forecast=chunk.n_forecast,
        notes=notes + spacing_note(chunk.spacing, trained) + unseen_notes(chunk.unseen),
        row_counts=dict(chunk.row_counts),
        unseen=dict(chunk.unseen),
    )


def forecast_rows(
    source: Source,
    data: Data,
    *,
    datamodule: Any = None,
    origins: list[str | float] | None = None,
    query_times: list[str | float] | None = None,
    min_rows: int | None = None,
    batch_size: int = 256,
    **trainer_kwargs: Any,
) -> pl.DataFrame:
    """Forecast every series of ``data`` from its own rows with a trained model; skipped series are logged.

    The checkpoint alone defines the preprocessing: columns are matched by name (others are ignored), the scaler
    is the one fitted in training (nothing is fitted on ``data``), and each series is checked and windowed on its
    own, with the rules of ``cfc-forecast predict`` and ``cfc-forecast forecast`` (``forecast.checks``).

    Args:
        source: a checkpoint path, or a ``ForecastModule`` fitted in Python (see ``datamodule``).
        data: a polars frame, or CSV / Parquet file(s), folder or glob, in the layout the model was trained on.
        datamodule: for a model, the DataModule it was fitted on (default: the one of its last ``Trainer.fit``).
        origins: forecast from these time stamps (numbers for numeric times) instead of each series' last row.
        query_times: times after the origin (durations such as "6h", or numbers in the model's time unit;
            continuous-time head only) instead of the trained rule.
        min_rows: rows a series needs before the origin (default: the model's lookback, else 1).
        batch_size: windows per forward pass.
        trainer_kwargs: ``Trainer`` arguments (``accelerator="gpu"``, ...).

    Skipped series and categorical labels unseen in training (forecast with the unknown embedding) are logged as
    warnings; ``forecast_report`` returns them.

    Returns:
        Long layout: ``series, origin_time, time, variable, prediction`` (+ ``q<level>`` per quantile), one row per
        series, origin, query time and target, in the data's own units and time stamps; no rows when nothing
        could be forecast.

    Raises:
        JobError (a ``ValueError``): an unusable checkpoint, a missing column or one of the wrong kind, bad options.
    """
    result = forecast_report(
        source, data, datamodule=datamodule, origins=origins, query_times=query_times, min_rows=min_rows,
        batch_size=batch_size, trainer_kwargs=trainer_kwargs,
    )  # fmt: skip
    if not is_global_zero():  # once per job: every process of every node holds the same result
        return result.frame
    if result.skipped.height:
        reasons = result.skipped.group_by("reason", maintain_order=True).agg(pl.col("series").head(3))
        details = "; ".join(f"{r} (e.g. {s})" for r, s in reasons.iter_rows())
        log.warning("forecast_rows: %d skipped: %s", result.skipped.height, details)
    for note in unseen_notes(result.unseen):
        log.warning("forecast_rows: %s", note)
    return result.frame


def predict_frame(
    model: str | Path | L.LightningModule, data: pl.DataFrame | str | Path | list[str], **options: Any
) -> pl.DataFrame:
    """Forecast from the end of every series of ``data`` and return the long-layout frame (the Python counterpart
    of ``cfc-forecast predict``; the same as :func:`forecast_rows`).

    Args:
        model: a checkpoint path, or a ``ForecastModule`` fitted in Python (on ``datamodule=``, default the
            DataModule of its last ``Trainer.fit``).
        data: a polars frame, or CSV / Parquet file(s), in the layout the model was trained on (columns by name).
        options: ``datamodule``, ``origins``, ``query_times``, ``min_rows``, ``batch_size`` and ``Trainer``
            arguments (see ``forecast_rows``).

    Returns:
        See :func:`forecast_frame`; skipped series are logged.

    Raises:
        ValueError: an unusable checkpoint, a missing column or one of the wrong kind, bad options.
    """
    return forecast_rows(model, data, **options)
