"""``SeriesDataModule``: any table of (irregular) multivariate series into time-stamped ``Batch``es.

Pipeline (built once, on ``setup`` or on the first size property the CLI links): read (``_read``, the hook the
built-in sources override) -> canonical wide table (``io``) -> split plan -> scaler fitted on the fit range
(``scaling``) -> tensors and windows per split (``build``) -> ``WindowDataset``s whose ``collate`` pads batches.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch
from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader

from cfc_forecast.errors import UserError
from datamodules.build import SPLITS, Built, Roles, ScaleFit, build
from datamodules.categories import FIRST, MAX_CATEGORIES
from datamodules.dataset import WindowDataset
from datamodules.io import SERIES, TIME, Duplicates, Layout, Table, canonical_table, read_files, require_columns
from datamodules.scaling import ScaleBy, ScaleMethod
from datamodules.sharding import EvalShardSampler
from datamodules.splits import seeded_series_split, split_plan
from datamodules.stamps import numeric_time_hint, user_time
from datamodules.timing import CalendarFeature, TimeUnit, check_unit, median_steps
from datamodules.windows import window_spec

log = logging.getLogger(__name__)
Split = Literal["train", "val", "test"]


class SeriesDataModule(L.LightningDataModule):
    """Irregular multivariate series from a polars frame or CSV / Parquet files, as padded time-stamped batches.

    Args:
        path: a CSV or Parquet file, a folder of them, a glob, or a list of these (or use ``from_frame``).
        layout: "wide" (a column per variable, nulls for missing) or "long" (``variable_column``, ``value_column``).
        id_column: series id column; None for a single series.
        time_column: date-times (any unit or time zone) or numbers in ``time_unit``.
        variable_column: long layout: the variable names. value_column: long layout: the values.
        targets: the C variables to forecast (default: every variable that is not static or known-future).
        inputs: the F input variables (default: every variable that is not static or known-future).
        static: S per-series constant covariates. known_future: variables known ahead (given at query times).
        calendar: calendar features of the time stamps, added to the known-future covariates.
        categorical: columns read as labels, not numbers ("Clouds", "Rain"; integers are labels too), each also
            among ``inputs``, ``static`` or ``known_future`` (never a target); the model learns an embedding per
            column (``datamodules.categories``: vocabulary from the training split, sorted; 0 = unknown, 1 =
            missing). Wide layout only. Columns left out of ``inputs`` default to past inputs, never to targets.
        max_categories: the most distinct labels a categorical column may have in training; more is an error
            naming the column (never truncated).
        time_unit: unit of all times and durations in a batch; for numeric time columns, the numbers' unit.
        time_format: format of text time stamps, e.g. "%d/%m/%Y %H:%M" (default: the one format that reads them
            all; refused when several read them differently). Saved in the checkpoint for every later reading.
        time_zone: the IANA time zone of the data, e.g. "Europe/Berlin": zone-aware stamps are converted to it (a
            CSV keeps UTC offsets but no zone name: its stamps are read as UTC), naive ones read as its wall-clock
            times (a local time it skips or repeats is refused). Calendar days, calendar features and forecast
            stamps follow it; saved in the checkpoint. Default: the stamps' own zone (naive: none).
        duplicates: several rows of one series at one time stamp: "error", or aggregate by mean/first/last.
        lookback: count windows: L input rows. horizon: count windows: K target rows. stride: rows between starts.
        observe: duration W before the origin ("2d", "6h" or a number in time_unit); None in fixed mode = all.
        forecast: duration D after the origin (targets in [o, o + D]). every: spacing S of origins (default D).
        origin: one window per series at this time stamp or number.
        origin_anchor: duration windows: origins at this local wall-clock time in the data's zone, "12:00" (daily)
            or "Mon 06:00" (weekly), from the first at or after a series' first time + observe, every ``every``
            (whole days or weeks; default 1d / 1w), DST-correct; saved in the checkpoint, so ``predict`` and the
            batch job forecast from each series' last anchor (``datamodules.stamps.anchor_origins``).
        step_targets: also give per-step targets (B, T, C) at the input steps (sequence-to-sequence tasks).
        split_by: "time" (cut-offs or fractions of the time range) or "series" (seeded fractions of the series).
        split_times: 2 or 3 cut-offs: train < c1 <= val < c2 <= test (< c3).
        split_fractions: train / val / test fractions of the time range or of the series.
        seed: seed of the series split.
        scaling: per variable "standard" (ddof 0), "minmax" or "none". scale_by: "global" or per "series".
        scale_fit: part the scaler is fitted on.
        predict_queries: query times after the end of each series (time_unit) for forecasts from a checkpoint
            (``cfc_forecast.forecast.forecast_rows``); saved in the checkpoint.
        batch_size: windows per batch. num_workers: DataLoader workers. pin_memory: pin batches for a GPU.
    """

    first_dt_from_zero: bool = False  # Walker2d: the first row's dt counts from time 0, as the paper's data do

    def __init__(
        self,
        path: str | list[str] | None = None,
        *,
        layout: Layout = "wide",
        id_column: str | None = None,
        time_column: str = "time",
        variable_column: str = "variable",
        value_column: str = "value",
        targets: list[str] | None = None,
        inputs: list[str] | None = None,
        static: list[str] | None = None,
        known_future: list[str] | None = None,
        calendar: list[CalendarFeature] | None = None,
        categorical: list[str] | None = None,
        max_categories: int = MAX_CATEGORIES,
        time_unit: TimeUnit = "h",
        time_format: str | None = None,
        time_zone: str | None = None,
        duplicates: Duplicates = "error",
        lookback: int | None = None,
        horizon: int | None = None,
        stride: int = 1,
        observe: str | float | None = None,
        forecast: str | float | None = None,
        every: str | float | None = None,
        origin: str | float | None = None,
        origin_anchor: str | None = None,
        step_targets: bool = False,
        split_by: Literal["time", "series"] = "time",
        split_times: list[str | float] | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        scaling: ScaleMethod = "standard",
        scale_by: ScaleBy = "global",
        scale_fit: ScaleFit = "train",
        predict_queries: list[float] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        # the general module's own settings; a built-in source's hparams hold that source's arguments instead
        self.cfg = AttributeDict({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        super().__init__()
        if type(self) is SeriesDataModule:  # a built-in source saves its own arguments (its CLI) instead
            self.save_hyperparameters()
        check_unit(time_unit)
        # a fixed origin may be a time stamp: it is resolved against the data's time column when built
        fixed = None if origin is None else math.nan
        try:
            self.spec = window_spec(
                time_unit, lookback, horizon, stride, observe, forecast, every, fixed, step_targets, origin_anchor
            )
        except ValueError as err:  # the window arguments: each message names them and what to give
            raise UserError(str(err)) from err
        fr = split_fractions
        if len(fr) != 3 or min(fr) < 0 or fr[0] <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise UserError(f"--data.split_fractions must be 3 numbers >= 0 summing to 1 with train > 0, got {fr}")
        if split_times is not None and len(split_times) not in (2, 3):
            raise UserError(
                f"--data.split_times needs 2 or 3 cut-offs (the end of train, of val[, of test]), got {split_times}"
            )
        if scale_by == "series" and split_by == "series":
            raise UserError("scale_by='series' needs split_by='time': val/test series have no training part")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if max_categories < 1:
            raise UserError(f"--data.max_categories must be >= 1, got {max_categories}")
        self._frame: pl.DataFrame | None = None
        self._built: Built | None = None
        self._table: Table | None = None

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, **kwargs: Any) -> SeriesDataModule:
        """Build from an in-memory polars frame (the Python API); ``kwargs`` are the constructor's."""
        dm = cls(**kwargs)
        dm._frame = frame
        return dm

    # -- hooks for the built-in sources ------------------------------------------------------------------
    def _read(self) -> pl.DataFrame:
        """The raw frame in the declared layout."""
        if self._frame is not None:
            return self._frame
        if self.cfg.path is None:
            raise UserError("give a path (file, folder or glob) or build with SeriesDataModule.from_frame(frame)")
        return read_files(self.cfg.path, self.cfg.time_column, text_columns=list(self.cfg.categorical or []))

    def _source(self) -> str:
        return "frame" if self._frame is not None else str(self.cfg.path)

    def _assign_series(self, ids: pl.Series) -> np.ndarray:
        """(n_series,) split codes 0 train / 1 val / 2 test; the built-in sources may override it."""
        return seeded_series_split(len(ids), self.cfg.split_fractions, self.cfg.seed)

    # -- building --------------------------------------------------------------------------------------------
    def _roles(self, frame: pl.DataFrame) -> Roles:
        h = self.cfg
        static, future = list(h.static or []), list(h.known_future or [])
        if h.layout == "long":
            if h.variable_column not in frame.columns:
                raise UserError(f"{self._source()}: long-layout column {h.variable_column!r} not found")
            names = sorted(frame[h.variable_column].drop_nulls().cast(pl.String).unique().to_list())
        else:
            names = [c for c in frame.columns if c not in (h.id_column, h.time_column)]
        if h.layout == "wide":  # a name that is no column: say which option gave it
            for option in ("targets", "inputs", "static", "known_future"):
                require_columns(frame, list(h[option] or []), self._source(), f"{option} (--data.{option})")
        cat = list(dict.fromkeys(h.get("categorical") or []))
        default = [c for c in names if c not in static and c not in future]
        targets = list(h.targets or [c for c in default if c not in cat])
        roles = Roles(list(h.inputs or default), targets, static, future, list(h.calendar or []))
        overlap = set(static) & set(roles.inputs + roles.targets + future)
        if overlap or not roles.inputs or not roles.targets:
            raise UserError(
                f"static {sorted(overlap)} may not also be inputs, targets or known-future; "
                f"inputs {roles.inputs} and targets {roles.targets} must not be empty"
            )
        return self._categorical_roles(roles, cat, names)

    def _categorical_roles(self, roles: Roles, cat: list[str], names: list[str]) -> Roles:
        """Move the categorical columns out of the numeric roles; each must be a covariate, none a target."""
        if not cat:
            return roles
        if self.cfg.layout == "long":
            raise UserError(f"--data.categorical {cat}: categorical columns need the wide layout (a long layout's "
                            "value column holds numbers); give them as columns of their own")  # fmt: skip
        require_columns(pl.DataFrame(schema=names), cat, self._source(), "categorical (--data.categorical)")
        if bad := [c for c in cat if c in roles.targets]:
            raise UserError(f"--data.categorical {bad}: a target is never categorical (targets are forecast as "
                            "numbers); remove it from --data.targets or from --data.categorical")  # fmt: skip
        covariates = set(roles.inputs + roles.static + roles.known_future)
        if bad := [c for c in cat if c not in covariates]:
            raise UserError(f"--data.categorical {bad}: each categorical column must also be an input, static or "
                            "known_future covariate; add it to --data.inputs, --data.static or --data.known_future")
        numeric = lambda cols: [c for c in cols if c not in cat]  # noqa: E731
        categorical = lambda cols: [c for c in cols if c in cat]  # noqa: E731
        roles = Roles(numeric(roles.inputs), roles.targets, numeric(roles.static), numeric(roles.known_future),
                      roles.calendar, categorical(roles.inputs), categorical(roles.static),
                      categorical(roles.known_future))  # fmt: skip
        if not roles.inputs:
            raise UserError(f"the inputs are all categorical ({roles.cat_inputs}); the model needs at least one "
                            "numeric input (the targets are inputs by default)")  # fmt: skip
        return roles

    def _ensure_built(self) -> Built:
        if self._built is not None:
            return self._built
        try:
            return self._build()
        except UserError:
            raise
        except ValueError as err:  # reading and checking the data: each names the source, the column and the fix
            raise UserError(str(err)) from err

    def _build(self) -> Built:
        h = self.cfg
        frame = self._read()
        roles = self._roles(frame)
        table = canonical_table(
            frame,
            source=self._source(),
            layout=h.layout,
            id_column=h.id_column,
            time_column=h.time_column,
            variables=roles.variables,
            time_unit=h.time_unit,
            duplicates=h.duplicates,
            variable_column=h.variable_column,
            value_column=h.value_column,
            time_format=h.time_format,
            time_zone=h.get("time_zone"),
            categorical=roles.categorical,
        )
        if self.spec.mode == "fixed":
            self.spec.origin = user_time(h.origin, table.codec, "origin")
        self._table, self._roles_used = table, roles
        hint = "" if table.codec.is_datetime else self._numeric_time_hint(table)
        try:
            self._built = build(
                table,
                roles,
                self.spec,
                split_plan(table, self.cfg, self._assign_series),
                h.scaling,
                h.scale_by,
                h.step_targets,
                self.first_dt_from_zero,
                h.get("max_categories", MAX_CATEGORIES),
            )
        except ValueError as err:
            if hint:  # times in another unit than declared are the likelier cause: name the fix
                raise UserError(f"{err}; {hint}") from None
            raise
        # computed here, not when a checkpoint is saved: polars deadlocks in a process forked from one that used it
        # (DDP's fork and notebook strategies), and the checkpoint is saved in those processes
        self._median_step = float(np.median(median_steps(self._built.offsets, self._built.tensors.times.numpy())))
        sizes = {k: len(v) for k, v in self._built.windows.items()}
        log.info(
            "%s: %d series, windows %s, skipped %s", self._source(), len(table.series_ids), sizes, self._built.counts
        )
        return self._built

    def _numeric_time_hint(self, table: Table) -> str:
        series = table.frame[SERIES].to_numpy()
        offsets = np.searchsorted(series, np.arange(len(table.series_ids) + 1))
        return numeric_time_hint(table.frame[TIME].to_numpy(), offsets, self.cfg.time_unit, self._source())

    def setup(self, stage: str | None = None) -> None:
        self._ensure_built()

    # -- what the model and the forecast writer read ----------------------------------------------------
    @property
    def n_inputs(self) -> int:
        """F: input variables per step (values only; the model adds masks itself)."""
        return len(self._ensure_built().tensors.input_cols)

    @property
    def n_targets(self) -> int:
        """C: target variables."""
        return len(self._ensure_built().tensors.target_cols)

    @property
    def lookback(self) -> int | None:
        """L for count windows (a fixed number of input rows); None for duration windows."""
        return self.spec.lookback if self.spec.mode == "count" else None

    @property
    def horizon(self) -> int | None:
        """K for count windows (a regular horizon); None when query times vary (continuous-time queries)."""
        return self.spec.horizon if self.spec.mode == "count" else None

    @property
    def n_static(self) -> int:
        """S: numeric static covariates per series."""
        cat = self.cfg.get("categorical") or []
        return len([c for c in self.cfg.static or [] if c not in cat])

    @property
    def n_future(self) -> int:
        """Fk: numeric known-future covariates per query (variables, then calendar features)."""
        cat = self.cfg.get("categorical") or []
        return len([c for c in self.cfg.known_future or [] if c not in cat]) + len(self.cfg.calendar or [])

    @property
    def categorical_sizes(self) -> dict[str, list[int]] | None:
        """Codes per categorical column (its training labels + unknown + missing), by role: ``inputs``,
        ``static``, ``known_future`` (the model's embedding tables); None without categorical columns."""
        if not self.cfg.get("categorical"):
            return None
        b, r = self._ensure_built(), self._roles_used
        size = lambda cols: [len(b.vocabularies[c]) + FIRST for c in cols]  # noqa: E731
        return {"inputs": size(r.cat_inputs), "static": size(r.cat_static), "known_future": size(r.cat_future)}

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        """Each categorical column's training labels, sorted (code ``2 + i`` is label ``i``)."""
        return dict(self._ensure_built().vocabularies)

    @property
    def time_unit(self) -> str:
        """Unit of every time in a batch."""
        return self.cfg.time_unit

    @property
    def input_names(self) -> list[str]:
        self._ensure_built()
        return self._roles_used.inputs

    @property
    def target_names(self) -> list[str]:
        self._ensure_built()
        return self._roles_used.targets

    @property
    def target_input_index(self) -> list[int]:
        """For each target, the input column holding the same quantity (-1 if none): what a naive
        last-value forecast repeats."""
        return [self.input_names.index(c) if c in self.input_names else -1 for c in self.target_names]

    @property
    def series_ids(self) -> list[Any]:
        """Original series ids; ``Batch.series`` indexes this list."""
        self._ensure_built()
        return self._table.series_ids.to_list()

    @property
    def counts(self) -> dict[str, int]:
        """Skipped rows, windows and series by reason (each was also logged)."""
        return dict(self._ensure_built().counts)

    def decode_times(self, times: np.ndarray | torch.Tensor) -> pl.Series:
        """Absolute float times (e.g. ``batch.origin + batch.query_t``) as the data's own time stamps."""
        self._ensure_built()
        return self._table.codec.decode(np.asarray(times, dtype=np.float64))

    def state_dict(self) -> dict[str, Any]:
        """Plain values (safe for ``weights_only`` checkpoints): names, time unit and target scaling."""
        b = self._ensure_built()
        return {
            "inputs": self.input_names,
            "targets": self.target_names,
            "time_unit": self.time_unit,
            "target_loc": b.tensors.target_loc.tolist(),
            "target_scale": b.tensors.target_scale.tolist(),
            "preprocessing": self._preprocessing(b),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check a checkpoint's categorical vocabularies against the ones built here (Lightning calls this when a
        fit resumes, or validate / test / predict restore a checkpoint): the same codes must mean the same labels.

        Raises:
            UserError: a categorical column whose training labels differ from the checkpoint's.
        """
        saved = ((state_dict.get("preprocessing") or {}).get("categorical") or {}).get("vocabularies") or {}
        built = self.vocabularies if self.cfg.get("categorical") or saved else {}
        for c in sorted(set(saved) | set(built)):
            if list(saved.get(c, [])) != list(built.get(c, [])):
                raise UserError(
                    f"categorical column {c!r}: the checkpoint's training labels {list(saved.get(c, []))[:5]} "
                    f"differ from this data's {list(built.get(c, []))[:5]}; use the data and --data.categorical the "
                    "model was trained with"
                )

    def _preprocessing(self, b: Built) -> dict[str, Any]:
        """What a batch forecasting job (``cfc_forecast.forecast``) needs to prepare new data exactly as these
        batches were prepared, from the checkpoint alone: columns and layout, the fitted scaler, the time codec,
        the windowing and the prediction query rule."""
        h, spec, codec, scaler = self.cfg, self.spec, self._table.codec, b.scaler
        r = self._roles_used
        per_series = scaler.loc.shape[0] > 1
        return {
            "version": 1,
            "layout": h.layout,
            "id_column": h.id_column,
            "time_column": h.time_column,
            "variable_column": h.variable_column,
            "value_column": h.value_column,
            "duplicates": h.duplicates,
            "static": list(r.static),
            "known_future": list(r.known_future),
            "calendar": list(h.calendar or []),
            "time_is_datetime": codec.is_datetime,
            "time_zone": codec.time_zone,
            "window": {"mode": spec.mode, "lookback": spec.lookback, "horizon": spec.horizon,
                       "observe": spec.observe, "forecast": spec.forecast,
                       "every_days": spec.every_days, "anchor": spec.anchor},  # fmt: skip
            # absent from older checkpoints: their jobs let polars infer the format per chunk, as then
            "time_format": codec.format,
            "predict_queries": None if h.predict_queries is None else [float(q) for q in h.predict_queries],
            "first_dt_from_zero": self.first_dt_from_zero,
            # the typical spacing of the training series: a job warns when new data are spaced very differently
            "median_step": self._median_step,
            "scaler": {
                "names": list(scaler.names),
                "loc": scaler.loc.tolist(),
                "scale": scaler.scale.tolist(),
                "series_ids": self._table.series_ids.to_list() if per_series else None,
            },
            # numeric static covariates' scaler (absent from older checkpoints, which could not forecast them)
            "static_scaler": None if b.static_scaler is None else {
                "names": list(b.static_scaler.names), "loc": b.static_scaler.loc.tolist(),
                "scale": b.static_scaler.scale.tolist()},  # fmt: skip
            # plain lists of strings (safe for weights_only loads); absent from older checkpoints: none
            "categorical": {"inputs": r.cat_inputs, "static": r.cat_static, "known_future": r.cat_future,
                            "vocabularies": {c: list(v) for c, v in b.vocabularies.items()},
                            "missing_in_training": list(b.missing_in_training)},  # fmt: skip
        }

    # -- datasets and loaders ---------------------------------------------------------------------------
    def dataset(self, split: Literal["train", "val", "test", "predict"]) -> WindowDataset:
        """The windows of one split; ``predict``: the test windows without targets (what ``Trainer.predict`` and
        ``cfc-forecast predict --predict_windows=test`` forecast). Forecasts from the end of new data come from a
        checkpoint alone: ``cfc_forecast.forecast.forecast_rows``."""
        b = self._ensure_built()
        if split == "predict":
            return WindowDataset(b.tensors, b.windows["test"], with_targets=False)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {[*SPLITS, 'predict']}, got {split!r}")
        return WindowDataset(b.tensors, b.windows[split])

    def _loader(self, split: Literal["train", "val", "test", "predict"]) -> DataLoader:
        ds, h = self.dataset(split), self.cfg
        sampler = None
        shards = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if split in ("val", "test") and shards and shards["num_replicas"] > 1:
            # each window on one rank, none repeated: the metrics reduce to the single-process values exactly
            sampler = EvalShardSampler(ds, shards["num_replicas"], shards["rank"])
        return DataLoader(
            ds,
            batch_size=h.batch_size,
            shuffle=split == "train",
            sampler=sampler,
            collate_fn=ds.collate,
            num_workers=h.num_workers,
            pin_memory=h.pin_memory,
            persistent_workers=h.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


__all__ = ["SeriesDataModule", "Split"]
