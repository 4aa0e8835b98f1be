"""From the canonical table to scaled tensors and the windows of each split (no Lightning here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import torch

from datamodules.categories import MAX_CATEGORIES, encode, vocabulary
from datamodules.dataset import SeriesTensors
from datamodules.io import SERIES, TIME, Table
from datamodules.scaling import ScaleBy, ScaleMethod, Scaler, fit_scaler
from datamodules.stamps import anchor_origins, calendar_offsets
from datamodules.timing import TimeCodec, calendar_features
from datamodules.windows import (
    Windows,
    WindowSpec,
    count_windows,
    duration_windows,
    fixed_windows,
    target_span,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ScaleFit = Literal["train", "train+val", "all"]


@dataclass
class Roles:
    """Which variables play which part; ``variables`` is their ordered union (the table's columns).

    ``inputs``, ``static`` and ``known_future`` are numeric; ``cat_inputs``, ``cat_static``, ``cat_future`` the
    categorical columns of those roles (``datamodules.categories``); targets are always numeric.
    """

    inputs: list[str]
    targets: list[str]
    static: list[str] = field(default_factory=list)
    known_future: list[str] = field(default_factory=list)
    calendar: list[str] = field(default_factory=list)
    cat_inputs: list[str] = field(default_factory=list)
    cat_static: list[str] = field(default_factory=list)
    cat_future: list[str] = field(default_factory=list)

    @property
    def categorical(self) -> list[str]:
        """Every categorical column once: past inputs, known-future, static."""
        return list(dict.fromkeys(self.cat_inputs + self.cat_future + self.cat_static))

    @property
    def cat_dynamic(self) -> list[str]:
        """The time-varying categorical columns (the columns of ``SeriesTensors.codes``)."""
        return list(dict.fromkeys(self.cat_inputs + self.cat_future))

    @property
    def variables(self) -> list[str]:
        return list(dict.fromkeys(self.inputs + self.targets + self.static + self.known_future + self.categorical))


@dataclass
class SplitPlan:
    """Where each split lies: time bounds ``[lo, hi)`` per split, or a split code (0, 1, 2) per series."""

    bounds: list[tuple[float, float]] | None = None
    codes: np.ndarray | None = None
    fit: ScaleFit = "train"

    def fit_rows(self, series: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(N,) bool: the rows the scaler is fitted on."""
        last = {"train": 0, "train+val": 1, "all": 2}[self.fit]
        if self.codes is not None:
            return self.codes[series] <= last
        return times < self.bounds[last][1]

    def members(self, w: Windows, span: tuple[np.ndarray, np.ndarray], split: int) -> np.ndarray:
        """(W,) bool: windows of ``split`` (all their targets inside it)."""
        if self.codes is not None:
            return self.codes[w.series] == split
        lo, hi = self.bounds[split]
        return (span[0] >= lo) & (span[1] < hi)


@dataclass
class Built:
    """Everything the DataModule serves, built once."""

    tensors: SeriesTensors
    windows: dict[str, Windows]
    scaler: Scaler
    offsets: np.ndarray
    counts: dict[str, int]
    static_scaler: Scaler | None = None
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    missing_in_training: list[str] = field(default_factory=list)  # categorical columns with an empty training value


def _note(counts: dict[str, int], reason: str, n: int) -> None:
    if n:
        counts[reason] = counts.get(reason, 0) + n
        log.warning("windows: skipped %d %s", n, reason)


def static_matrix(frame: pl.DataFrame, static: list[str], n_series: int, ids: pl.Series) -> np.ndarray:
    """(n_series, S) raw static covariates: each series' single value per column (NaN when never given)."""
    if not static:
        return np.zeros((n_series, 0))
    per = frame.group_by(SERIES).agg(
        *[pl.col(c).drop_nulls().first().alias(c) for c in static],
        *[pl.col(c).drop_nulls().n_unique().alias(f"{c}/n") for c in static],
    )
    for c in static:
        bad = per.filter(pl.col(f"{c}/n") > 1)
        if bad.height:
            examples = [ids[i] for i in bad[SERIES].head(3).to_list()]
            raise ValueError(f"static column {c!r} changes within series {examples}; it must be constant")
    out = np.full((n_series, len(static)), np.nan)
    out[per[SERIES].to_numpy().astype(np.int64)] = per.select(static).to_numpy().astype(np.float64)
    return out


def make_windows(
    series: np.ndarray, offsets: np.ndarray, times: np.ndarray, spec: WindowSpec, codec: TimeCodec | None = None
) -> Windows:
    """All windows of the chosen mode, before assigning them to splits (``every`` in days: calendar days when
    ``codec`` has a time zone)."""
    if spec.mode == "count":
        return count_windows(offsets, times, spec)
    if spec.mode == "duration":
        later = anchored = None
        if codec is not None and codec.time_zone is not None:
            later = lambda start, days: calendar_offsets(start, days[:, None], codec)[:, 0]  # noqa: E731
        if spec.anchor is not None and codec is not None and codec.is_datetime:
            anchored = lambda a, b: anchor_origins(a, b, spec.anchor, spec.every_days, codec)[:2]  # noqa: E731
        return duration_windows(series, offsets, times, spec, later, anchored)
    return fixed_windows(series, offsets, times, spec)


def _has_any(mask_rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(W,) bool: any ``mask_rows`` (N,) row in ``[lo, hi)``, by prefix sums."""
    prefix = np.concatenate([[0], np.cumsum(mask_rows)])
    return prefix[hi] > prefix[lo]


def split_windows(
    all_w: Windows,
    times: np.ndarray,
    tg_rows: np.ndarray,
    spec: WindowSpec,
    plan: SplitPlan,
    step_targets: bool,
    counts: dict[str, int],
    n_series: int,
) -> dict[str, Windows]:
    """Drop unusable windows (counted) and assign the rest to train / val / test."""
    keep = all_w.in_hi > all_w.in_lo
    _note(counts, "windows with no input observation", int((~keep).sum()))
    if spec.mode != "fixed":  # PhysioNet keeps records without targets: they just add none
        lo, hi = (all_w.in_lo, all_w.in_hi) if step_targets else (all_w.tg_lo, all_w.tg_hi)
        observed = _has_any(tg_rows, lo, hi)
        _note(counts, "windows with no target observation", int((keep & ~observed).sum()))
        keep &= observed
    w = all_w.select(keep)
    _note(counts, "series shorter than one window", n_series - len(np.unique(w.series)))
    span = target_span(w, times, spec, step_targets)
    return {name: w.select(plan.members(w, span, k)) for k, name in enumerate(SPLITS)}


def _first_dt(series: np.ndarray, times: np.ndarray, first_from_zero: bool) -> np.ndarray:
    dt = np.diff(times, prepend=0.0)
    start = np.concatenate([[True], series[1:] != series[:-1]])
    return np.where(start, times if first_from_zero else 0.0, dt)


def build(
    table: Table,
    roles: Roles,
    spec: WindowSpec,
    plan: SplitPlan,
    scaling: ScaleMethod,
    scale_by: ScaleBy,
    step_targets: bool = False,
    first_dt_from_zero: bool = False,
    max_categories: int = MAX_CATEGORIES,
) -> Built:
    """Scale the table, turn it into tensors and cut every split's windows.

    Categorical columns get their vocabulary from the training rows only (``categories``; the training split,
    whatever ``scale_fit`` says) and become integer codes.

    Raises:
        ValueError: no training window, a static column that varies within a series, or a categorical column with
            more than ``max_categories`` labels in training.
    """
    frame, counts = table.frame, dict(table.counts)
    n_series = len(table.series_ids)
    series = frame[SERIES].to_numpy().astype(np.int64)
    times = frame[TIME].to_numpy().astype(np.float64)
    offsets = np.searchsorted(series, np.arange(n_series + 1)).astype(np.int64)
    dynamic = [v for v in roles.variables if v not in roles.static and v not in roles.categorical]
    fit_mask = plan.fit_rows(series, times)
    scaler = fit_scaler(frame.filter(pl.Series(fit_mask)), dynamic, scaling, scale_by, n_series, counts)
    scaled = scaler.transform(frame.select(dynamic).to_numpy().astype(np.float64), series)
    mask = ~np.isnan(scaled)
    scaled[~mask] = 0.0
    tg_cols = [dynamic.index(c) for c in roles.targets]
    loc, scale = scaler.columns(roles.targets)
    train_rows = SplitPlan(plan.bounds, plan.codes, "train").fit_rows(series, times)
    vocab, codes, static_codes, missing = _categories(frame, roles, table, train_rows, max_categories)
    cat_dyn = roles.cat_dynamic
    static, static_scaler = _static(frame, roles, n_series, table, plan, scaling, fit_mask, counts)
    tensors = SeriesTensors(
        values=torch.from_numpy(scaled.astype(np.float32)),
        mask=torch.from_numpy(mask),
        times=torch.from_numpy(times),
        dt=torch.from_numpy(_first_dt(series, times, first_dt_from_zero).astype(np.float32)),
        input_cols=torch.tensor([dynamic.index(c) for c in roles.inputs], dtype=torch.int64),
        target_cols=torch.tensor(tg_cols, dtype=torch.int64),
        target_loc=torch.from_numpy(loc.astype(np.float32)),
        target_scale=torch.from_numpy(scale.astype(np.float32)),
        future=_future_rows(scaled, dynamic, roles, times, table),
        static=static,
        step_targets=step_targets,
        codes=codes,
        input_cat_cols=torch.tensor([cat_dyn.index(c) for c in roles.cat_inputs], dtype=torch.int64),
        future_cat_cols=torch.tensor([cat_dyn.index(c) for c in roles.cat_future], dtype=torch.int64),
        static_codes=static_codes,
    )
    all_w = make_windows(series, offsets, times, spec, table.codec)
    tg_rows = mask[:, tg_cols].any(axis=1)
    windows = split_windows(all_w, times, tg_rows, spec, plan, step_targets, counts, n_series)
    if len(windows["train"]) == 0:
        raise ValueError(
            f"no training window: {len(all_w)} windows in all from {n_series} series, none inside the training "
            "split; shorten lookback/horizon (or observe/forecast) or move the split cut-offs"
        )
    return Built(tensors, windows, scaler, offsets, counts, static_scaler, vocab, missing)


def series_labels(frame: pl.DataFrame, column: str, ids: pl.Series) -> pl.Series:
    """(n_series,) each series' one label of a static categorical column (null when never given).

    Raises:
        ValueError: a series with two labels (a static column must be constant within a series).
    """
    per = frame.group_by(SERIES).agg(
        pl.col(column).drop_nulls().first().alias("label"), pl.col(column).drop_nulls().n_unique().alias("n")
    )
    bad = per.filter(pl.col("n") > 1)
    if bad.height:
        examples = [ids[i] for i in bad[SERIES].head(3).to_list()]
        raise ValueError(f"static column {column!r} changes within series {examples}; it must be constant")
    out = pl.Series("label", [None] * len(ids), pl.String)
    return out.scatter(per[SERIES].cast(pl.Int64).to_list(), per["label"])


def _categories(
    frame: pl.DataFrame, roles: Roles, table: Table, train_rows: np.ndarray, cap: int
) -> tuple[dict[str, list[str]], torch.Tensor | None, torch.Tensor | None, list[str]]:
    """Vocabularies (from the training rows; static ones from the training rows' series), codes:
    (N, len(cat_dynamic)) per row, (n_series, len(cat_static)) per series (None where a role has none), and the
    columns with an empty value in training (the others' "missing" embedding is never trained)."""
    vocab, train, missing = {}, frame.filter(pl.Series(train_rows)), []
    for c in roles.cat_dynamic:
        vocab[c] = vocabulary(train[c], c, cap)
        missing += [c] if train[c].null_count() else []
    in_train = np.zeros(len(table.series_ids), dtype=bool)
    in_train[frame[SERIES].to_numpy()[train_rows]] = True
    static_labels = {c: series_labels(frame, c, table.series_ids) for c in roles.cat_static}
    for c, labels in static_labels.items():
        vocab[c] = vocabulary(labels.filter(pl.Series(in_train)), c, cap)
        missing += [c] if labels.filter(pl.Series(in_train)).null_count() else []
    codes = static_codes = None
    if roles.cat_dynamic:
        codes = torch.from_numpy(np.stack([encode(frame[c], vocab[c]) for c in roles.cat_dynamic], axis=1))
    if roles.cat_static:
        static_codes = torch.from_numpy(np.stack([encode(v, vocab[c]) for c, v in static_labels.items()], axis=1))
    return vocab, codes, static_codes, missing


def _future_rows(
    scaled: np.ndarray, dynamic: list[str], roles: Roles, times: np.ndarray, table: Table
) -> torch.Tensor | None:
    if not roles.known_future and not roles.calendar:
        return None
    known = np.nan_to_num(scaled[:, [dynamic.index(c) for c in roles.known_future]], nan=0.0)
    cal = calendar_features(times, table.codec, roles.calendar)
    return torch.from_numpy(np.concatenate([known, cal], axis=1).astype(np.float32))


def _static(
    frame: pl.DataFrame,
    roles: Roles,
    n_series: int,
    table: Table,
    plan: SplitPlan,
    scaling: ScaleMethod,
    fit_mask: np.ndarray,
    counts: dict[str, int],
) -> tuple[torch.Tensor | None, Scaler | None]:
    """(n_series, S) scaled numeric static covariates and their scaler (fitted on the training series)."""
    if not roles.static:
        return None, None
    raw = static_matrix(frame, roles.static, n_series, table.series_ids)
    in_fit = np.zeros(n_series, dtype=bool)
    in_fit[frame[SERIES].to_numpy()[fit_mask]] = True
    fit = pl.DataFrame(raw[in_fit], schema=roles.static, orient="row").fill_nan(None)
    scaler = fit_scaler(fit, roles.static, scaling, "global", 1, counts)
    _note(counts, "missing static values (set to 0)", int(np.isnan(raw).sum()))
    scaled = np.nan_to_num(scaler.transform(raw, np.zeros(n_series, np.int64)))
    return torch.from_numpy(scaled.astype(np.float32)), scaler
