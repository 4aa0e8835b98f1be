"""``TrialPruning``: the callback a tuning trial's fit process runs (``--trainer.callbacks+=``).

Every validation epoch it reports the study's metric to the trial in the storage, and stops the fit when the
pruner gives up on the trial. It is optuna-integration's Lightning callback, always on its distributed path:
that path records the verdict in the trial's system attributes and stops the trainer instead of raising
``TrialPruned`` inside the fit, so a pruned trial's process exits cleanly and the worker, which owns the trial,
reads the verdict, whether the fit ran in one process or in several DDP ranks (each rank builds this callback
and loads the study; rank 0 reports, and the verdict is broadcast).

The trial comes from the environment the worker sets (the storage URL stays out of the command line, the process
list and the saved ``config.yaml``): ``CFC_FORECAST_TUNE_STORAGE``, ``_STUDY``, ``_TRIAL``, ``_PRUNER``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

import lightning.pytorch as L
import optuna
from lightning.pytorch.utilities import rank_zero_warn
from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

from cfc_forecast.tune.spec import build_pruner
from cfc_forecast.tune.storage import open_storage

ENV_STORAGE = "CFC_FORECAST_TUNE_STORAGE"
ENV_STUDY = "CFC_FORECAST_TUNE_STUDY"
ENV_TRIAL = "CFC_FORECAST_TUNE_TRIAL"
ENV_PRUNER = "CFC_FORECAST_TUNE_PRUNER"
ENV_WORKER_PID = "CFC_FORECAST_TUNE_WORKER_PID"
# trial system attributes this callback writes: the metrics a fit logged when the study's metric was not among them
LOGGED_KEY = "cfc_forecast:logged_metrics"
# optuna-integration's keys on its distributed path: the verdict, the values reported so far (its module constants)
PRUNED_KEY, INTERMEDIATE_KEY = "ddp_pl:pruned", "ddp_pl:intermediate_value"


class TrialPruning(PyTorchLightningPruningCallback):
    """Report ``monitor`` to the current tuning trial every validation epoch; stop the fit when it is pruned.

    Outside a tuning trial (no ``CFC_FORECAST_TUNE_TRIAL`` in the environment, e.g. a trial's ``config.yaml``
    refitted by hand) it warns once and does nothing.

    Args:
        monitor: the logged metric the study optimises, e.g. ``val/mse``.
    """

    def __init__(self, monitor: str) -> None:
        self.active = ENV_TRIAL in os.environ
        if not self.active:
            L.Callback.__init__(self)
            self.monitor = monitor
            return
        _die_with_worker()
        storage = open_storage(os.environ[ENV_STORAGE], for_trial=True)
        pruner = build_pruner(json.loads(os.environ.get(ENV_PRUNER, '{"name": "median"}')))
        study = optuna.load_study(study_name=os.environ[ENV_STUDY], storage=storage, pruner=pruner)
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(os.environ[ENV_TRIAL]))
        super().__init__(optuna.trial.Trial(study, trial_id), monitor)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            rank_zero_warn("TrialPruning: not inside a tuning trial, so nothing is reported or pruned")
            return
        super().on_fit_start(trainer, pl_module)
        if not self.is_ddp_backend:  # one process: take the distributed path all the same (see the module docstring)
            self.is_ddp_backend = True
            self._trial.storage.set_trial_system_attr(self._trial._trial_id, INTERMEDIATE_KEY, {})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            if trainer.is_global_zero:
                self._trial.storage.set_trial_system_attr(self._trial._trial_id, LOGGED_KEY, logged)
            raise ValueError(f"the study's metric {self.monitor!r} was not logged; the fit logs {logged}")
        super().on_validation_end(trainer, pl_module)


def _die_with_worker() -> None:
    """Have the kernel kill this process when its parent dies (Linux), so a SIGKILLed worker leaves no trial behind.

    The worker's own process is rank 0's parent; DDP's other ranks are children of rank 0 and die with it.
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    worker = os.environ.get(ENV_WORKER_PID)
    # the worker may have died before the line above: then this process was re-parented already
    if worker and os.environ.get("LOCAL_RANK", "0") == "0" and os.getppid() != int(worker):
        os._exit(1)
