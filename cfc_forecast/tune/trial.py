"""One trial: the fit command with the trial's values, in its own process and its own directory.

A crash, an out-of-memory kill or a NaN inside the fit is that process's end, never the study's: the worker reads
the outcome from the exit status and the storage, marks the trial failed (with the reason) and goes on. Lightning's
DDP launcher re-executes the same command on every rank, so a trial trains on ``trainer.devices`` unchanged.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from cfc_forecast.runs import RUN_DIR_ENV, unique_dir
from cfc_forecast.tune import pruning
from cfc_forecast.tune.space import Param, cli_args, suggest_all

TERMINATE_WAIT_S = 30  # a stopped worker gives its trial's process this long to exit before killing it


class StopWorkers(Exception):
    """Raised inside trial ``trial`` when the study must stop (an interrupt, or a metric no trial can report)."""

    def __init__(self, reason: str, trial: int) -> None:
        super().__init__(reason)
        self.trial = trial


@dataclass
class TrialRunner:
    """The objective each worker hands to ``study.optimize``: sample, run the fit process, read the outcome.

    Args:
        space: the search space. configs: base fit configs. fit_args: the study's fixed fit keys.
        metric, maximize: what the trial is scored on: the score of the checkpoint its fit keeps (``best.ckpt``, the
            best validation in that direction). study_dir: trials go to ``trials/<n>``.
        env: the environment of the trial processes (storage, study, pruner, devices).
        stop: set when the workers must stop; the running fit is terminated and the trial failed (not counted).
        worker: this worker's name, recorded on its trials.
    """

    space: list[Param]
    configs: list[Path]
    fit_args: dict[str, Any]
    metric: str
    maximize: bool
    study_dir: Path
    env: dict[str, str]
    stop: threading.Event
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __call__(self, trial: optuna.Trial) -> float:
        values = suggest_all(self.space, trial)
        run_dir = _new_trial_dir(self.study_dir / "trials", trial.number).resolve()
        trial.set_user_attr("fit_values", values)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", self.worker)
        rc = self._run(self.command(values, run_dir), trial.number, run_dir)
        frozen = trial.study._storage.get_trial(trial._trial_id)  # a running trial is read from the storage
        if pruning.LOGGED_KEY in frozen.system_attrs:
            logged = frozen.system_attrs[pruning.LOGGED_KEY]
            message = f"metric {self.metric!r} is not logged by the fit (it logs {logged}); fix `metric:`"
            raise StopWorkers(message, trial.number)
        if rc != 0:
            return _failed(trial, f"the fit exited with status {rc}: {_last_error(run_dir / 'fit.log')}")
        if pruning.PRUNED_KEY in frozen.system_attrs:
            raise optuna.TrialPruned(f"pruned after {len(frozen.intermediate_values)} validation(s)")
        if not any(math.isfinite(v) for v in frozen.intermediate_values.values()):
            seen = list(frozen.intermediate_values.values())
            return _failed(trial, f"no finite {self.metric} in any validation (reported: {seen})")
        # the trial's value is the score of the checkpoint it keeps (best.ckpt), not a value picked from the reports
        best = frozen.system_attrs.get(pruning.BEST_KEY)
        if best is None:
            return _failed(trial, f"the fit recorded no finite score of its best checkpoint on {self.metric}")
        config = run_dir / "config.yaml"
        if not config.is_file():
            return _failed(trial, f"the fit wrote no {config}")
        trial.set_user_attr("validations", len(frozen.intermediate_values))
        # the resolved config travels with the trial, so the best config can be written on any machine of the study
        trial.set_user_attr("fit_config", config.read_text())
        return float(best)

    def command(self, values: dict[str, Any], run_dir: Path) -> list[str]:
        """The fit command line of a trial with ``values``."""
        callback = {"class_path": "cfc_forecast.tune.pruning.TrialPruning", "init_args": {"monitor": self.metric}}
        # best.ckpt keeps the validation the study scores: its metric, in its direction
        monitor = [f"--monitor={self.metric}", f"--monitor_mode={'max' if self.maximize else 'min'}"]
        return [
            sys.executable, "-m", "cfc_forecast.commands", "fit",
            *[a for c in self.configs for a in ("--config", str(c.resolve()))],
            "--trainer.enable_progress_bar=false", *monitor,
            *cli_args(self.fit_args), *cli_args(values),
            "--test_after_fit=false", f"--run_dir={run_dir.resolve()}",
            f"--trainer.callbacks+={json.dumps(callback)}",
        ]  # fmt: skip

    def _run(self, cmd: list[str], number: int, run_dir: Path) -> int:
        env = {**os.environ, **self.env, pruning.ENV_TRIAL: str(number), pruning.ENV_WORKER_PID: str(os.getpid())}
        env.pop(RUN_DIR_ENV, None)
        with open(run_dir / "fit.log", "w") as log:
            log.write(" ".join(cmd) + "\n\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            while proc.poll() is None:
                if self.stop.wait(0.5):
                    _terminate(proc)
                    raise StopWorkers("interrupted", number)
        return proc.returncode


def _failed(trial: optuna.Trial, reason: str) -> float:
    # a NaN objective makes optuna mark the trial FAIL; the reason marks it as the trial's own failure, which
    # counts towards n_trials (an interrupted or abandoned trial has none and is run again)
    trial.set_user_attr("failure", reason)
    return float("nan")


def _terminate(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(TERMINATE_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _new_trial_dir(root: Path, number: int) -> Path:
    # trial numbers are unique within a study; a folder left by another study of the same name is kept aside
    return unique_dir(root / f"{number:04d}")


def _last_error(log: Path, n: int = 300) -> str:
    """The last non-empty line of a fit log (the exception, usually), shortened; where to read the rest."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"no log at {log}"
    last = lines[-1] if lines else "(empty log)"
    return f"{last[:n]} (see {log})"
