"""Per-variable scaling fitted on a chosen part of the data, globally or per series, ignoring missing values.

``scaled = (raw - loc) / scale``: standard uses loc = mean, scale = population std (ddof 0); min-max uses
loc = min, scale = max - min; none uses 0 and 1. A scale of 0 (a constant variable) becomes 1, logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from datamodules.io import SERIES

log = logging.getLogger(__name__)

ScaleMethod = Literal["standard", "minmax", "none"]
ScaleBy = Literal["global", "series"]


@dataclass
class Scaler:
    """Fitted statistics.

    Attributes:
        loc: (G, V) float64 offsets; G = 1 for global scaling, else the number of series.
        scale: (G, V) float64 factors (> 0).
        names: the V variables, in column order.
    """

    loc: np.ndarray
    scale: np.ndarray
    names: list[str]

    def rows(self, series: np.ndarray) -> np.ndarray:
        """Row of the statistics for each entry of ``series`` (all 0 for global scaling)."""
        return np.zeros_like(series) if self.loc.shape[0] == 1 else series

    def transform(self, values: np.ndarray, series: np.ndarray) -> np.ndarray:
        """Scale (N, V) raw values of rows belonging to ``series`` (N,) in place; NaN stays NaN."""
        if self.loc.shape[0] == 1:
            values -= self.loc[0]
            values /= self.scale[0]
            return values
        values -= self.loc[series]
        values /= self.scale[series]
        return values

    def columns(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(G, len(names)) loc and scale of the named variables."""
        idx = [self.names.index(n) for n in names]
        return self.loc[:, idx], self.scale[:, idx]


def _stats(method: ScaleMethod, v: str) -> list[pl.Expr]:
    if method == "standard":
        return [pl.col(v).mean().alias(f"{v}/loc"), pl.col(v).std(ddof=0).alias(f"{v}/scale")]
    if method == "minmax":
        return [pl.col(v).min().alias(f"{v}/loc"), (pl.col(v).max() - pl.col(v).min()).alias(f"{v}/scale")]
    return [pl.lit(0.0).alias(f"{v}/loc"), pl.lit(1.0).alias(f"{v}/scale")]


def _unpack(stats: pl.DataFrame, variables: list[str]) -> tuple[np.ndarray, np.ndarray]:
    loc = stats.select([pl.col(f"{v}/loc").cast(pl.Float64) for v in variables]).to_numpy()
    scale = stats.select([pl.col(f"{v}/scale").cast(pl.Float64) for v in variables]).to_numpy()
    return loc, scale


def fit_scaler(
    fit_rows: pl.DataFrame,
    variables: list[str],
    method: ScaleMethod,
    by: ScaleBy,
    n_series: int,
    counts: dict[str, int],
) -> Scaler:
    """Fit statistics on ``fit_rows`` (canonical-table rows of the fit range).

    Args:
        fit_rows: rows of the canonical table in the fit range (``__series`` plus the variables).
        variables: the V variables to fit.
        method: standard, minmax or none.
        by: global, or per series (a series with no fit rows for a variable falls back to the global value).
        n_series: the number of series G for per-series statistics.
        counts: skip counter; fallbacks and constant variables are counted here.

    Raises:
        ValueError: a variable without any observation in the fit range.
    """
    exprs = [e for v in variables for e in _stats(method, v)]
    loc, scale = _unpack(fit_rows.select(exprs), variables)
    empty = [v for v, m in zip(variables, np.isnan(loc[0]), strict=True) if m]
    if empty:
        raise ValueError(
            f"variables {empty} have no observation in the scaler's fit range; "
            "widen scale_fit (e.g. 'train+val'), choose scaling='none', or drop them"
        )
    if by == "series":
        per = fit_rows.group_by(SERIES).agg(exprs).sort(SERIES)
        s_loc, s_scale = _unpack(per, variables)
        full_loc = np.tile(loc, (n_series, 1))
        full_scale = np.tile(scale, (n_series, 1))
        idx = per[SERIES].to_numpy().astype(np.int64)
        full_loc[idx], full_scale[idx] = s_loc, s_scale
        fallback = np.isnan(full_loc) | np.isnan(full_scale)
        full_loc = np.where(fallback, loc, full_loc)
        full_scale = np.where(fallback, scale, full_scale)
        _note(counts, "per-series statistics taken from all series (no fit-range value)", int(fallback.sum()))
        loc, scale = full_loc, full_scale
    constant = ~(scale > 0)
    _note(counts, "constant variables scaled by 1 (scale 0)", int(constant.sum()))
    scale = np.where(constant, 1.0, scale)
    return Scaler(loc=loc, scale=scale, names=list(variables))


def _note(counts: dict[str, int], reason: str, n: int) -> None:
    if n:
        counts[reason] = counts.get(reason, 0) + n
        log.warning("scaling: %d %s", n, reason)
