"""Run directories and what a run records in them: versions and seed, test metrics beside the baselines."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning
import torch

import cfc_forecast

RUN_DIR_ENV = "CFC_FORECAST_RUN_DIR"  # rank 0 passes its run directory to the processes DDP re-executes


def new_run_dir(root: str | os.PathLike, subcommand: str) -> Path:
    """Create and return ``<root>/<YYYYmmdd-HHMMSS>-<subcommand>[-n]``, a folder no other run uses.

    A process that Lightning's DDP launcher started (``LOCAL_RANK`` set) takes its rank 0's folder instead.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(inherited)
    return unique_dir(Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{subcommand}")


def unique_dir(stem: Path) -> Path:
    """Create and return ``stem``, or ``stem-2``, ``stem-3``, ... where it exists: never a folder in use."""
    path, n = stem, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            n += 1
            path = stem.with_name(f"{stem.name}-{n}")


def record_run(run_dir: Path, seed: Any, subcommand: str) -> None:
    """Write ``run.json``: seed, versions of Python, torch, lightning and cfc-forecast, the command line."""
    info = {
        "subcommand": subcommand,
        "seed": seed,
        "versions": {
            "cfc_forecast": cfc_forecast.__version__,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "python": sys.version.split()[0],
        },
        "argv": sys.argv,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


METRIC_NAMES = ("mse", "mae", "mse_per_var", "mae_per_var")


def comparison_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of ``METRIC_NAMES`` for each named forecaster."""
    width = max(len(name) for name in rows) + 2
    lines = [" " * width + "".join(f"{m:>13}" for m in METRIC_NAMES)]
    for name, values in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{values.get(m, float('nan')):>13.4f}" for m in METRIC_NAMES))
    return "\n".join(lines)


def compare_with_baselines(
    dm: Any, model_metrics: dict[str, float], run_dir: Path | None, model: torch.nn.Module | None = None
) -> str:
    """Score the naive and linear baselines on the test windows; return (and save) the tables beside the model's.

    The first table is in the data's scaled units, on the same targets and masks as the model's ``test/*`` metrics;
    with ``model`` (a ``ForecastModule``), the second gives each target's scores in the data's own units for the
    three forecasters (``cfc_forecast.scores``), saved under ``"units"`` in ``test_metrics.json``.
    """
    from cfc_forecast.scores import scores_in_units, units_table
    from datamodules import linear_metrics, naive_metrics
    from datamodules.baselines import linear_forecaster, naive_forecast

    rows = {"model": model_metrics, "naive": naive_metrics(dm, "test"), "linear": linear_metrics(dm, "test")}
    text = "test metrics (scaled units, same windows and masks)\n" + comparison_table(rows)
    if model is not None:
        source, linear = dm.target_input_index, linear_forecaster(dm)
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            units = {
                "model": scores_in_units(dm, "test", lambda b: model(b.to(device)), model.quantile_levels),
                "naive": scores_in_units(dm, "test", lambda b: naive_forecast(b, source), None),
                "linear": scores_in_units(dm, "test", linear, None),
            }
        model.train(was_training)
        for name, per_target in units.items():
            rows[name] = {**rows[name], "units": per_target}
        text += '\n\ntest scores per target, in the data\'s units (README: "Test scores")\n' + units_table(units)
    if run_dir is not None:
        (run_dir / "test_metrics.json").write_text(json.dumps(rows, indent=2) + "\n")
    return text
