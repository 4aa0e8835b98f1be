"""What a checkpoint says about the data its model was trained on, and the model itself.

``cfc-forecast fit`` stores the model's hyperparameters (``hyper_parameters``) and the DataModule's state
(``SeriesDataModule.state_dict``, under the DataModule's class name) in every checkpoint; the ``preprocessing``
part of that state holds the columns and layout, the fitted scaler, the time codec, the windowing and the
prediction query rule. A forecasting job rebuilds the same preprocessing from these alone: no config, no data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datamodules.windows import WindowSpec


class JobError(ValueError):
    """A problem that stops the job before (or instead of) forecasting: wrong schema, bad checkpoint or arguments,
    an output folder holding another job. The message says what to do; the command exits with status 2."""


@dataclass
class Trained:
    """The trained model's data contract, read from a checkpoint.

    Attributes:
        inputs: the F input variables. targets: the C target variables. variables: every dynamic variable (the
            scaler's columns, in their order).
        time_unit: the unit of every time the model sees.
        layout, id_column, time_column, variable_column, value_column: how the training table was laid out.
        duplicates: "error" or the aggregation of duplicate time stamps used in training.
        calendar: calendar features the head reads at the query times.
        time_is_datetime: whether the time column held date-times (else numbers in ``time_unit``).
        spec: the windowing (count: ``lookback`` rows; duration / fixed: ``observe`` time units, None = all).
        predict_queries: query times after the origin used by ``predict`` (None: each series' median spacing).
        first_dt_from_zero: whether a series' first dt counts from time 0.
        median_step: the training series' typical spacing (time units), for the time-unit check.
        loc, scale: (G, V) scaler statistics; G = 1 (global) or one row per training series.
        scaler_ids: the training series of the per-series rows (None when global).
        head: the model's head ("direct", "continuous" or "step").
        quantiles: the quantile levels of the model's outputs (a column ``q<level>`` each), or None: its own
            quantiles, or when calibrated (``cfc-forecast calibrate``) its conformal intervals' bounds among them.
        intervals: the calibrated central interval levels (e.g. [0.8, 0.9]), or None (not calibrated).
        time_format: the format the training data's text time stamps were read with (None: they were not text).
        time_format_saved: False for checkpoints older than ``time_format`` (their stamps are parsed as then).
        time_zone: the training data's time zone (None: naive or numeric); prediction input is read in it.
        static: numeric static covariates; ``static_loc`` / ``static_scale`` (S,) their training scaler.
        known_future: numeric known-future variables (among ``variables``), read at the query times.
        cat_inputs, cat_static, cat_future: categorical columns by role; ``vocabularies`` their training labels;
            ``missing_in_training`` those with an empty training value (None: not recorded, older checkpoint).
    """

    inputs: list[str]
    targets: list[str]
    variables: list[str]
    time_unit: str
    layout: str
    id_column: str | None
    time_column: str
    variable_column: str
    value_column: str
    duplicates: str
    calendar: list[str]
    time_is_datetime: bool
    spec: WindowSpec
    predict_queries: list[float] | None
    first_dt_from_zero: bool
    median_step: float
    loc: np.ndarray
    scale: np.ndarray
    scaler_ids: list[Any] | None
    head: str
    quantiles: list[float] | None
    time_format: str | None = None
    time_format_saved: bool = False
    time_zone: str | None = None
    static: list[str] = field(default_factory=list)
    static_loc: np.ndarray | None = None
    static_scale: np.ndarray | None = None
    known_future: list[str] = field(default_factory=list)
    cat_inputs: list[str] = field(default_factory=list)
    cat_static: list[str] = field(default_factory=list)
    cat_future: list[str] = field(default_factory=list)
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    # categorical columns with an empty value in training (their "missing" embedding was trained); None: a
    # checkpoint from before this was recorded
    missing_in_training: list[str] | None = None

    @property
    def categorical(self) -> list[str]:
        """Every categorical column once (past inputs, known-future, static)."""
        return list(dict.fromkeys(self.cat_inputs + self.cat_future + self.cat_static))

    @property
    def numeric(self) -> list[str]:
        """Every numeric column: the dynamic variables, then the static covariates."""
        return list(dict.fromkeys(self.variables + self.static))

    @property
    def has_future(self) -> bool:
        """Whether the model reads known-future variables (given on rows after each series' history)."""
        return bool(self.known_future or self.cat_future)
    intervals: list[float] | None = None

    @property
    def columns(self) -> list[str]:
        """The input columns a job reads (id, time, then the variables or the long layout's two columns)."""
        keys = [c for c in (self.id_column, self.time_column) if c is not None]
        values = [self.variable_column, self.value_column] if self.layout == "long" else self.numeric
        return keys + values + self.categorical


def _data_state(ckpt: dict[str, Any], label: str) -> dict[str, Any]:
    for key, value in ckpt.items():
        if isinstance(value, dict) and "targets" in value and "target_loc" in value:
            if "preprocessing" not in value:
                raise JobError(
                    f"{label}: the checkpoint stores no preprocessing state (saved by an older cfc-forecast); "
                    "refit the model with this version (cfc-forecast fit) to forecast with it"
                )
            return value["preprocessing"] | {"inputs": value["inputs"], "targets": value["targets"], "dm": key}
    raise JobError(f"{label}: no DataModule state in the checkpoint; was it written by cfc-forecast fit?")


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], Trained]:
    """Load a checkpoint's contents (on the CPU) and its data contract.

    Raises:
        JobError: a missing or unreadable file, or a checkpoint :func:`contract` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise JobError(
            f"--ckpt_path {str(path)!r} is not a file; give a checkpoint such as runs/<run>/checkpoints/best.ckpt"
        )
    from cfc_forecast.checkpoints import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path)  # weights_only=True; a one-line reason for a file that is not a checkpoint
    except CheckpointError as err:
        raise JobError(str(err)) from None
    return ckpt, contract(ckpt, str(path))


def live_checkpoint(model: Any, datamodule: Any) -> dict[str, Any]:
    """What ``cfc-forecast fit`` would save for a model fitted in Python on ``datamodule``: its hyperparameters,
    its weights and the DataModule's fitted state (nothing is refitted: the DataModule was built when it was fitted).

    Raises:
        JobError: the model was built for other variables than the DataModule serves.
    """
    hp = dict(model.hparams)
    for key, names in (("input_names", datamodule.input_names), ("target_names", datamodule.target_names)):
        if hp.get(key) is not None and list(hp[key]) != list(names):
            raise JobError(
                f"the model was built for {key.split('_')[0]}s {list(hp[key])}, its DataModule serves "
                f"{list(names)}; give the DataModule the model was fitted on"
            )
    if (hp.get("n_inputs"), hp.get("n_targets")) != (len(datamodule.input_names), len(datamodule.target_names)):
        raise JobError(
            f"the model was built for {hp.get('n_inputs')} inputs and {hp.get('n_targets')} targets, its DataModule "
            f"serves {datamodule.input_names} and {datamodule.target_names}; give the DataModule it was fitted on"
        )
    state = {type(datamodule).__name__: datamodule.state_dict()}
    if getattr(model, "conformal", None) is not None:  # a model calibrated in Python (cfc_forecast.calibrate)
        state["conformal"] = model.conformal.to_dict()
    return {"hyper_parameters": hp, "state_dict": model.state_dict(), **state}


def contract(ckpt: dict[str, Any], label: str) -> Trained:
    """The data contract of a loaded checkpoint (``label`` names it in messages).

    Raises:
        JobError: no DataModule preprocessing state, or a model that cannot be fed from raw rows alone (static
            covariates of a checkpoint saved without their scaler, per-step targets).
    """
    state, hp = _data_state(ckpt, label), ckpt.get("hyper_parameters", {})
    static_scaler = state.get("static_scaler")
    if state["static"] and static_scaler is None:
        raise JobError(
            f"{label}: the model reads static covariates {state['static']}, and the checkpoint (saved by an older "
            "cfc-forecast) lacks their scaler; refit it with this version, or forecast the test windows of its "
            "training data with cfc-forecast predict --predict_windows=test"
        )
    cat = state.get("categorical") or {}
    from cfc_forecast.forecaster.module import _resolve_head

    head = _resolve_head(hp.get("head", "auto"), hp.get("horizon"))
    if head == "step":
        raise JobError(f"{label}: a per-step model (head 'step') forecasts no future; forecasting needs another head")
    w, scaler = state["window"], state["scaler"]
    return Trained(
        inputs=list(state["inputs"]),
        targets=list(state["targets"]),
        variables=list(scaler["names"]),
        time_unit=hp.get("time_unit", "step"),
        layout=state["layout"],
        id_column=state["id_column"],
        time_column=state["time_column"],
        variable_column=state["variable_column"],
        value_column=state["value_column"],
        duplicates=state["duplicates"],
        calendar=list(state["calendar"]),
        time_is_datetime=bool(state["time_is_datetime"]),
        spec=WindowSpec(
            w["mode"], lookback=w["lookback"], horizon=w["horizon"], observe=w["observe"], forecast=w["forecast"],
            every_days=w.get("every_days", 0), anchor=w.get("anchor"),
        ),  # fmt: skip
        predict_queries=state["predict_queries"],
        first_dt_from_zero=bool(state["first_dt_from_zero"]),
        median_step=float(state["median_step"]),
        loc=np.asarray(scaler["loc"], dtype=np.float64),
        scale=np.asarray(scaler["scale"], dtype=np.float64),
        scaler_ids=scaler["series_ids"],
        head=head,
        quantiles=_output_levels(ckpt, hp),
        intervals=list(ckpt["conformal"]["levels"]) if ckpt.get("conformal") else None,
        time_format=state.get("time_format"),
        time_format_saved="time_format" in state,
        time_zone=state.get("time_zone"),
        static=list(state["static"]),
        static_loc=None if static_scaler is None else np.asarray(static_scaler["loc"], dtype=np.float64),
        static_scale=None if static_scaler is None else np.asarray(static_scaler["scale"], dtype=np.float64),
        known_future=list(state["known_future"]),
        cat_inputs=list(cat.get("inputs", [])),
        cat_static=list(cat.get("static", [])),
        cat_future=list(cat.get("known_future", [])),
        vocabularies={c: [str(v) for v in labels] for c, labels in (cat.get("vocabularies") or {}).items()},
        missing_in_training=None if "missing_in_training" not in cat else [str(c) for c in cat["missing_in_training"]],
    )


def _output_levels(ckpt: dict[str, Any], hp: dict[str, Any]) -> list[float] | None:
    if ckpt.get("conformal"):
        from cfc_forecast.forecaster.conformal import Calibration

        return Calibration.from_dict(ckpt["conformal"]).output_levels
    return list(hp["quantiles"]) if hp.get("loss") == "pinball" else None


def model_from(ckpt: dict[str, Any]) -> Any:
    """The ``ForecastModule`` of a loaded checkpoint, in eval mode (what ``load_from_checkpoint`` does, without
    reading the file a second time; constructor arguments cannot be overridden, so nothing bypasses the contract).

    Raises:
        JobError: hyperparameters or weights of another cfc-forecast version.
    """
    from cfc_forecast.forecaster.module import ForecastModule

    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    try:
        model = ForecastModule(**hparams)
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as err:  # hyperparameters or weights of another cfc-forecast version
        raise JobError(f"the checkpoint does not fit this version's ForecastModule ({err}); refit the model") from None
    return model.eval()


def check_schema(schema: pl.Schema, trained: Trained, source: str) -> list[str]:
    """Check the input's columns and types against the training data's; return notes on ignored columns.

    Raises:
        JobError: a missing column (with the closest names), a time column of the wrong kind, or text values.
    """
    from datamodules.io import require_columns

    try:
        require_columns(pl.DataFrame(schema=schema), trained.columns, source, "columns the model was trained on")
    except ValueError as err:
        raise JobError(str(err)) from None
    t = schema[trained.time_column]
    is_number = t.is_numeric()
    if trained.time_is_datetime and is_number:
        raise JobError(
            f"{source}: time column {trained.time_column!r} holds numbers ({t}), the model was trained on "
            "date-times; give the time stamps as date-times"
        )
    if not trained.time_is_datetime and not is_number:
        raise JobError(
            f"{source}: time column {trained.time_column!r} holds {t}, the model was trained on numbers in "
            f"{trained.time_unit!r}; give the times as numbers in that unit"
        )
    ignored = [c for c in schema if c not in trained.columns]
    return [f"columns not used by the model (ignored): {ignored}"] if ignored else []
