"""One contract from checkpoint to forecast: ``cfc-forecast predict``, the Python API (``forecast_rows``) and the
batch job (``cfc-forecast forecast``) give the same rows, or the same refusal, on every edge of the input.

Nothing here depends on how well the tiny models learned: every assertion compares forecasts of one model with
each other (within ``TOL``: the paths batch the same windows, so they agree to float32 rounding at most).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest

from cfc_forecast.commands import main
from cfc_forecast.forecast import JobError, forecast_rows
from cfc_forecast.forecast import main as job_main
from datamodules import SeriesDataModule
from tests.conftest import model_for

TOL = 1e-6
KEYS = ["series", "origin_time", "time", "variable"]
LOOKBACK = 8


def series(n_series: int = 4, n_rows: int = 48) -> pl.DataFrame:
    """Hourly series ``s0``.. at levels 0, 10, 20, ...: id, t (date-times), y (the target), x2 (a covariate)."""
    rng = np.random.default_rng(0)
    frames = []
    for s in range(n_series):
        h = np.arange(n_rows, dtype=np.float64)
        frames.append(
            pl.DataFrame({
                "id": [f"s{s}"] * n_rows,
                "t": pl.datetime_range(pl.datetime(2026, 1, 1), pl.datetime(2026, 1, 3, 23), "1h", eager=True)[:n_rows],
                "y": 10 * s + np.sin(h / 6) + 0.1 * rng.standard_normal(n_rows),
                "x2": np.cos(h / 6) + 0.1 * rng.standard_normal(n_rows),
            })
        )  # fmt: skip
    return pl.concat(frames)


def fit_checkpoint(frame: pl.DataFrame, path: Path, **data: object) -> Path:
    """A tiny model fitted for two batches; its checkpoint holds the DataModule's fitted state."""
    dm = SeriesDataModule.from_frame(
        frame, id_column="id", time_column="t", targets=["y"], lookback=LOOKBACK, horizon=3, stride=4, **data
    )
    dm.setup()
    L.seed_everything(0, verbose=False)
    model = model_for(dm, hidden_size=8, backbone_units=8, head="direct")
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent,
    )  # fmt: skip
    trainer.fit(model, dm)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    train = series()
    train.write_csv(root / "train.csv")
    return {
        "root": root,
        "train": train,
        "global": fit_checkpoint(train, root / "global.ckpt"),
        "per_series": fit_checkpoint(train, root / "per_series.ckpt", scale_by="series"),
    }


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


def by_predict(ckpt: Path, path: Path, out: Path, capsys) -> pl.DataFrame | str:
    status = main(["predict", "--ckpt_path", str(ckpt), "--data.path", str(path), "--run_dir", str(out)])
    if status == 2:
        return capsys.readouterr().err.strip()
    assert status in (0, 1)
    return pl.read_parquet(out / "predictions.parquet")


def by_python(ckpt: Path, data: Path | pl.DataFrame) -> pl.DataFrame | str:
    try:
        return forecast_rows(ckpt, data)
    except JobError as err:
        return f"cfc-forecast predict: error: {err}"


def by_job(ckpt: Path, path: Path, out: Path, capsys) -> pl.DataFrame | str:
    status = job_main(["--ckpt_path", str(ckpt), "--input", str(path), "--output", str(out), "--progress=false"])
    if status == 2:
        return capsys.readouterr().err.strip().replace("cfc-forecast forecast:", "cfc-forecast predict:")
    parts = sorted(out.glob("part-*.parquet"))
    return pl.read_parquet(parts) if parts else None


def assert_same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.columns == b.columns
    assert a.select(KEYS).equals(b.select(KEYS))
    np.testing.assert_allclose(a["prediction"].to_numpy(), b["prediction"].to_numpy(), rtol=TOL, atol=TOL)


