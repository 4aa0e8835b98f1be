"""Where a backtest's forecast origins fall, and the DataModule of its config.

Origins walk forward to the end of the data: the last one is the data's last time stamp minus the forecast span
(so its targets are in the data), each earlier one ``step`` before the next. A ``step`` in whole days or weeks is
calendar days for zone-aware time stamps (the origins keep their wall-clock time across a DST change, as windows'
``every`` does, ``datamodules.stamps.calendar_offsets``); otherwise it is a fixed duration. Durations throughout:
irregular series are not resampled.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cfc_forecast import defaults
from cfc_forecast.errors import UserError
from cfc_forecast.forecast.trained import Trained
from datamodules import SeriesDataModule
from datamodules.io import TIME
from datamodules.splits import split_plan
from datamodules.stamps import anchor_origins, calendar_offsets, parse_anchor
from datamodules.timing import UNIT_SECONDS, TimeCodec, duration_days, parse_duration


def read_config(path: str | Path) -> dict[str, Any]:
    """A fit config file as a dict (``seed_everything``, ``data``, ``model``, ``trainer``).

    Raises:
        UserError: no such file, not YAML, or no ``data`` section.
    """
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file; give the fit config the model is trained with") from None
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data"), dict) or "class_path" not in cfg["data"]:
        raise UserError(f"--config {path}: needs a data section with a class_path (as configs/quickstart.yaml)")
    return cfg


def datamodule_from(cfg: dict[str, Any], **overrides: Any) -> SeriesDataModule:
    """The config's DataModule, with the defaults ``cfc-forecast fit`` gives a plain ``SeriesDataModule``.

    Args:
        cfg: a config from :func:`read_config`. overrides: init arguments that replace the config's.
    """
    data = cfg["data"]
    module, _, name = str(data["class_path"]).rpartition(".")
    cls = getattr(importlib.import_module(module or "datamodules"), name)
    init = dict(data.get("init_args") or {})
    if data["class_path"] in defaults.PLAIN_DATA:
        init.update(defaults.window_defaults(init))
        init.update(defaults.calendar_defaults(init))
    init.update(overrides)
    return cls(**init)


def forecast_span(trained: Trained, horizon: str | float | None) -> float:
    """The span after each origin that is forecast and scored, in the time unit: ``horizon`` when given, else the
    model's forecast span D (duration / fixed windows) or K x the training data's median spacing (count windows).

    Raises:
        UserError: a ``--horizon`` that is not a positive duration; no span can be told (a one-window model without a
            forecast span and no ``--horizon``).
    """
    if horizon is not None:
        text = str(horizon).strip()
        if text.startswith("-") or (isinstance(horizon, (int, float)) and horizon <= 0):
            raise UserError(_HORIZON.format(horizon=horizon))
        span = parse_duration(horizon, trained.time_unit, "--horizon")
        if span is None or span <= 0:
            raise UserError(_HORIZON.format(horizon=horizon))
        return span
    spec = trained.spec
    if spec.mode == "count":
        return spec.horizon * trained.median_step
    if spec.forecast is None:
        raise UserError("the model forecasts one window per series without a forecast span: give --horizon")
    return float(spec.forecast)


def origins(
    end: float, span: float, n_windows: int, step: str | float, codec: TimeCodec, anchor: str | None = None
) -> np.ndarray:
    """(N,) float origins, increasing: the last at ``end - span`` (with an ``anchor``, the last anchor time at or
    before it), each earlier one ``step`` before.

    Args:
        end: the data's last time (time unit). span: forecast span (time unit). n_windows: N >= 1.
        step: "1d", "6h" or a number in the time unit; days / weeks are calendar ones in a time zone.
        anchor: the model's ``origin_anchor`` ("12:00", "Mon 06:00"), or None.

    Raises:
        UserError: N < 1, or a step that does not parse or is not > 0.
    """
    if n_windows < 1:
        raise UserError(f"--n_windows must be >= 1, got {n_windows}")
    check_step(step)
    try:
        size = parse_duration(step, codec.unit, "--step")
    except ValueError as err:
        raise UserError(str(err)) from None
    if size is None or size <= 0:
        raise UserError(_STEP.format(step=step))
    last = end - span
    if anchor is not None:  # the anchor's last local time at or before end - span (within the 8 days before it)
        start = end - span - 8 * 86400 / UNIT_SECONDS[codec.unit]
        weekly = parse_anchor(anchor)[0] is not None
        found = anchor_origins(np.array([start]), np.array([last]), anchor, 7 if weekly else 1, codec)[1]
        if not len(found):
            raise UserError(f"no {anchor!r} before the data's end minus the forecast span")
        last = float(found.max())
    back = np.arange(n_windows - 1, -1, -1)  # steps before the last origin
    days = duration_days(step) if codec.time_zone is not None else 0
    if anchor is not None and not duration_days(step):  # origins on the anchor are whole days apart
        raise UserError(f"--step {step!r}: the model's origins are anchored at {anchor!r}; give whole days (or weeks "
                        "for a weekday anchor), e.g. --step 1d")  # fmt: skip
    if days:
        return last + calendar_offsets(np.array([last]), -days * back[None, :], codec)[0]
    return last - size * back


_HORIZON = (
    "--horizon must be a positive duration such as '6h' (the span after each origin that is forecast and "
    "scored), got {horizon!r}"
)
_STEP = "--step must be a positive duration such as '1d' or '6h' (the time between origins), got {step!r}"


def check_step(step: str | float) -> None:
    """Refuse a ``--step`` that is negative or zero.

    Raises:
        UserError: one line naming ``--step``: it must be a positive duration.
    """
    text = str(step).strip()
    if text.startswith("-") or (isinstance(step, (int, float)) and step <= 0) or text in ("0", "0.0"):
        raise UserError(_STEP.format(step=step))


def horizon_warnings(trained: Trained, horizon: str | float | None, span: float) -> list[str]:
    """A warning when ``--horizon`` (``span``, time units) reaches past the span the model was trained to forecast
    (:func:`forecast_span` without ``--horizon``): its forecasts there are extrapolations, or absent for a head that
    forecasts a fixed K steps. None when no ``--horizon`` was given or the model has no forecast span."""
    if horizon is None:
        return []
    try:
        trained_span = forecast_span(trained, None)
    except UserError:
        return []
    if span <= trained_span * (1 + 1e-9):
        return []
    unit = trained.time_unit
    return [
        f"--horizon {horizon} ({span:g} {unit}) is beyond the {trained_span:g} {unit} the model was trained to "
        "forecast: past that its forecasts are extrapolations (a fixed-step head forecasts its K steps only)"
    ]


def data_range(dm: SeriesDataModule) -> tuple[float, float]:
    """The first and last time of the DataModule's table (time unit)."""
    dm.setup()
    t = dm._table.frame[TIME]
    return float(t.min()), float(t.max())


def test_start(dm: SeriesDataModule) -> float:
    """Where the checkpoint's test split starts (the end of its train / validation range), time unit.

    Raises:
        UserError: a split by series (its training range is not a time), which a backtest without refit cannot use.
    """
    if dm.cfg.split_by != "time":
        raise UserError(
            "a backtest without refit needs a model split by time (--data.split_by time): with a split by series "
            "its training rows cover every time; use --refit every"
        )
    dm.setup()
    return float(split_plan(dm._table, dm.cfg, dm._assign_series).bounds[2][0])


def fold_cuts(first: float, origin: float, fractions: tuple[float, float, float]) -> tuple[float, float]:
    """A refit fold's ``split_times`` ``(c1, c2)``: train < c1 <= val < c2 = origin. The time before the origin
    is divided as the config's ``split_fractions`` divide train and validation (0.7 / 0.15: the last 17.6%
    is the fold's validation split)."""
    f_train, f_val = fractions[0], fractions[1]
    if f_val <= 0:
        raise UserError("a refit backtest picks each fold's best.ckpt on a validation split: split_fractions[1] > 0")
    return first + (origin - first) * f_train / (f_train + f_val), origin
