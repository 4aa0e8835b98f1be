"""The search space of a study: flat dotted fit keys -> distributions, sampled into fit command-line values.

A study file writes one entry per fit key, in optuna's own terms::

    model.backbone_layers: {type: int, low: 1, high: 3}
    model.backbone_units:  {type: int, low: 32, high: 256, log: true}
    model.lr:              {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.backbone_dropout: {type: float, low: 0.0, high: 0.3, step: 0.05}
    model.mode:            {type: categorical, choices: [default, no_gate, pure]}
    model.wiring:          {type: categorical, choices: [null, auto_ncp]}    # null: the dense CfC
    model.head_hidden_sizes: {type: list, min_length: 0, max_length: 2, item: {type: int, low: 32, high: 256}}

A ``list`` key is tuned as a depth plus widths: optuna samples ``<key>.length`` and then ``<key>[0]``,
``<key>[1]``, ... (a conditional space, which the TPE sampler handles), and the fit command gets the list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna

KINDS = ("int", "float", "categorical", "list")
_FIELDS = {
    "int": {"type", "low", "high", "log", "step"},
    "float": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
    "list": {"type", "min_length", "max_length", "item"},
}


@dataclass(frozen=True)
class Param:
    """One tuned fit key and its distribution (see the module docstring for the fields)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    item: Param | None = None
    min_length: int = 0
    max_length: int = 0

    def suggest(self, trial: optuna.Trial, name: str | None = None) -> Any:
        """The value of this key for ``trial`` (``name``: the optuna parameter name, default the key)."""
        name = name or self.key
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        length = trial.suggest_int(f"{name}.length", self.min_length, self.max_length)
        return [self.item.suggest(trial, f"{name}[{i}]") for i in range(length)]

    def to_params(self, value: Any, name: str | None = None) -> dict[str, Any]:
        """The optuna parameters that give ``value`` (to enqueue a trial written in fit values)."""
        name = name or self.key
        if self.kind != "list":
            return {name: value}
        if not isinstance(value, list | tuple):
            raise ValueError(f"enqueue: {self.key!r} is a list key; give a list, got {value!r}")
        params: dict[str, Any] = {f"{name}.length": len(value)}
        for i, v in enumerate(value):
            params.update(self.item.to_params(v, f"{name}[{i}]"))
        return params

    def extremes(self) -> list[Any]:
        """Values that span the space: the bounds, every choice, the shortest and longest list."""
        if self.kind in ("int", "float"):
            cast = int if self.kind == "int" else float
            return [cast(self.low), cast(self.high)]
        if self.kind == "categorical":
            return list(self.choices)
        lo, hi = self.item.extremes()[0], self.item.extremes()[-1]
        return [[lo] * self.min_length, [hi] * self.max_length]


def parse_space(raw: dict[str, Any]) -> list[Param]:
    """Read the ``space:`` mapping of a study file.

    Raises:
        ValueError: an empty space, an unknown ``type`` or field, missing or inconsistent bounds; the message names
            the key and the field.
    """
    if not isinstance(raw, dict) or not raw:
        raise ValueError("the study's space is empty: give at least one fit key, e.g. model.lr: {type: float, ...}")
    return [_parse_param(str(key), spec) for key, spec in raw.items()]


def _parse_param(key: str, spec: Any) -> Param:
    where = f"space: {key}"
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise ValueError(f"{where}: give a mapping with type one of {list(KINDS)}, got {spec!r}")
    kind = spec["type"]
    unknown = set(spec) - _FIELDS[kind]
    if unknown:
        allowed = sorted(_FIELDS[kind])
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)} for type {kind}; allowed: {allowed}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: a categorical needs a non-empty list of choices, got {choices!r}")
        return Param(key, kind, choices=tuple(choices))
    if kind == "list":
        lo, hi = spec.get("min_length", 0), spec.get("max_length")
        if not isinstance(lo, int) or not isinstance(hi, int) or not 0 <= lo <= hi:
            raise ValueError(f"{where}: a list needs integers 0 <= min_length <= max_length, got {lo!r}, {hi!r}")
        item = _parse_param(f"{key}[i]", spec.get("item"))
        if item.kind == "list":
            raise ValueError(f"{where}: a list of lists is not supported")
        return Param(key, kind, item=item, min_length=lo, max_length=hi)
    low, high, log, step = spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step")
    number = int if kind == "int" else (int, float)
    if not isinstance(low, number) or not isinstance(high, number) or isinstance(low, bool) or low > high:
        raise ValueError(f"{where}: needs {kind} bounds low <= high, got low={low!r}, high={high!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: a log scale needs low > 0, got {low!r}")
    if log and step is not None:
        raise ValueError(f"{where}: give either log: true or a step, not both (optuna samples one or the other)")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def suggest_all(space: list[Param], trial: optuna.Trial) -> dict[str, Any]:
    """Sample every key of ``space`` for ``trial``: {fit key: value}."""
    return {p.key: p.suggest(trial) for p in space}


def enqueue_params(space: list[Param], values: dict[str, Any]) -> dict[str, Any]:
    """Optuna parameters of a trial given as {fit key: value} (keys outside the space are an error)."""
    by_key = {p.key: p for p in space}
    unknown = set(values) - set(by_key)
    if unknown:
        raise ValueError(f"enqueue: {sorted(unknown)} not in the study's space {sorted(by_key)}")
    params: dict[str, Any] = {}
    for key, value in values.items():
        params.update(by_key[key].to_params(value))
    return params


def cli_args(values: dict[str, Any]) -> list[str]:
    """``--key=value`` arguments of the fit command (JSON for numbers, lists and booleans; strings as they are)."""
    return [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()]
