"""``test_forecasts.png``: the windows at the error percentiles, titles, legend, date-time axes, and the plotted
forecasts equal ``predict_step``'s for those windows."""

from __future__ import annotations

import datetime as dt

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest
import torch

from cfc_forecast.plot import ForecastPlot, pick_windows
from datamodules import SeriesDataModule
from tests.conftest import model_for


def test_pick_windows_takes_the_error_percentiles():
    errors = np.array([0.5, np.nan, 0.1, 0.9, 0.3, 0.7])
    order = np.array([10, 11, 12, 13, 14, 15])
    # scored, by error: 12 (0.1), 14 (0.3), 10 (0.5), 15 (0.7), 13 (0.9): p25 -> 14, p50 -> 10, p75 -> 15
    assert pick_windows(errors, order, (25, 50, 75)) == [14, 10, 15]
    assert pick_windows(np.array([0.2]), np.array([4]), (25, 50, 75)) == [4]
    assert pick_windows(np.array([np.nan]), np.array([0]), (25, 50)) == []


def _frame(datetimes: bool) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for s in ("a", "b", "c"):
        t = np.cumsum(rng.uniform(0.3, 1.0, 300))
        for ti in t:
            stamp = dt.datetime(2026, 1, 1) + dt.timedelta(hours=float(ti)) if datetimes else float(ti)
            rows.append((s, stamp, float(np.sin(ti / 3) + rng.normal(0, 0.1)), float(np.cos(ti / 5))))
    return pl.DataFrame(rows, schema=["id", "ts", "temp", "hum"], orient="row")


@pytest.mark.parametrize("datetimes", [True, False])
@pytest.mark.parametrize("quantiles", [None, [0.1, 0.5, 0.9]])
def test_the_plot_draws_predict_steps_forecasts_with_titles_and_a_legend(tmp_path, datetimes, quantiles):
    dm = SeriesDataModule.from_frame(_frame(datetimes), id_column="id", time_column="ts", time_unit="h",
                                     observe=12.0 if not datetimes else "12h", forecast="4h" if datetimes else 4.0,
                                     batch_size=8)  # fmt: skip
    dm.setup("fit")
    model = model_for(dm, **({"loss": "pinball", "quantiles": quantiles} if quantiles else {}))
    plot = ForecastPlot()
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[plot],
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.test(model, dm)
    assert plot.path.is_file() and len(plot.windows) == 3
    fig = plot.figure
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["history", "actual", "forecast", *(["interval"] if quantiles else [])]
    axes = np.array(fig.axes).reshape(3, 2)
    batch = dm.dataset("test").collate(plot.windows)
    model.eval()
    with torch.no_grad():
        out = model.predict_step(batch, 0)
    for i in range(3):
        series = dm.series_ids[int(batch.series[i])]
        for c, name in enumerate(["temp", "hum"]):
            ax = axes[i, c]
            assert ax.get_title().startswith(f"series {series} · {name} · ") and ax.get_ylabel() == name
            (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "forecast"]
            q = out["mask"][i]
            expected = out["prediction"][i, q, c, model.point].numpy()
            np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), expected, rtol=1e-6)
            formatter = type(ax.xaxis.get_major_formatter()).__name__
            assert (formatter == "ConciseDateFormatter") == datetimes
