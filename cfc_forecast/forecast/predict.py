"""``cfc-forecast predict``: forecasts from the end of every series, from a checkpoint alone.

```
cfc-forecast predict --ckpt_path runs/<run>/checkpoints/best.ckpt --data.path new.csv [--run_dir DIR]
cfc-forecast predict --config runs/<run>/config.yaml --ckpt_path runs/<run>/checkpoints/best.ckpt
```
The checkpoint defines the preprocessing (columns by name, the scaler fitted in training, windowing, query rule);
``forecast_rows`` does the work, as for the Python API and each chunk of ``cfc-forecast forecast``. ``--config`` (a
run's ``config.yaml``) is read for two things only: the data to forecast when no ``--data.path`` is given (its
DataModule reads its rows; no split is built and nothing is fitted) and the trainer's accelerator, devices and
strategy. ``--data.predict_queries`` overrides the checkpoint's query times, as ``--query_times`` does.
``--predict_windows=test`` is another command: it forecasts the test windows of the training data through the
LightningCLI (``cfc_forecast.cli``), which builds the split from the config and checks its scaler against the
checkpoint's.

Writes ``predictions.parquet`` (long layout), ``skipped_series.csv`` (when a series was skipped) and ``run.json``
into the run directory. Exit status: 0 forecasts written, 1 nothing could be forecast, 2 the command cannot run.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml
from jsonargparse import ArgumentError, ArgumentParser

from cfc_forecast.errors import UserError, parse_error, report
from cfc_forecast.forecast.rows import Forecasts, forecast_report
from cfc_forecast.forecast.store import atomic_write, reason_kind
from cfc_forecast.forecast.trained import JobError
from cfc_forecast.runs import RUN_DIR_ENV, FolderLock, is_global_zero, new_run_dir, record_run

PROG = "cfc-forecast predict"
# what may still be given of the fit command's groups: the checkpoint defines everything else
ALLOWED = {
    "data": ("path", "predict_queries"),
    "trainer": ("accelerator", "devices", "strategy"),
}


def wants_test_windows(argv: list[str]) -> bool:
    """Whether a ``predict`` command line asks for the test windows (handled by the LightningCLI)."""
    for i, arg in enumerate(argv):
        if arg == "--predict_windows=test" or (arg == "--predict_windows" and argv[i + 1 : i + 2] == ["test"]):
            return True
    return False


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, exit_on_error=False, description=__doc__.split("\n")[0])
    p.add_argument("--ckpt_path", type=str, required=True, help="A checkpoint written by cfc-forecast fit.")
    p.add_argument("--config", type=str | None, default=None, help="A run's config.yaml (data, trainer devices).")
    for key in ("data", "data.init_args"):
        p.add_argument(f"--{key}.path", type=str | list[str] | None, default=None, help="CSV / Parquet to forecast.")
        p.add_argument(f"--{key}.predict_queries", type=list[float] | None, default=None, help="Query times.")
    p.add_argument("--query_times", type=list[str | float] | None, default=None, help="Times after the origin.")
    p.add_argument("--origins", type=list[str | float] | None, default=None, help="Origins instead of the ends.")
    p.add_argument("--min_rows", type=int | None, default=None, help="Rows a series needs (default: lookback).")
    p.add_argument("--batch_size", type=int, default=256, help="Windows per forward pass.")
    p.add_argument("--trainer.accelerator", type=str | None, default=None)
    p.add_argument("--trainer.devices", type=int | str | None, default=None)
    p.add_argument("--trainer.strategy", type=str | None, default=None)
    p.add_argument("--runs_root", type=str | None, default=None, help="Folder of the run directories.")
    p.add_argument("--run_dir", type=str | None, default=None, help="This run's directory (default: new).")
    p.add_argument("--predict_windows", type=Literal["last"], default="last", help="'test': see the docstring.")
    p.add_argument("--output_format", type=Literal["parquet", "csv"], default="parquet",
                   help="predictions.parquet, or predictions.csv (date-times as ISO 8601 text).")  # fmt: skip
    return p


def _refuse_model_options(argv: list[str]) -> None:
    for arg in argv:
        if not arg.startswith(("--data.", "--model.", "--trainer.")):
            continue
        group, _, rest = arg[2:].split("=")[0].partition(".")
        key = rest.removeprefix("init_args.")
        if key not in ALLOWED.get(group, ()):
            raise JobError(
                f"{arg.split('=')[0]}: the checkpoint defines the model and its preprocessing; predict takes only "
                "--data.path, --data.predict_queries and --trainer.accelerator / devices / strategy"
            )


def _config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise JobError(f"--config {path!r} cannot be read ({type(err).__name__}: {err})") from None


def _config_rows(cfg: dict[str, Any], config_path: str) -> pl.DataFrame:
    """The rows the config's DataModule reads (its ``_read``: the raw frame; nothing is split or fitted)."""
    data = cfg.get("data") or {}
    class_path = data.get("class_path", "datamodules.SeriesDataModule") if isinstance(data, dict) else None
    if class_path is None:
        raise JobError(f"--config {config_path!r} has no data section; give the data with --data.path")
    module, _, name = class_path.rpartition(".")
    try:
        dm = getattr(importlib.import_module(module), name)(**(data.get("init_args") or {}))
        return dm._read()
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise JobError(f"--config {config_path!r}: its data cannot be read ({err}); give them with --data.path") from (
            None
        )


