"""The ``cfc-forecast`` command: every shipped config runs, fit -> predict through checkpoints, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from cfc_forecast import __version__, native_available
from cfc_forecast.cli import cli
from cfc_forecast.commands import main
from cfc_forecast.errors import UserError
from cfc_forecast.forecaster.module import ForecastModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY_DATA = [
    "--data=datamodules.SyntheticDataModule",
    "--data.n_series=8",
    "--data.mean_observations=60",
    "--data.duration=40",
    "--data.observe=4",
    "--data.forecast=2",
    "--data.every=1",
    "--data.batch_size=16",
]
TINY_MODEL = ["--model.hidden_size=8", "--model.backbone_units=16", "--model.query_cell_units=8"]


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    # the CLI runs on its args, as from a shell; pytest's own arguments would only trigger Lightning's warning
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


def test_version_and_native_status(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"cfc-forecast {__version__}")
    ready = native_available()
    assert main(["native"]) == (0 if ready else 1)
    assert ("native CfC loop: ready" in capsys.readouterr().out) == ready


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_runs_fast_dev_run(config, tmp_path):
    uses = yaml.safe_load(config.read_text())["data"]["class_path"]
    if "Synthetic" not in uses:
        from tests.datamodules.conftest import real_data

        real_data()  # skips without the real data (fails on CI)
    run = cli(["fit", f"--config={config}", "--trainer.fast_dev_run=true", f"--runs_root={tmp_path}"])
    assert run.trainer.state.finished
    asked = yaml.safe_load(config.read_text()).get("test_after_fit", False)
    assert ("test/mse" in run.trainer.callback_metrics) == asked


def test_fit_writes_a_run_directory_and_predict_writes_forecasts(tmp_path, capsys):
    fit = cli(
        ["fit", *TINY_DATA, *TINY_MODEL, f"--run_dir={tmp_path / 'run'}", "--trainer.max_epochs=2",
         "--seed_everything=7", "--test_after_fit=true", "--trainer.enable_progress_bar=false"]
    )  # fmt: skip
    run = tmp_path / "run"
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 7 and record["versions"]["cfc_forecast"] == __version__
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["hidden_size"] == 8 and saved["data"]["init_args"]["n_series"] == 8
    table = capsys.readouterr().out
    assert "naive" in table and "linear" in table and "mse_per_var" in table
    scores = json.loads((run / "test_metrics.json").read_text())
    assert scores["model"]["mse"] == pytest.approx(fit.trainer.callback_metrics["test/mse"].item())

    ckpt = run / "checkpoints" / "best.ckpt"
    args = ["predict", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}", f"--run_dir={tmp_path / 'pred'}"]
    assert main(args) == 0
    frame = pl.read_parquet(tmp_path / "pred" / "predictions.parquet")
    assert frame.columns == ["series", "origin_time", "time", "variable", "prediction"]
    assert frame["series"].n_unique() == 8 and set(frame["variable"]) == {"x1", "x2", "v1"}
    assert (frame["time"] > frame["origin_time"]).all()
    # forecasts in original units: the model's scaled output at the end of series 0, inverted by hand
    from cfc_forecast.forecast.prepare import Options, prepare
    from cfc_forecast.forecast.trained import read_checkpoint
    from datamodules import SyntheticDataModule

    rows = SyntheticDataModule(**saved["data"]["init_args"])._read()
    chunk = prepare(rows, read_checkpoint(ckpt)[1], Options())
    index = int((chunk.dataset.series == 0).nonzero()[0, 0])
    batch = chunk.dataset.collate([index])
    model = ForecastModule.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        raw = batch.unscale(model(batch)[..., 0])[0, 0]  # (C,) first query of series 0
    first = frame.filter(pl.col("series") == chunk.series_ids[0]).sort("time").head(3)
    got = dict(zip(first["variable"], first["prediction"], strict=True))
    for c, name in enumerate(chunk.target_names):
        assert got[name] == pytest.approx(float(raw[c]), rel=1e-5)


def test_a_misspelled_key_fails_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="unknown option --model.hiden_size; did you mean --model.hidden_size"):
        cli(["fit", *TINY_DATA, "--model.hiden_size=8", f"--runs_root={tmp_path}"])
    assert not any(tmp_path.iterdir())


def test_a_missing_config_file_fails_clearly(tmp_path):
    with pytest.raises(UserError, match="nope.yaml"):
        cli(["fit", f"--config={tmp_path / 'nope.yaml'}"])


def test_a_missing_data_file_fails_before_training(tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="missing.csv"):
        cli(["fit", "--data=SeriesDataModule", f"--data.path={tmp_path / 'missing.csv'}", "--data.lookback=4",
             "--data.horizon=2", f"--runs_root={tmp_path}"])  # fmt: skip


@pytest.mark.slow
def test_two_process_ddp_fit_and_predict_on_cpu(tmp_path):
    import subprocess
    import sys

    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    base = [sys.executable, "-m", "cfc_forecast.commands"]
    fit = [*base, "fit", *TINY_DATA, *TINY_MODEL, *ddp, "--trainer.max_epochs=1", "--seed_everything=0",
           "--trainer.enable_progress_bar=false", f"--run_dir={tmp_path / 'run'}"]  # fmt: skip
    subprocess.run(fit, check=True, cwd=ROOT, timeout=300)
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (tmp_path / "run" / "config.yaml").is_file()
    predict = [*base, "predict", f"--config={tmp_path / 'run' / 'config.yaml'}", f"--ckpt_path={ckpt}", *ddp,
               f"--run_dir={tmp_path / 'pred'}"]  # fmt: skip
    subprocess.run(predict, check=True, cwd=ROOT, timeout=300)
    out = tmp_path / "pred"
    frame = pl.read_parquet(out / "predictions.parquet")
    assert not list(out.glob("part-rank*.parquet"))  # merged and removed
    assert frame["series"].n_unique() == 8  # every series once, split over the two ranks
    assert frame.select("series", "time", "variable").is_duplicated().sum() == 0


def test_a_horizon_longer_than_the_data_allows_fails_before_training(tmp_path):
    frame = pl.DataFrame({"time": [float(i) for i in range(30)], "a": [float(i % 7) for i in range(30)]})
    path = tmp_path / "short.csv"
    frame.write_csv(path)
    with pytest.raises(ValueError, match="no training window|split has no windows"):
        cli(["fit", "--data=SeriesDataModule", f"--data.path={path}", "--data.time_unit=s", "--data.lookback=10",
             "--data.horizon=50", f"--runs_root={tmp_path}"])  # fmt: skip


def test_predict_at_query_times_from_the_config_or_on_the_test_windows(tmp_path, tiny_synthetic):
    run = tmp_path / "run"
    cli(["fit", *TINY_DATA, *TINY_MODEL, f"--run_dir={run}", "--trainer.max_epochs=1",
         "--trainer.enable_progress_bar=false"])  # fmt: skip
    args = [f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    assert main(["predict", *args, "--data.init_args.predict_queries=[0.25, 1.5, 3.75]",
                 f"--run_dir={tmp_path / 'pred'}"]) == 0  # fmt: skip
    frame = pl.read_parquet(tmp_path / "pred" / "predictions.parquet")
    ahead = (frame["time"] - frame["origin_time"]).round(6).unique().sort().to_list()
    assert ahead == [0.25, 1.5, 3.75]
    assert frame.height == 8 * 3 * 3  # series x queries x variables

    # the test windows when asked: one forecast per test window and observed target time, in original units
    cli(["predict", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
         "--predict_windows=test", f"--run_dir={tmp_path / 'pred_test'}"])  # fmt: skip
    frame = pl.read_parquet(tmp_path / "pred_test" / "predictions.parquet")
    dm = tiny_synthetic  # the data of TINY_DATA
    test = dm.dataset("test")
    batch = test.collate(list(range(len(test))))
    assert frame.select("series", "origin_time").unique().height == len(test)
    assert frame.height == int(batch.query_mask.sum()) * dm.n_targets
    model = ForecastModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    with torch.no_grad():
        raw = model(batch)[..., 0] * batch.target_scale[:, None] + batch.target_loc[:, None]  # (B, K, C)
    origin = dm.decode_times(batch.origin[:1])[0]
    rows = frame.filter((pl.col("series") == dm.series_ids[int(batch.series[0])]) & (pl.col("origin_time") == origin))
    first = raw[0][batch.query_mask[0]]  # (K0, C) the first test window's queries, in time order
    order = {name: i for i, name in enumerate(dm.target_names)}  # the file is sorted by variable name
    rows = rows.with_columns(c=pl.col("variable").replace_strict(order)).sort("time", "c")
    torch.testing.assert_close(
        torch.tensor(rows["prediction"].to_list(), dtype=torch.float32),
        first.flatten(),
        rtol=1e-5,
        atol=1e-5,
    )
    # other data than the checkpoint's training data: their test windows are not what the model was trained for
    with pytest.raises(ValueError, match="not the ones the model was trained on"):
        cli(["predict", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
             "--predict_windows=test", "--data.init_args.n_series=6", f"--run_dir={tmp_path / 'other'}"])  # fmt: skip


def test_fit_resumes_from_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    common = [*TINY_DATA, *TINY_MODEL, "--trainer.enable_progress_bar=false"]
    cli(["fit", *common, f"--run_dir={run}", "--trainer.max_epochs=1"])
    resumed = cli(["fit", *common, f"--run_dir={tmp_path / 'more'}", "--trainer.max_epochs=2",
                   f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])  # fmt: skip
    assert resumed.trainer.current_epoch == 2
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed.trainer.global_step == 2 * first["global_step"]


def test_known_future_calendar_features_reach_the_direct_head(tmp_path):
    from tests.datamodules.conftest import real_data

    real_data("ETT")
    run = cli(["fit", f"--config={ROOT / 'configs' / 'etth1.yaml'}", "--trainer.fast_dev_run=true",
               "--data.init_args.calendar=[hour_of_day, day_of_week]", f"--runs_root={tmp_path}"])  # fmt: skip
    assert run.model.hparams.n_future == 2 and run.model.net.head.n_future == 2
    assert run.trainer.state.finished
