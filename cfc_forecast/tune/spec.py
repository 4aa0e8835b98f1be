"""The study file of ``cfc-forecast tune``: what to tune, how to search, where the study lives."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

# names a study file may give; anything else is a ValueError that lists these
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}


@dataclass
class StudySpec:
    """A tuning study: the YAML file of ``cfc-forecast tune --config`` (every field is also a command-line option).

    Args:
        study_name: the study's name in the storage; workers with the same name and storage share one study.
        fit_config: the base fit config, or several composed in order (like repeated ``fit --config``); paths are
            relative to the working directory.
        space: flat dotted fit key -> distribution (see :mod:`cfc_forecast.tune.space`).
        metric: the validation metric each trial reports after every validation; a trial's value is the score of the
            checkpoint its fit keeps (``best.ckpt``, the best validation in ``direction``).
        direction: "minimize" or "maximize" the metric.
        n_trials: the study's total of finished trials (complete, pruned, or failed by their own error); a rerun
            of the same command tops the study up to it. None: until ``timeout``.
        timeout: seconds after which this command starts no new trial (trials running then finish).
        fit_args: fixed fit keys for every trial, applied after the base configs (``{trainer.max_epochs: 20}``).
        enqueue: trials to run first, each {fit key: value} within the space (e.g. the base config's values).
        sampler: {"name": "tpe" | "random", "seed": int, ...: the sampler's keyword arguments}.
        pruner: {"name": "median" | "successive_halving" | "hyperband" | "none", ...: its keyword arguments}. Its
            steps are validations (0, 1, ...), not epochs: ``n_warmup_steps``, ``min_resource`` and the like count
            validations, two per epoch with ``trainer.val_check_interval: 0.5``.
        storage: a SQLAlchemy URL (``postgresql+psycopg2://user:pw@host/db`` to share a study between machines);
            default ``sqlite:///<study_dir>/study.db``.
        study_dir: where trials, tables, plots and the best config go; default ``runs/tune/<study_name>``.
        workers: trials this command runs at once (one GPU each when there are GPUs).
        heartbeat_interval: seconds between a running trial's heartbeats in the storage.
        grace_period: seconds without a heartbeat after which a trial counts as abandoned (its worker died): it is
            failed and, up to ``max_retry`` times, run again with the same parameters.
        max_retry: how often an abandoned trial is retried.
    """

    study_name: str
    fit_config: str | list[str]
    space: dict[str, Any]
    metric: str = "val/loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    n_trials: int | None = None
    timeout: float | None = None
    fit_args: dict[str, Any] = field(default_factory=dict)
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    storage: str | None = None
    study_dir: str | None = None
    workers: int = 1
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 1

    def check(self) -> None:
        """Raise ValueError for values no study can run with (before anything is built)."""
        if not self.metric.startswith("val/"):
            raise ValueError(f"metric {self.metric!r}: tune on a validation metric (val/...); the test split stays "
                             "untouched until the final refit")  # fmt: skip
        if self.n_trials is None and self.timeout is None:
            raise ValueError("give n_trials (the study's total) or timeout (seconds), or both")
        if self.n_trials is not None and self.n_trials < 0:
            raise ValueError(f"n_trials must be >= 0, got {self.n_trials}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"need heartbeat_interval >= 1 and grace_period > heartbeat_interval (optuna advises "
                             f"2x or more), got {self.heartbeat_interval} and {self.grace_period}")  # fmt: skip
        for path in self.fit_configs:
            if not path.is_file():
                raise ValueError(f"fit_config {str(path)!r} not found (paths are relative to the working directory "
                                 f"{os.getcwd()})")  # fmt: skip
        build_pruner(self.pruner)
        build_sampler(self.sampler, 0)

    @property
    def fit_configs(self) -> list[Path]:
        return [Path(p) for p in ([self.fit_config] if isinstance(self.fit_config, str) else self.fit_config)]

    @property
    def directory(self) -> Path:
        return Path(self.study_dir) if self.study_dir else Path("runs") / "tune" / self.study_name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.directory / 'study.db').resolve()}"


def build_sampler(spec: dict[str, Any], seed_offset: int) -> optuna.samplers.BaseSampler:
    """The sampler named by ``spec["name"]``; its seed is shifted by ``seed_offset``, so parallel workers and a rerun
    do not replay the random draws of the first worker (TPE's start-up trials are random).

    Raises:
        ValueError: an unknown name or keyword argument.
    """
    seed = spec.get("seed")
    return _build("sampler", SAMPLERS, spec, "tpe", **({} if seed is None else {"seed": int(seed) + seed_offset}))


def build_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner named by ``spec["name"]`` with the rest of ``spec`` as its keyword arguments.

    Raises:
        ValueError: an unknown name or keyword argument.
    """
    return _build("pruner", PRUNERS, spec, "median")


def _build(kind: str, registry: dict[str, Any], spec: dict[str, Any], default: str, **overrides: Any) -> Any:
    kwargs = {**spec, **overrides}
    name = kwargs.pop("name", default)
    if name not in registry:
        raise ValueError(f"{kind} {name!r}: choose one of {sorted(registry)}")
    try:
        return registry[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"{kind} {name!r}: {err}") from None
