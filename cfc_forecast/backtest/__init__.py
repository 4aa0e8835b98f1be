"""``cfc-forecast backtest``: rolling-origin evaluation, with one checkpoint or a model refitted per fold.

N origins walk forward to the end of the data (``plan.origins``); at each, every series is forecast from its own
rows before the origin through the one checkpoint-to-forecast function (``forecast.rows.forecast_report``), the
naive and linear baselines forecast the same query times (``scores.baselines``), and the actuals are joined. Nothing
is resampled: a continuous-time head is queried at each series' observed times in [origin, origin + span]; the
other heads forecast their own grid (K steps of the series' spacing), scored where a value was observed at a
forecast's time stamp (the others keep an empty ``actual``).

- ``--refit never`` (``--ckpt_path``): one checkpoint forecasts every origin; origins before the end of its
  validation split are refused (the model has seen those targets).
- ``--refit every`` / ``K``: before the first origin of each K, ``cfc-forecast fit`` runs on the config in its own
  run folder ``fits/<fold>`` with the data cut at the origin: ``split_times`` (or ``split_fractions`` for a source
  without them) put the time before the origin into train and validation as the config's fractions do
  (``plan.fold_cuts``), and the test split after it, so the scaler, the early stopping and ``best.ckpt`` see
  nothing at or after the origin. The seed is the config's ``seed_everything``, recorded per fold.

Output folder: ``backtest.json`` (the settings and the folds), ``origins/<i>.parquet`` (one per origin, written
atomically: a killed backtest continues with the origins not done), then ``forecasts.parquet`` (``forecaster``
"model" / "naive" / "linear", ``fold``, ``series, origin_time, time, variable, prediction`` [+ quantiles],
``actual``, ``step``), ``skipped_series.csv`` (series not forecast at an origin, with ``predict``'s reasons:
``report``), ``metrics_by_origin.csv``, ``metrics.csv`` (overall), ``metrics_by_step.csv`` and ``backtest.png``. A
backtest in which no forecast has an observed value is refused after its forecasts are written (``report.refuse``).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cfc_forecast.backtest import plan, report
from cfc_forecast.backtest.scores import actuals, baselines, plot, scale_of, scores, table, with_actuals
from cfc_forecast.errors import UserError
from cfc_forecast.forecast.rows import forecast_report
from cfc_forecast.forecast.trained import JobError, read_checkpoint
from cfc_forecast.runs import FolderLock
from datamodules.baselines import linear_forecaster
from datamodules.stamps import shown_time

__all__ = ["backtest", "main"]


def _refit_every(refit: str | int) -> int:
    """0 for "never", 1 for "every", K for an integer K >= 1."""
    if refit in ("never", "every"):
        return 0 if refit == "never" else 1
    try:
        k = int(refit)
    except (TypeError, ValueError):
        k = 0
    if k < 1:
        raise UserError(f"--refit must be 'never', 'every' or a number of origins >= 1, got {refit!r}")
    return k


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


def _stamp(t: float, codec: Any) -> str | float:
    """A float time as the user-time text ``datamodules.stamps.user_time`` reads back (ISO 8601 with its offset)."""
    if not codec.is_datetime:
        return float(t)
    value = codec.decode(np.array([t]))[0]
    return value.isoformat()


def _fold_data(dm: Any, first: float, end: float, cuts: tuple[float, float], codec: Any) -> dict[str, Any]:
    """The DataModule arguments that cut a fold: ``split_times`` where the source takes them, else fractions."""
    if "split_times" in inspect.signature(type(dm).__init__).parameters:
        return {"split_times": [_stamp(c, codec) for c in cuts]}
    span = end - first
    f_train, f_val = (cuts[0] - first) / span, (cuts[1] - cuts[0]) / span
    return {"split_fractions": [f_train, f_val, 1.0 - f_train - f_val]}


def fit_fold(config: str, folder: Path, data: dict[str, Any], fit_args: list[str]) -> Path:
    """``cfc-forecast fit`` of one fold in ``folder`` (continued with ``fit --resume`` when a killed fit left its
    last.ckpt there); returns its best.ckpt."""
    from cfc_forecast.cli import cli

    best = folder / "checkpoints" / "best.ckpt"
    if (folder / "fold.json").exists():
        return best
    if (folder / "checkpoints" / "last.ckpt").exists():
        argv = ["fit", "--resume", str(folder)]
    else:
        argv = ["fit", "--config", config, "--run_dir", str(folder), "--test_after_fit", "false"]
        argv += [f"--data.{k}={json.dumps(v)}" for k, v in data.items()] + fit_args
    cli(argv)
    if not best.exists():
        raise UserError(f"the fit in {folder} wrote no best.ckpt (is --monitor logged?)")
    _write_json(folder / "fold.json", {"data": data, "best": str(best)})
    return best


def _fit_named(config: str, folder: Path, data: dict[str, Any], fit_args: list[str], fold: int, origin: Any) -> Path:
    """:func:`fit_fold`, its errors naming the fold, its origin and its run folder."""
    from jsonargparse import ArgumentError

    where = f"fold {fold} (origin {origin}, run folder {folder})"
    try:
        return fit_fold(config, folder, data, fit_args)
    except UserError as err:
        raise type(err)(f"{where}: {err}") from None
    except ArgumentError as err:  # a --fit_args value the fit command refuses
        raise UserError(f"{where}: the fit refused its arguments: {' '.join(str(err).split())}") from None
    except Exception as err:  # a crash keeps its traceback; the note says where
        err.add_note(f"cfc-forecast backtest: in {where}")
        raise


def _settings(**values: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


def backtest(
    config: str,
    n_windows: int,
    step: str | float,
    output: str = "runs/backtest",
    ckpt_path: str | None = None,
    refit: str | int = "never",
    horizon: str | float | None = None,
    fit_args: list[str] | None = None,
    batch_size: int = 256,
) -> pl.DataFrame:
    """Rolling-origin backtest of a model on its config's data (see the module docstring).

    Args:
        config: the fit config (its ``data`` section gives the rows; with refit, every fold fits it).
        n_windows: N forecast origins.
        step: time between origins ("1d": calendar days in a time zone; "6h"; or a number in the time unit).
        output: the backtest's folder (created; a rerun with the same settings continues it).
        ckpt_path: the model, for ``refit="never"``.
        refit: "never", "every" or K (refit before every K-th origin).
        horizon: the span after each origin that is forecast (default: the model's forecast span, or K steps).
        fit_args: extra ``cfc-forecast fit`` arguments for every fold (``--trainer.max_epochs=5``).
        batch_size: windows per forward pass.

    Returns:
        The overall scores: ``forecaster, variable`` and ``scores.NAMES``.

    Raises:
        UserError: a missing file or bad option, origins inside the checkpoint's train / validation range, a
            folder holding a backtest with other settings or in use by another process.
    """
    every = _refit_every(refit)
    if every == 0 and not ckpt_path:
        raise UserError("--refit never forecasts with one model: give --ckpt_path (or --refit every)")
    if every and ckpt_path:
        raise UserError("--ckpt_path is for --refit never; with --refit every each fold fits its own model")
    if every == 0 and fit_args:
        raise UserError(f"--fit_args {list(fit_args)} are the fit arguments of each refit fold; --refit never fits "
                        "nothing: drop them, or give --refit every")  # fmt: skip
    cfg = plan.read_config(config)
    out = Path(output)
    made = not out.exists()
    lock = FolderLock(out, "backtest")
    try:
        return _run(cfg, config, out, n_windows, step, ckpt_path, every, horizon, list(fit_args or []), batch_size)
    except JobError as err:  # a checkpoint or rows the forecast path refuses: the same one line as predict's
        raise UserError(str(err)) from None
    finally:
        lock.release()
        if made and _holds_nothing(out):  # a failed backtest leaves no folder of its own (a rerun would refuse it)
            shutil.rmtree(out, ignore_errors=True)


def _holds_nothing(out: Path) -> bool:
    """Whether a backtest folder holds no forecast and no fold's fit: only its lock, settings and empty folders."""
    if not out.is_dir():
        return False
    left = {p.name for p in out.iterdir()} - {".lock", "backtest.json"}
    return all(p.is_dir() and not any(p.iterdir()) for p in (out / name for name in left))


class LinearBaseline:
    """The linear baseline of one DataModule (fitted on its training split), in the form of the model it is set
    beside: a direct-head model's grid map, or, for a continuous head, the map to each query time (a count-window
    model with a continuous head forecasts at the observed times, not on the grid). Fitted on first use, then kept."""

    def __init__(self, dm: Any) -> None:
        self.dm, self.fits = dm, {}

    def for_head(self, head: str) -> Any:
        if head not in self.fits:
            self.fits[head] = linear_forecaster(self.dm, queries=head == "continuous")
        return self.fits[head]


def _origins(
    dm: Any, n_windows: int, step: str | float, ckpt_path: str | None, every: int, horizon: Any
) -> tuple[Any, float, list[str]]:
    """The (N,) origins, checked against the data's start and, without refit, the checkpoint's test split; the
    forecast span (time units); and warnings (a ``--horizon`` beyond the span the model is trained for)."""
    first, end = plan.data_range(dm)
    codec = dm._table.codec
    if every == 0:
        trained = read_checkpoint(ckpt_path)[1]
    else:
        if dm.cfg.split_by != "time":  # a series split would train on the rows after each origin
            raise UserError("--refit cuts each fold's data at its origin: it needs --data.split_by time")
    view = trained if every == 0 else _spec_view(dm)
    span = plan.forecast_span(view, horizon)
    warnings = plan.horizon_warnings(view, horizon, span)
    anchor = (trained.spec if every == 0 else dm.spec).anchor
    when = plan.origins(end, span, n_windows, step, codec, anchor)
    if when[0] <= first:
        raise UserError(f"the first origin {shown_time(when[0], codec)} is not after the data's start: fewer "
                        "--n_windows or a shorter --step")  # fmt: skip
    if every == 0 and when[0] < (start := plan.test_start(dm)):
        raise UserError(
            f"origin {shown_time(when[0], codec)} lies inside the checkpoint's train / validation range (its test "
            f"split starts at {shown_time(start, codec)}): fewer --n_windows, a shorter --step, or --refit every"
        )
    return when, span, warnings


def _run(cfg, config, out, n_windows, step, ckpt_path, every, horizon, fit_args, batch_size) -> pl.DataFrame:
    dm = plan.datamodule_from(cfg)
    when, span, warnings = _origins(dm, n_windows, step, ckpt_path, every, horizon)
    for line in warnings:
        print(f"cfc-forecast backtest: warning: {line}", file=sys.stderr, flush=True)
    first, end = plan.data_range(dm)
    codec = dm._table.codec
    settings = _settings(config=config, n_windows=n_windows, step=step, ckpt_path=ckpt_path, refit=every,
                         horizon=horizon, fit_args=fit_args, origins=[_stamp(o, codec) for o in when])  # fmt: skip
    saved = out / "backtest.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        if before.get("settings") != json.loads(json.dumps(settings, default=str)):
            raise UserError(f"{out} holds a backtest with other settings ({saved}); give another --output")
        folds = before.get("folds", {})
    else:
        folds = {}
    _write_json(saved, {"settings": settings, "folds": folds, "warnings": warnings})
    rows = dm._read()
    (out / "origins").mkdir(exist_ok=True)
    linear, linear_fold = (LinearBaseline(dm), 0) if every == 0 else (None, -1)
    for i, origin in enumerate(when):
        part = out / "origins" / f"{i:04d}.parquet"
        if part.exists():
            continue
        fold = i - i % every if every else 0
        ckpt = ckpt_path
        if every:
            cuts = plan.fold_cuts(first, float(when[fold]), tuple(dm.cfg.split_fractions))
            data = _fold_data(dm, first, end, cuts, codec)
            folder = out / "fits" / f"{fold:04d}"
            ckpt = str(_fit_named(config, folder, data, fit_args, fold, shown_time(when[fold], codec)))
            folds[str(fold)] = {"origin": _stamp(when[fold], codec), "seed": cfg.get("seed_everything"), **data,
                                "checkpoint": ckpt}  # fmt: skip
            _write_json(saved, {"settings": settings, "folds": folds, "warnings": warnings})
            if linear_fold != fold:  # the baseline is refitted with the model, on the fold's training split
                linear, linear_fold = LinearBaseline(plan.datamodule_from(cfg, **data)), fold
        shown = shown_time(origin, codec)
        frame, record = _one_origin(ckpt, rows, (_stamp(origin, codec), shown), linear, span, batch_size)
        report.write_record(part.with_suffix(".json"), record)
        tmp = part.with_suffix(".tmp")  # written last: the origin is done once its parquet is there
        frame.with_columns(pl.lit(fold, pl.Int32).alias("fold")).write_parquet(tmp)
        os.replace(tmp, part)
    last = ckpt_path or folds[max(folds, key=int)]["checkpoint"]
    return _summarise(out, n_windows, {"settings": settings, "folds": folds, "warnings": warnings}, last)


def _spec_view(dm: Any) -> Any:
    """What ``plan.forecast_span`` reads of a checkpoint (``spec``, ``median_step``), from a built DataModule."""
    from types import SimpleNamespace

    dm.setup()
    return SimpleNamespace(spec=dm.spec, median_step=dm._median_step, time_unit=dm.cfg.time_unit)


def _one_origin(
    ckpt: str, rows: pl.DataFrame, origin: tuple[str | float, str], linear: Any, span: float, batch_size: int
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The model's and the baselines' forecasts at one origin, with the actuals: a continuous-time head forecasts at
    each series' observed times in [origin, origin + span] (no resampling), the others on their own grid; and
    what was skipped (``report.origin_record``). ``origin``: as ``forecast_rows`` reads it, and as shown."""
    origin, shown = origin
    trained = read_checkpoint(ckpt)[1]
    observed = span if trained.head == "continuous" else None
    result = forecast_report(ckpt, rows, origins=[origin], batch_size=batch_size, observed_span=observed)
    model = result.frame.select(pl.lit("model").alias("forecaster"), *result.frame.columns)
    linear_fn = linear.for_head(trained.head)
    frame = pl.concat([model, baselines(rows, trained, [origin], linear_fn, observed)], how="diagonal_relaxed")
    frame = with_actuals(frame, actuals(rows, trained)).join(scale_of(trained), on="variable", how="left")
    return frame, report.origin_record(result, shown, trained)


def _summarise(out: Path, n_windows: int, record: dict[str, Any], ckpt: str) -> pl.DataFrame:
    """Write the forecasts, the skipped series and the scores; refuse a backtest where nothing is scored."""
    frame = pl.concat([pl.read_parquet(out / "origins" / f"{i:04d}.parquet") for i in range(n_windows)],
                      how="diagonal_relaxed")  # fmt: skip
    tmp = out / "forecasts.tmp"
    frame.write_parquet(tmp)
    os.replace(tmp, out / "forecasts.parquet")
    skipped, pairs = report.gather(out, n_windows)
    if skipped.height:
        skipped.write_csv(out / "skipped.tmp")
        os.replace(out / "skipped.tmp", out / report.SKIPPED)
    tally, trained = report.counts(frame, skipped, pairs), read_checkpoint(ckpt)[1]
    warnings = record["warnings"] + report.partial_warning(tally, n_windows, trained)
    _write_json(out / "backtest.json", record | {"warnings": warnings, "counts": tally})
    report.refuse(tally, trained, out)
    for line in warnings[len(record["warnings"]) :]:
        print(f"cfc-forecast backtest: warning: {line}", file=sys.stderr, flush=True)
    per_origin = scores(frame, ["forecaster", "origin_time", "variable"])
    overall = scores(frame, ["forecaster", "variable"])
    per_step = scores(frame, ["forecaster", "step"])
    for name, part in (("metrics_by_origin", per_origin), ("metrics", overall), ("metrics_by_step", per_step)):
        part.write_csv(out / f"{name}.csv")
    plot(scores(frame, ["forecaster", "origin_time"]), per_step, out / "backtest.png")
    noted = f"; {len(warnings)} warning{'s' * (len(warnings) != 1)} (backtest.json)" if warnings else ""
    lines = [table(overall), *report.summary_lines(tally, out)]
    skips = f"; {tally['skipped']} (series, origin) skipped ({report.SKIPPED})" if tally["skipped"] else ""
    print("\n".join(lines) + f"\n{n_windows} origins{skips}{noted}; backtest folder: {out}", flush=True)
    return overall


def main(argv: list[str]) -> int:
    """``cfc-forecast backtest ARGS``: parse the arguments (and ``--config`` is the fit config), run; status 0."""
    from jsonargparse import ArgumentParser

    # "--step -1d": argparse takes -1d for an option and says "expected one argument"
    for i, arg in enumerate(argv[:-1]):
        if arg == "--step" and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            plan.check_step(argv[i + 1])
        if arg == "--horizon" and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            plan.forecast_span(None, argv[i + 1])  # refuses it, naming --horizon
    parser = ArgumentParser(prog="cfc-forecast backtest", exit_on_error=False)
    parser.add_function_arguments(backtest, as_positional=False)
    args = parser.parse_args(argv)
    backtest(**{k: v for k, v in args.as_dict().items() if k != "__path__"})
    return 0
