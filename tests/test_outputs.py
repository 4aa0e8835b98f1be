"""Outputs a person reads: test scores per target in the data's units beside the baselines, and forecasts as CSV
(``--output_format csv``) holding what the Parquet files hold."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

from cfc_forecast.commands import main
from cfc_forecast.scores import scores_in_units
from datamodules import SeriesDataModule
from datamodules.synthetic import synthetic_frame

COMMON = ["--data.id_column=series", "--data.time_unit=s", "--data.observe=4", "--data.forecast=2",
          "--data.batch_size=16", "--model.hidden_size=8", "--model.backbone_units=16", "--model.query_cell_units=8",
          "--model.loss=pinball", "--model.quantiles=[0.1, 0.5, 0.9]", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", "--seed_everything=0"]  # fmt: skip


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    synthetic_frame(10, 60, 40.0, seed=1).write_parquet(root / "series.parquet")
    args = ["fit", f"--data.path={root / 'series.parquet'}", *COMMON, f"--run_dir={root / 'run'}",
            "--trainer.max_epochs=1", "--test_after_fit=true"]  # fmt: skip
    assert main(args) == 0
    return root


def test_scores_per_target_in_units_for_model_and_baselines(fitted):
    scores = json.loads((fitted / "run" / "test_metrics.json").read_text())
    names = {"mae", "rmse", "bias", "wql"}
    for forecaster in ("model", "naive", "linear"):
        units = scores[forecaster]["units"]
        assert set(units) == {"x1", "x2", "v1"}
        for values in units.values():
            assert names <= set(values) and all(math.isfinite(v) for v in values.values())
            assert values["rmse"] >= values["mae"] >= abs(values["bias"])
    assert {"coverage", "width"} <= set(scores["model"]["units"]["x1"])
    assert "coverage" not in scores["naive"]["units"]["x1"]


def test_scores_in_units_equal_hand_computed_values():
    frame = pl.DataFrame({"time": [float(t) for t in range(40)], "y": [10.0 + (t % 5) for t in range(40)]})
    dm = SeriesDataModule.from_frame(frame, time_unit="s", lookback=4, horizon=2, split_fractions=(0.5, 0.25, 0.25))
    dm.setup()
    # a forecast 1.0 above the actuals (scaled units): in the data's units, error = the scaler's std everywhere
    shift = 1.0

    def above(batch):
        return batch.y + shift

    scores = scores_in_units(dm, "test", above, None)["y"]
    std = float(dm.dataset("test").collate([0]).target_scale[0, 0])
    assert scores["mae"] == pytest.approx(std) and scores["rmse"] == pytest.approx(std)
    assert scores["bias"] == pytest.approx(std)
    ds = dm.dataset("test")
    y = torch.cat([ds.collate([i]).unscale(ds.collate([i]).y) for i in range(len(ds))]).double()
    assert scores["wql"] == pytest.approx(std * y.numel() / float(y.abs().sum()), rel=1e-5)


def test_predict_and_the_batch_job_write_csv_holding_the_parquet_values(fitted):
    ckpt = fitted / "run" / "checkpoints" / "last.ckpt"
    data = fitted / "series.parquet"
    for fmt in ("parquet", "csv"):
        args = ["predict", f"--ckpt_path={ckpt}", f"--data.path={data}", f"--run_dir={fitted / fmt}"]
        assert main([*args, f"--output_format={fmt}"]) == 0
        job = ["forecast", f"--ckpt_path={ckpt}", f"--input={data}", f"--output={fitted / ('job-' + fmt)}",
               "--progress=false", f"--output_format={fmt}"]  # fmt: skip
        assert main(job) == 0
    parquet = pl.read_parquet(fitted / "parquet" / "predictions.parquet")
    csv = pl.read_csv(fitted / "csv" / "predictions.csv", schema=parquet.schema)
    assert csv.equals(parquet)
    (part,) = (fitted / "job-csv").glob("part-*.csv")
    (ppart,) = (fitted / "job-parquet").glob("part-*.parquet")
    expected = pl.read_parquet(ppart)
    assert pl.read_csv(part, schema=expected.schema).equals(expected)