def shifted(frame: pl.DataFrame, name: str, scale: float = 1.0) -> pl.DataFrame:
    return frame.with_columns(pl.lit(name).alias("id"), pl.col("y") * scale)


# name -> (checkpoint, the rows to forecast from the training frame, series forecast, refusal (text) or None)
CASES = {
    "columns reordered": ("global", lambda f: f.select("x2", "y", "t", "id"), ["s0", "s1", "s2", "s3"], None),
    "extra columns": (
        "global", lambda f: f.with_columns(humidity=pl.lit(1.0), note=pl.lit("a")), ["s0", "s1", "s2", "s3"], None,
    ),
    "missing covariate": ("global", lambda f: f.drop("x2"), None, "['x2'] not found"),
    "unknown series": (
        "global", lambda f: pl.concat([f, shifted(f.filter(id="s1"), "s9", 3.0)]), ["s0", "s1", "s2", "s3", "s9"], None,
    ),
    "3-row series": (
        "global", lambda f: pl.concat([f, shifted(f.filter(id="s0").head(3), "short")]), ["s0", "s1", "s2", "s3"], None,
    ),
    "one lookback per series": ("global", lambda f: f.group_by("id").tail(LOOKBACK), ["s0", "s1", "s2", "s3"], None),
    # rows in any order, as fit takes them (a shuffled file, a series split over several files): sorted per series
    "rows shuffled": ("global", lambda f: f.sample(fraction=1.0, shuffle=True, seed=3), ["s0", "s1", "s2", "s3"], None),
    "never-observed target": (
        "global",
        lambda f: pl.concat([f, shifted(f.filter(id="s2"), "blind").with_columns(y=None)]),
        ["s0", "s1", "s2", "s3"],
        None,
    ),
    "per-series scaling, unknown series": (
        "per_series", lambda f: pl.concat([f, shifted(f.filter(id="s1"), "s9")]), ["s0", "s1", "s2", "s3"], None,
    ),
    # e04: s3's last 40 rows beside a new series at 20x its level: s3's forecast is the training file's
    "e04 s3 with a new series": (
        "global", lambda f: pl.concat([f.filter(id="s3").tail(40), shifted(f.filter(id="s3").tail(40), "s9", 20.0)]),
        ["s3", "s9"], None,
    ),
}  # fmt: skip
SKIPS = {
    "3-row series": ("short", "too short for the model's context: fewer than 8 rows before the origin"),
    "never-observed target": ("blind", "no target observed [y]"),
    "per-series scaling, unknown series": ("s9", "no per-series scaling statistics (series not in the training data)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_predict_the_python_api_and_the_job_agree(case, models, tmp_path, capsys):
    which, make, expected, refusal = CASES[case]
    ckpt, train = models[which], models["train"]
    path = tmp_path / "input.csv"
    make(train).write_csv(path)
    results = {
        "predict": by_predict(ckpt, path, tmp_path / "p", capsys),
        "python": by_python(ckpt, path),
        "python, a frame": by_python(ckpt, pl.read_csv(path, try_parse_dates=True)),
        "job": by_job(ckpt, path, tmp_path / "j", capsys),
    }
    if refusal is not None:
        for name, got in results.items():
            assert isinstance(got, str), name
            assert got.startswith("cfc-forecast predict: error: ") and refusal in got and "\n" not in got, name
        assert results["predict"] == results["python"] == results["job"]
        return
    first = results["predict"]
    assert sorted(first["series"].unique()) == expected
    for name in ("python", "python, a frame", "job"):
        assert_same(results[name], first)
    if case in SKIPS:  # counted and reported with its reason, never silent
        report = pl.read_csv(tmp_path / "p" / "skipped_series.csv").rows()
        assert report == [SKIPS[case]] == pl.read_csv(tmp_path / "j" / "skipped_series.csv").rows()
    # a series' forecast depends only on its own rows: the series whose rows are those of the training file
    # (every case but the one-lookback file, whose first row has no predecessor) forecast as from that file
    if case != "one lookback per series":
        whole = by_python(ckpt, models["root"] / "train.csv")
        known = [s for s in expected if s.startswith("s") and s != "s9"]
        assert_same(first.filter(pl.col("series").is_in(known)), whole.filter(pl.col("series").is_in(known)))


@pytest.mark.parametrize(("env", "logs"), [
    ({}, True),
    ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),  # Lightning's launcher, first process of the second node
    ({"RANK": "2", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),  # torchrun, first process of the second node
    ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),
])  # fmt: skip
def test_skipped_series_are_logged_once_per_job(models, env, logs, monkeypatch, caplog):
    # the first process of every node logged them (LOCAL_RANK 0): one job, one warning per node
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    short = pl.concat([models["train"], shifted(models["train"].filter(id="s0").head(3), "short")])
    with caplog.at_level("WARNING", logger="cfc_forecast.forecast.rows"):
        frame = forecast_rows(models["global"], short)
    assert sorted(frame["series"].unique()) == ["s0", "s1", "s2", "s3"]  # every process returns the rows
    assert ("forecast_rows: 1 skipped: too short" in caplog.text) is logs


def test_a_model_fitted_in_python_forecasts_as_its_checkpoint(models, tmp_path):
    train = models["train"]
    dm = SeriesDataModule.from_frame(
        train, id_column="id", time_column="t", targets=["y"], lookback=LOOKBACK, horizon=3, stride=4
    )
    dm.setup()
    model = model_for(dm, hidden_size=8, backbone_units=8, head="direct")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    live = forecast_rows(model, train.tail(20))  # the DataModule of its fit: only its fitted state is read
    assert_same(live, forecast_rows(tmp_path / "m.ckpt", train.tail(20)))
    assert live["series"].unique().to_list() == ["s3"]
    # the same checks as the CLI: a model built for other variables than its DataModule's is refused
    other = model_for(dm, hidden_size=8, backbone_units=8, head="direct", target_names=["pressure"])
    with pytest.raises(JobError, match=r"built for targets \['pressure'\]"):
        forecast_rows(other, train, datamodule=dm)
    with pytest.raises(JobError, match="give its checkpoint, or the DataModule"):
        forecast_rows(model_for(dm, hidden_size=8, backbone_units=8, head="direct"), train)


def test_predict_needs_no_config_and_refuses_model_options(models, tmp_path, capsys):
    ckpt = models["global"]
    assert main(["predict", "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "p")]) == 2
    assert "give the data to forecast: --data.path" in capsys.readouterr().err
    args = ["predict", "--ckpt_path", str(ckpt), "--data.path", str(models["root"] / "train.csv")]
    assert main([*args, "--data.init_args.lookback=4"]) == 2
    assert "the checkpoint defines the model and its preprocessing" in capsys.readouterr().err
    assert main([*args, "--data.predict_queries=[1, 2]", f"--run_dir={tmp_path / 'q'}"]) == 2
    assert "needs a model with the continuous-time head" in capsys.readouterr().err
    assert main(["predict", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--data.path", "x.csv"]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_forecast_time_stamps_are_the_data_s_own_to_the_microsecond(models):
    # rows 37 min 13 s apart: the query offsets (k x the median spacing) are not exact in float32, and the forecast
    # times must still be whole seconds and the origin one of the data's stamps
    rows = models["train"].filter(id="s1").tail(12)
    start = datetime(2026, 3, 1, 3, 37)
    rows = rows.with_columns(t=pl.Series([start + i * timedelta(minutes=37, seconds=13) for i in range(12)]))
    out = forecast_rows(models["global"], rows)
    assert out.height == 3
    assert out["origin_time"].unique().to_list() == [rows["t"].max()]
    expected = [rows["t"].max() + k * (rows["t"][1] - rows["t"][0]) for k in (1, 2, 3)]
    assert out["time"].to_list() == expected
