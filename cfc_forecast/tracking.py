"""Experiment trackers beside the CSV log: what a run folder holds, logged as artefacts of the tracker's run.

``--trainer.logger`` takes any Lightning logger (``MLFlowLogger``: params from the model's hyperparameters, metrics per
epoch); the CLI keeps its own ``metrics.csv`` beside it (``ForecastCLI.instantiate_trainer``). After ``fit`` and
``test`` the files of the run folder a person looks at (the resolved config, ``run.json``, the test metrics beside the
baselines, the forecasts' PNG) are logged as artefacts to every MLflow run of the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RUN_FILES = ("config.yaml", "run.json", "test_metrics.json", "test_forecasts.png")


def log_run_files(trainer: Any, run_dir: Path | None) -> list[str]:
    """Log the run folder's ``RUN_FILES`` that exist to each ``MLFlowLogger`` of ``trainer`` (rank 0 only).

    Returns:
        The names logged (to the last MLflow logger; empty when there is none).
    """
    logged: list[str] = []
    if run_dir is None or not trainer.is_global_zero:
        return logged
    for logger in trainer.loggers:
        if type(logger).__name__ != "MLFlowLogger":
            continue
        logged = [name for name in RUN_FILES if (run_dir / name).is_file()]
        for name in logged:
            logger.experiment.log_artifact(logger.run_id, str(run_dir / name))
    return logged
