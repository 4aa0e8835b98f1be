"""Optuna tuning studies over fit configs: ``cfc-forecast tune --config configs/tune/<study>.yaml``.

A study file names the base fit config(s), the metric and its direction, the search space in the fit command's own
dotted keys, the sampler, the pruner and the storage. Every trial is the fit command in its own process and
directory (:mod:`~cfc_forecast.tune.trial`); a callback in it reports the metric after every validation (the step is
the validation's index), stops the fit when the trial is pruned and records the score of the checkpoint the fit keeps,
the trial's value (:mod:`~cfc_forecast.tune.pruning`). No model or data code lives here.
"""

from cfc_forecast.tune.cli import main
from cfc_forecast.tune.spec import StudySpec

__all__ = ["StudySpec", "main"]
