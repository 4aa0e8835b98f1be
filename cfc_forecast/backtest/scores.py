"""A backtest's forecasts beside the actuals, the baselines on the same origins, and its scores.

Scores (per forecaster, target, and origin or overall; over the forecasts that have an actual, i.e. an observed
value at the forecast's time stamp): ``mae``, ``rmse``, ``bias`` (forecast - actual) in the data's units,
``mae_scaled`` / ``rmse_scaled`` in the scaled units the model trains in (errors divided by the checkpoint's
scaler scale), with quantiles per central interval (quantile pairs q and 1 - q, e.g. q0.1 / q0.9: the 80% one)
``coverage_80`` (share of actuals inside it) and ``width_80`` (its mean width), and
``wql`` (2 x pinball loss averaged over the levels, summed, divided by sum |actual|: ``cfc_forecast.scores``'
definition; a point forecast is scored as its median). ``n`` counts the scored values.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader

from cfc_forecast.forecast.options import options_for
from cfc_forecast.forecast.prepare import prepare
from cfc_forecast.forecast.rows import read_rows, sorted_frame, with_observed_span
from cfc_forecast.forecast.trained import Trained
from datamodules.baselines import naive_forecast

KEYS = ["series", "time", "variable"]
NAMES = ("n", "mae", "rmse", "bias", "mae_scaled", "rmse_scaled", "wql")  # + coverage_<level>, width_<level>


def actuals(rows: pl.DataFrame, trained: Trained) -> pl.DataFrame:
    """Every observed target value: ``series, time, variable, actual`` (times parsed as the forecasts' are)."""
    from cfc_forecast.forecast.checks import parse_time

    frame, _ = parse_time(rows.select(trained.columns), trained)
    sid = trained.id_column
    frame = frame.with_columns((pl.col(sid) if sid else pl.lit(0)).alias("series"))
    frame = frame.rename({trained.time_column: "time"})
    if trained.layout == "long":
        long = frame.select("series", "time", pl.col(trained.variable_column).cast(pl.String).alias("variable"),
                            pl.col(trained.value_column).cast(pl.Float64).alias("actual"))  # fmt: skip
        long = long.filter(pl.col("variable").is_in(trained.targets))
    else:
        long = frame.select("series", "time", *[pl.col(t).cast(pl.Float64) for t in trained.targets]).unpivot(
            index=["series", "time"], variable_name="variable", value_name="actual"
        )
    return long.filter(pl.col("actual").is_not_null() & pl.col("actual").is_not_nan())


def with_actuals(forecasts: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """The forecasts with ``actual`` (null where no value was observed at the forecast's time) and ``step`` (1 for
    the first query time after the origin, ...)."""
    truth = truth.with_columns(pl.col("series").cast(forecasts.schema["series"]),
                               pl.col("time").cast(forecasts.schema["time"]))  # fmt: skip
    out = forecasts.join(truth.unique(KEYS, keep="first"), on=KEYS, how="left", coalesce=True)
    step = pl.col("time").rank("dense").over("series", "origin_time", "variable").cast(pl.Int32)
    return out.with_columns(step.alias("step"))


def baselines(
    rows: pl.DataFrame, trained: Trained, origin: list[str | float], linear: Callable, observed_span: float | None
) -> pl.DataFrame:
    """The naive (last value) and linear forecasts at the same origins, series and query times as the model's, as
    ``forecaster, series, origin_time, time, variable, prediction``.

    Args:
        rows: the raw rows. trained: the model's data contract (its scaler scales the baselines' inputs too).
        origin: the origins (``forecast_rows``' form). linear: ``datamodules.baselines.linear_forecaster`` of the
            DataModule the model was fitted on (fitted on its training split). observed_span: as ``forecast_report``'s.
    """
    frame, _ = read_rows(rows, trained)
    options = options_for(trained, frame.schema[trained.time_column], origin, None, None, flag="")
    options = with_observed_span(options, trained, observed_span)
    chunk = prepare(frame, trained, options, "input")
    source_cols = [trained.inputs.index(t) if t in trained.inputs else -1 for t in trained.targets]
    parts = []
    for name, fn in (("naive", lambda b: naive_forecast(b, source_cols)), ("linear", linear)):
        outputs = []
        if chunk.dataset is not None:
            ds = chunk.dataset
            for batch in DataLoader(ds, batch_size=256, shuffle=False, collate_fn=ds.collate):
                pred = batch.to_original_units(fn(batch)[..., None])  # (B, K, C, 1)
                time = batch.origin[:, None] + batch.query_t.double()
                if batch.query_t_abs is not None:
                    time = torch.where(batch.query_mask, batch.query_t_abs, time)
                outputs.append({"prediction": pred, "time": time, "mask": batch.query_mask, "series": batch.series,
                                "origin": batch.origin})  # fmt: skip
        part = sorted_frame(outputs, chunk, None)
        parts.append(part.select(pl.lit(name).alias("forecaster"), *part.columns))
    return pl.concat(parts)


def scale_of(trained: Trained) -> pl.DataFrame:
    """``variable, scale``: the checkpoint's scaler scale of each target (the mean over series when per series)."""
    cols = [trained.variables.index(t) for t in trained.targets]
    return pl.DataFrame({"variable": trained.targets, "scale": np.asarray(trained.scale)[:, cols].mean(0)})


def scores(frame: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """The scores of the module docstring, grouped by ``by`` (e.g. ``["forecaster", "origin_time", "variable"]``).

    Args:
        frame: forecasts with ``actual`` and ``scale`` (the scaler scale of the model that made them, per target).
    """
    levels = sorted(float(c[1:]) for c in frame.columns if c.startswith("q") and c[1:].replace(".", "").isdigit())
    scored = frame.filter(pl.col("actual").is_not_null())
    err = pl.col("prediction") - pl.col("actual")
    y = pl.col("actual")
    intervals = []  # per central interval: (coverage, width), the outermost first
    if levels:  # the baselines' rows have no quantiles: scored as their median, as point forecasts
        point = pl.col(f"q{levels[0]:g}").is_null()
        pin = [pl.max_horizontal(q * (y - pl.col(f"q{q:g}")), (q - 1) * (y - pl.col(f"q{q:g}"))) for q in levels]
        ql = pl.when(point).then(err.abs()).otherwise(pl.sum_horizontal(pin) * 2 / len(levels))
        for q in (q for q in levels if q < 0.5 and any(abs(1 - q - p) < 1e-9 for p in levels)):
            lo, hi = pl.col(f"q{q:g}"), pl.col(f"q{1 - q:g}")
            name = f"{100 * (1 - 2 * q):g}"
            cover = pl.when(point).then(None).otherwise(((y >= lo) & (y <= hi)).cast(pl.Float64))
            intervals += [cover.mean().alias(f"coverage_{name}"), (hi - lo).mean().alias(f"width_{name}")]
    else:
        ql = err.abs()
    aggs = [
        pl.len().alias("n"),
        err.abs().mean().alias("mae"),
        err.pow(2).mean().sqrt().alias("rmse"),
        err.mean().alias("bias"),
        (err / pl.col("scale")).abs().mean().alias("mae_scaled"),
        (err / pl.col("scale")).pow(2).mean().sqrt().alias("rmse_scaled"),
        (ql.sum() / pl.col("actual").abs().sum().clip(1e-12)).alias("wql"),
        *intervals,
    ]
    return scored.group_by(by, maintain_order=True).agg(aggs).sort(by)


def table(overall: pl.DataFrame) -> str:
    """A fixed-width table of the overall scores: a line per (target, forecaster)."""
    names = [c for c in overall.columns if c not in ("forecaster", "variable")]
    lines = [f"{'target':<14}{'forecaster':<10}" + "".join(f"{n:>12}" for n in names)]
    for row in overall.sort("variable", "forecaster").iter_rows(named=True):
        cells = "".join(f"{'-':>12}" if row[n] is None else f"{row[n]:>12.4g}" for n in names)
        lines.append(f"{str(row['variable']):<14}{row['forecaster']:<10}" + cells)
    return "\n".join(lines)


def plot(per_origin: pl.DataFrame, per_step: pl.DataFrame, path: Path) -> None:
    """``path`` (PNG): MAE by origin and by horizon step, a line per forecaster (pooled over targets' values)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, frame, x, label in (
        (axes[0], per_origin, "origin_time", "origin"),
        (axes[1], per_step, "step", "horizon step"),
    ):
        for name in frame["forecaster"].unique(maintain_order=True):
            part = frame.filter(pl.col("forecaster") == name).sort(x)
            ax.plot(part[x].to_list(), part["mae"].to_list(), marker="o", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("MAE (data units)")
        ax.legend()
    axes[0].tick_params(axis="x", rotation=30)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
