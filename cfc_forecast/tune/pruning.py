"""``TrialPruning``: the callback a tuning trial's fit process runs (``--trainer.callbacks+=``).

After every validation it reports the study's metric to the trial in the storage, at step = the validation's
index in the fit (0, 1, 2, ...; with one validation per epoch, the epoch's index; with ``val_check_interval: 0.5``,
two steps per epoch), so a pruner's ``n_warmup_steps``, ``min_resource`` or ``interval_steps`` count validations.
It stops the fit when the pruner gives up on the trial, recording the verdict in the trial's system attributes
(the fit's process exits cleanly; the worker, which owns the trial, reads the verdict), and at the end of the fit
records the score of the checkpoint the trial keeps (``best.ckpt``: the fit's checkpoint callback on the same
metric), the trial's value. Under DDP every rank runs the callback; rank 0 reports and the verdict is broadcast.

The trial comes from the environment the worker sets (the storage URL stays out of the command line, the process
list and the saved ``config.yaml``): ``CFC_FORECAST_TUNE_STORAGE``, ``_STUDY``, ``_TRIAL``, ``_PRUNER``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import sys

import lightning.pytorch as L
import optuna
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from cfc_forecast.tune.spec import build_pruner
from cfc_forecast.tune.storage import open_storage

ENV_STORAGE = "CFC_FORECAST_TUNE_STORAGE"
ENV_STUDY = "CFC_FORECAST_TUNE_STUDY"
ENV_TRIAL = "CFC_FORECAST_TUNE_TRIAL"
ENV_PRUNER = "CFC_FORECAST_TUNE_PRUNER"
ENV_WORKER_PID = "CFC_FORECAST_TUNE_WORKER_PID"
# trial system attributes this callback writes: the metrics a fit logged when the study's metric was not among them;
# the pruner's verdict; the score of the kept checkpoint (the trial's value)
LOGGED_KEY = "cfc_forecast:logged_metrics"
PRUNED_KEY = "cfc_forecast:pruned"
BEST_KEY = "cfc_forecast:best_score"


class TrialPruning(L.Callback):
    """Report ``monitor`` to the current tuning trial after every validation; stop the fit when it is pruned; record
    the kept checkpoint's score.

    Outside a tuning trial (no ``CFC_FORECAST_TUNE_TRIAL`` in the environment, e.g. a trial's ``config.yaml``
    refitted by hand) it warns once and does nothing.

    Args:
        monitor: the logged metric the study optimises, e.g. ``val/mse``.
    """

    def __init__(self, monitor: str) -> None:
        super().__init__()
        self.monitor = monitor
        self.validations = 0  # the step of the next report
        self.active = ENV_TRIAL in os.environ
        if not self.active:
            return
        _die_with_worker()
        storage = open_storage(os.environ[ENV_STORAGE], for_trial=True)
        pruner = build_pruner(json.loads(os.environ.get(ENV_PRUNER, '{"name": "median"}')))
        study = optuna.load_study(study_name=os.environ[ENV_STUDY], storage=storage, pruner=pruner)
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(os.environ[ENV_TRIAL]))
        self.trial = optuna.trial.Trial(study, trial_id)

    def _set(self, key: str, value: object) -> None:
        self.trial.storage.set_trial_system_attr(self.trial._trial_id, key, value)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            rank_zero_warn("TrialPruning: not inside a tuning trial, so nothing is reported or pruned")
        elif self.kept(trainer) is None:
            raise ValueError(f"a tuning trial needs a ModelCheckpoint on {self.monitor!r} (the fit's --monitor)")

    def kept(self, trainer: L.Trainer) -> ModelCheckpoint | None:
        """The checkpoint callback that keeps the trial's best checkpoint: the first one on ``monitor``."""
        return next((c for c in trainer.checkpoint_callbacks if c.monitor == self.monitor), None)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            if trainer.is_global_zero:
                self._set(LOGGED_KEY, logged)
            raise ValueError(f"the study's metric {self.monitor!r} was not logged; the fit logs {logged}")
        step, self.validations = self.validations, self.validations + 1
        prune = False
        if trainer.is_global_zero:
            self.trial.report(float(trainer.callback_metrics[self.monitor]), step=step)
            prune = self.trial.should_prune()
            if prune:
                self._set(PRUNED_KEY, step)
        if trainer.strategy.broadcast(prune):  # every rank stops, or none
            trainer.should_stop = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or not trainer.is_global_zero:
            return
        score = self.kept(trainer).best_model_score
        self._set(BEST_KEY, None if score is None or not math.isfinite(float(score)) else float(score))


def _die_with_worker() -> None:
    """Have the kernel kill this process when its parent dies (Linux), so a SIGKILLed worker leaves no trial behind.

    The worker's own process is rank 0's parent; DDP's other ranks are children of rank 0 and die with it.
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    worker = os.environ.get(ENV_WORKER_PID)
    # the worker may have died before the line above: then this process was re-parented already (LOCAL_RANK 0:
    # per node on purpose, the worker's own child on this node; the other ranks are that child's children)
    if worker and os.environ.get("LOCAL_RANK", "0") == "0" and os.getppid() != int(worker):
        os._exit(1)