def _summary(result: Forecasts, run_dir: Path) -> list[str]:
    skipped = result.skipped
    n_skipped = skipped["series"].drop_nulls().n_unique()
    lines = [f"series forecast: {result.n_forecast} of {result.n_series}", f"series skipped: {n_skipped}"]
    if skipped.height:
        lines[-1] += f" (see {run_dir / 'skipped_series.csv'})"
        lines += [f"  {n:>8}  {r}" for r, n in Counter(map(reason_kind, skipped["reason"])).most_common()]
    lines += [f"rows skipped: {n} {reason}" for reason, n in result.row_counts.items()]
    lines += [f"note: {n}" for n in result.notes]
    return lines


def _run(args: Any) -> int:
    cfg = _config(args.config)
    path = args.data.init_args.path or args.data.path
    queries = args.data.init_args.predict_queries or args.data.predict_queries
    rows = path if path is not None else _config_rows(cfg, args.config) if args.config else None
    if rows is None:
        raise JobError("give the data to forecast: --data.path new.csv (or --config runs/<run>/config.yaml)")
    trainer = {k: v for k, v in (cfg.get("trainer") or {}).items() if k in ALLOWED["trainer"] and v is not None}
    trainer |= {k: v for k, v in vars(args.trainer).items() if v is not None}
    root = args.runs_root or cfg.get("runs_root") or "runs"
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(root, "predict")
    os.environ[RUN_DIR_ENV] = str(run_dir)  # the processes a distributed predict re-executes write nowhere else
    try:
        result = forecast_report(
            args.ckpt_path, rows, origins=args.origins, query_times=args.query_times or queries or None,
            min_rows=args.min_rows, batch_size=args.batch_size, trainer_kwargs=trainer,
            data_option="--data.path" if path is not None else f"data.path of {args.config}",
        )  # fmt: skip
    except JobError:
        if not args.run_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a refused command leaves no empty run directory behind
        raise
    if not is_global_zero():
        return 0
    lock = FolderLock(run_dir, "run")  # one process writes into a run folder at a time
    try:
        out = run_dir / f"predictions.{args.output_format}"
        atomic_write(out, result.frame.write_csv if args.output_format == "csv" else result.frame.write_parquet)
        if result.skipped.height:
            atomic_write(run_dir / "skipped_series.csv", result.skipped.write_csv)
        record_run(run_dir, None, "predict")
    finally:
        lock.release()
    print("\n".join(_summary(result, run_dir)))
    if result.n_forecast == 0:
        print("nothing could be forecast: exit status 1")
        return 1
    print(f"forecasts written to {out}")
    return 0


def main(argv: list[str]) -> int:
    """``cfc-forecast predict ARGS`` (the checkpoint path): parse, forecast, write; return the exit status."""
    parser = _parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    try:
        _refuse_model_options(argv)
        args = parser.parse_args(argv)
        return _run(args)
    except JobError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except ArgumentError as err:  # a parse error: one line naming the option, as every user error
        return report("predict", parse_error(str(err), [o for a in parser._actions for o in a.option_strings]))
    except UserError as err:  # e.g. a file system that refuses a write: exit status 3
        return report("predict", err)
    finally:
        if is_global_zero():
            os.environ.pop(RUN_DIR_ENV, None)
