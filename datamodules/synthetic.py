"""``SyntheticDataModule``: seeded irregular multivariate series from driven, coupled damped oscillators.

Each series is a pair of damped oscillators (own frequencies, damping, coupling and drive), observed at its own
random times (a Poisson number of uniform time stamps) as three noisy variables with values missing at random:
``x1`` and ``x2`` (positions plus a per-series linear drift) and ``v1`` (a velocity). No files; ~0.1 s to build.
The dynamics are partly predictable (oscillation, drift) and partly not (noise, unobserved phase of the
drive), so the naive last-value and linear baselines are meaningful references, not straw men.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from datamodules.base import SeriesDataModule
from datamodules.scaling import ScaleMethod

VARIABLES = ["x1", "x2", "v1"]


def simulate(n_series: int, duration: float, rng: np.random.Generator, step: float = 0.05) -> np.ndarray:
    """(n_steps, n_series, 3) trajectories of x1, x2 (positions) and v1 on a fine grid of ``step``."""
    w1, w2 = rng.uniform(0.5, 1.5, n_series), rng.uniform(0.8, 2.0, n_series)
    zeta, k = rng.uniform(0.02, 0.1, (2, n_series)), rng.uniform(0.05, 0.4, n_series)
    drive, omega, phase = (
        rng.uniform(0.2, 0.6, n_series),
        rng.uniform(0.3, 1.2, n_series),
        rng.uniform(0, 6.3, n_series),
    )
    x = rng.normal(0, 1, (2, n_series))
    v = rng.normal(0, 1, (2, n_series))
    n_steps = int(round(duration / step)) + 1
    out = np.empty((n_steps, n_series, 3))
    for i in range(n_steps):  # a loop over the time grid, vectorised over series (semi-implicit Euler)
        out[i] = np.stack([x[0], x[1], v[0]], axis=1)
        force = drive * np.sin(omega * i * step + phase)
        a1 = -(w1**2) * x[0] - 2 * zeta[0] * w1 * v[0] + k * (x[1] - x[0]) + force
        a2 = -(w2**2) * x[1] - 2 * zeta[1] * w2 * v[1] + k * (x[0] - x[1])
        v = v + step * np.stack([a1, a2])
        x = x + step * v
    return out


def synthetic_frame(
    n_series: int = 256,
    mean_observations: int = 150,
    duration: float = 100.0,
    missing: float = 0.25,
    noise: float = 0.1,
    seed: int = 0,
) -> pl.DataFrame:
    """Wide frame ``series, time, x1, x2, v1`` of irregular observations (nulls where missing).

    Args:
        n_series: number of series.
        mean_observations: mean number of time stamps per series (Poisson).
        duration: time range [0, duration] in time units.
        missing: probability that a value is missing (each row keeps at least one value).
        noise: standard deviation of the observation noise.
        seed: seed of everything.
    """
    rng = np.random.default_rng(seed)
    step = 0.05
    grid = simulate(n_series, duration, rng, step)  # (n_steps, S, 3)
    drift = rng.normal(0, 0.02, (n_series, 2))
    counts = np.maximum(rng.poisson(mean_observations, n_series), 2)
    series = np.repeat(np.arange(n_series), counts)
    times = np.round(rng.uniform(0, duration, len(series)), 3)
    order = np.lexsort((times, series))
    series, times = series[order], times[order]
    pos = times / step
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo)[:, None]
    hi = np.minimum(lo + 1, grid.shape[0] - 1)
    values = grid[lo, series] * (1 - frac) + grid[hi, series] * frac  # (N, 3) linear interpolation
    values[:, :2] += drift[series] * times[:, None]
    values += rng.normal(0, noise, values.shape)
    observed = rng.random(values.shape) >= missing
    nothing = ~observed.any(axis=1)
    observed[nothing, rng.integers(0, 3, int(nothing.sum()))] = True
    frame = pl.DataFrame({"series": series, "time": times})
    cols = {
        v: pl.Series(v, np.where(observed[:, j], values[:, j], np.nan)).fill_nan(None) for j, v in enumerate(VARIABLES)
    }
    # equal time stamps in one series (rounding) would be duplicates: keep the first
    return frame.with_columns(**cols).unique(["series", "time"], keep="first", maintain_order=True)


WEATHER_LEVELS = {"Clouds": 0.0, "Rain": 2.0, "Sun": -2.0}


def stores_frame(n_stores: int = 4, n_steps: int = 80, seed: int = 0) -> pl.DataFrame:
    """Hourly sales-like series whose level is set by a categorical covariate known ahead (an example and test
    frame for categorical covariates; no files).

    Columns: ``store`` ("A", "B", ...), ``time`` (float hours 0, 1, ...), ``y`` = the level of that hour's
    ``weather`` (``WEATHER_LEVELS``, drawn uniformly each hour) + 0.5 * ``promo`` (0 or 1) + N(0, 0.1) noise;
    ``store_type`` ("small" / "big", alternating) and ``size`` (10 + store index) are static per store.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for s in range(n_stores):
        weather = rng.choice(list(WEATHER_LEVELS), n_steps)
        promo = rng.integers(0, 2, n_steps).astype(float)
        y = np.array([WEATHER_LEVELS[w] for w in weather]) + 0.5 * promo + rng.normal(0, 0.1, n_steps)
        parts.append(pl.DataFrame({
            "store": chr(ord("A") + s), "time": np.arange(n_steps, dtype=float), "y": y, "promo": promo,
            "weather": weather, "store_type": "big" if s % 2 else "small", "size": float(10 + s),
        }))  # fmt: skip
    return pl.concat(parts)


class SyntheticDataModule(SeriesDataModule):
    """Seeded irregular multivariate series, no files needed: the quickstart's data.

    Windows by duration: observe ``observe`` time units before each origin, forecast every observation in the
    ``forecast`` units after it, origins every ``every``; split by time fractions; scaler fitted on train.

    Args:
        n_series: number of series. mean_observations: mean time stamps per series.
        duration: length of each series in time units. missing: probability a value is missing.
        noise: observation noise std. seed: seed of the data.
        observe: input span W. forecast: forecast span D. every: spacing S of origins.
        split_fractions: train / val / test fractions of the time range.
        scaling: per-variable scaling. batch_size: windows per batch. num_workers: DataLoader workers.
        predict_queries: prediction query times after each series' end (default: its median spacing up to
            ``forecast``).
    """

    def __init__(
        self,
        n_series: int = 256,
        mean_observations: int = 150,
        duration: float = 100.0,
        missing: float = 0.25,
        noise: float = 0.1,
        seed: int = 0,
        observe: float = 20.0,
        forecast: float = 5.0,
        every: float = 5.0,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        scaling: ScaleMethod = "standard",
        time_unit: Literal["s", "min", "h", "d"] = "s",
        batch_size: int = 64,
        num_workers: int = 0,
        predict_queries: list[float] | None = None,
    ) -> None:
        super().__init__(
            id_column="series",
            time_column="time",
            targets=VARIABLES,
            inputs=VARIABLES,
            time_unit=time_unit,
            observe=observe,
            forecast=forecast,
            every=every,
            split_fractions=split_fractions,
            scaling=scaling,
            batch_size=batch_size,
            num_workers=num_workers,
            predict_queries=predict_queries,
        )
        self.save_hyperparameters()

    def _read(self) -> pl.DataFrame:
        h = self.hparams
        return synthetic_frame(h.n_series, h.mean_observations, h.duration, h.missing, h.noise, h.seed)

    def _source(self) -> str:
        return "synthetic"
