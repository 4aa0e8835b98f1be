"""``cfc-forecast forecast``: batch forecasting jobs over inputs of any size, resumable after a crash.

```
cfc-forecast forecast --ckpt_path runs/<run>/checkpoints/best.ckpt --input 'drop/2026-11-28/*.parquet' \\
    --output forecasts/2026-11-28/ [--chunk_size 10000] [--origins '[...]'] [--query_times '[...]'] [--devices 2]
cfc-forecast forecast --config configs/forecast/quickstart.yaml
```
Exit status: 0 when something was forecast (series may have been skipped: see ``skipped_series.csv``), 1 when
nothing could be forecast, 2 when the job cannot run (a column missing or of the wrong kind, an unusable
checkpoint, bad arguments, an output folder holding another job or in use by another process), 3 when the file
system failed (disk full, permission denied, I/O error: ENOSPC, EACCES, EIO, ...). Every exit but 0 and 1 is one
line on stderr. A job stopped by anything (exit 3, a kill, a crash) resumes when the same command is run again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from jsonargparse import auto_cli

from cfc_forecast.errors import StorageError, UserError, from_os_error, report
from cfc_forecast.forecast.job import ForecastJob, JobResult
from cfc_forecast.forecast.options import options_for
from cfc_forecast.forecast.prepare import Options
from cfc_forecast.forecast.rows import Forecasts, forecast_report, forecast_rows, predict_frame
from cfc_forecast.forecast.trained import JobError

__all__ = [
    "ForecastJob",
    "Forecasts",
    "JobError",
    "JobResult",
    "forecast",
    "forecast_report",
    "forecast_rows",
    "main",
    "predict_frame",
]


def forecast(
    ckpt_path: str,
    input: str | list[str],
    output: str,
    chunk_size: int = 10_000,
    batch_size: int = 256,
    origins: list[str | float] | None = None,
    query_times: list[str | float] | None = None,
    min_rows: int | None = None,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    progress: bool = True,
    output_format: Literal["parquet", "csv"] = "parquet",
    engine: Literal["local", "ray"] = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
) -> int:
    """Forecast every series of the input with a trained model; write Parquet parts, a report and a manifest.

    Args:
        ckpt_path: a checkpoint written by ``cfc-forecast fit`` (it alone defines the preprocessing).
        input: CSV / Parquet file, folder or glob (or a list), in the layout the model was trained on.
        output: folder of the forecasts (created; rerun the same command into it to resume).
        chunk_size: series per chunk: one Parquet part each; memory grows with it, not with the input.
        batch_size: windows per forward pass.
        origins: forecast from these time stamps (numbers for numeric times) instead of each series' end.
        query_times: forecast at these times after the origin (numbers in the model's time unit or durations
            such as "6h"; continuous-time head only) instead of the trained horizon.
        min_rows: rows a series needs before the origin (default: the model's lookback, else 1).
        accelerator: Lightning accelerator ("auto", "cpu", "gpu").
        devices: number or list of devices (several: Lightning's distributed predict, one process each).
        strategy: Lightning strategy; several devices default to "ddp".
        progress: show the progress bar (series/s and ETA).
        output_format: the parts' format: "parquet" (typed, compact) or "csv" (date-times as ISO 8601 text).
        engine: "local" (this machine; ``devices`` processes) or "ray" (chunks scored by a Ray Data actor pool on
            the cluster at ``address``: ``cfc_forecast.forecast.engine``; the same parts, records and manifest).
        address: the Ray cluster ("auto": the one ``ray start`` runs; default: a local one for this job).
        workers: Ray actors scoring chunks (default: the cluster's CPUs - 1, at least 1).
        cpus_per_worker: CPUs per Ray actor (fractions allowed).
        gpus_per_worker: GPUs per Ray actor (default: 1 where the cluster has GPUs, else 0).

    Returns:
        The exit status: 0 forecasts written, 1 nothing could be forecast, 2 the job cannot run.
    """
    try:
        job_options = {"origins": origins, "query_times": query_times, "min_rows": min_rows}
        job_options["output_format"] = output_format
        trainer_kwargs = {"accelerator": accelerator, "devices": devices, "strategy": strategy}
        job_class, engine_kwargs = ForecastJob, {}
        if engine == "ray":
            from cfc_forecast.forecast.engine import RayForecastJob, ray_available

            ray_available()
            job_class = RayForecastJob
            engine_kwargs = dict(address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                                 gpus_per_worker=gpus_per_worker)  # fmt: skip
        job = job_class(
            ckpt_path,
            input,
            output,
            Options(min_rows=min_rows),
            chunk_size,
            batch_size,
            trainer_kwargs,
            progress,
            job_options,
            output_format,
            **engine_kwargs,
        )
        time_dtype = job.lf.collect_schema()[job.trained.time_column]
        job.options = options_for(job.trained, time_dtype, origins, query_times, min_rows)
        result = job.run()
    except JobError as err:
        print(f"cfc-forecast forecast: error: {err}", file=sys.stderr)
        return 2
    except StorageError as err:
        return report("forecast", StorageError(f"{err}; rerun the same command to resume"))
    except UserError as err:  # an unusable checkpoint, a folder in use
        return report("forecast", err)
    except OSError as err:  # what no check caught: one line naming the path (exit 3 when the file system refused)
        return report("forecast", from_os_error(err, "; rerun the same command to resume"))
    print_summary(result, output)
    return result.status


def print_summary(result: JobResult, output: str) -> None:
    """The summary a person reads at the end of a job."""
    s = result.summary
    lines = [
        f"series forecast: {s['series_forecast']} of {s['series_in_input']}",
        f"series skipped: {s['series_skipped']}"
        + (f" (see {Path(output) / 'skipped_series.csv'})" if s["series_skipped"] else ""),
    ]
    lines += [f"  {n:>8}  {reason}" for reason, n in s["skipped_by_reason"].items()]
    lines += [f"rows skipped: {n} {reason}" for reason, n in s["rows_skipped"].items()]
    lines.append(f"files written: {s['files_written']} parts, {s['rows_written']} rows, in {Path(output)}")
    lines += [f"note: {n}" for n in s["notes"]]
    if s["series_forecast"] == 0:
        lines.append("nothing could be forecast: exit status 1")
    print("\n".join(lines))


def main(argv: list[str]) -> int:
    """``cfc-forecast forecast ARGS``: parse the arguments (and ``--config job.yaml``), run, return the status."""
    # exit_on_error=False: a parse error raises, and cfc_forecast.commands.main reports it as one line
    return auto_cli(forecast, args=argv, as_positional=False, prog="cfc-forecast forecast", exit_on_error=False)
