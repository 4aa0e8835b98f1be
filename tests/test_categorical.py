"""Categorical covariates: the vocabulary (training split only, sorted, unknown / missing codes, the cap), learned
embeddings, the vocabulary in the checkpoint, and every prediction path (``predict``, ``forecast_report`` with and
without origins, the batch job) with static and known-future categoricals supplied on rows after the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cfc_forecast.commands import main
from cfc_forecast.forecast import main as job_main
from cfc_forecast.forecast.prepare import Options, prepare
from cfc_forecast.forecast.rows import forecast_report, forecast_rows, load
from datamodules import SeriesDataModule
from datamodules.categories import MISSING, UNKNOWN
from datamodules.synthetic import stores_frame

N_STEPS, N_HIST = 80, 70  # steps per store, of which the history given to predict


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


def stores(n_steps: int = N_STEPS, seed: int = 0) -> pl.DataFrame:
    """Four stores, hourly: y = the level of that hour's weather + 0.5 * promo + noise (``stores_frame``)."""
    return stores_frame(4, n_steps, seed)


def options(**extra) -> dict:
    base = dict(id_column="store", time_unit="h", targets=["y"], inputs=["y"], static=["store_type", "size"],
                known_future=["weather", "promo"], categorical=["weather", "store_type"], lookback=8, horizon=2,
                batch_size=32)  # fmt: skip
    return base | extra


def cli_data(path: Path, *extra: str) -> list[str]:
    return ["--data=SeriesDataModule", f"--data.path={path}", "--data.id_column=store", "--data.time_unit=h",
            "--data.targets=[y]", "--data.inputs=[y]", "--data.static=[store_type, size]",
            "--data.known_future=[weather, promo]", "--data.categorical=[weather, store_type]",
            "--data.lookback=8", "--data.horizon=2", "--data.batch_size=32", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """One epoch of ``cfc-forecast fit`` on the stores, and the rows to forecast: each store's first N_HIST hours,
    then two rows after the end with empty targets carrying weather and promo (store A: an unseen "Snow")."""
    import sys

    root = tmp_path_factory.mktemp("categorical")
    data = root / "stores.csv"
    frame = stores()
    frame.write_csv(data)
    old, sys.argv = sys.argv, ["cfc-forecast"]
    try:
        assert main(["fit", *cli_data(data), "--model.hidden_size=8", "--model.backbone_units=16",
                     "--model.head_hidden_sizes=[16]", f"--run_dir={root / 'run'}", "--trainer.max_epochs=1",
                     "--seed_everything=0", "--trainer.enable_progress_bar=false",
                     "--trainer.enable_model_summary=false"]) == 0  # fmt: skip
    finally:
        sys.argv = old
    history = frame.filter(pl.col("time") < N_HIST)
    future = frame.filter(pl.col("time").is_between(N_HIST, N_HIST + 1)).with_columns(
        pl.lit(None, pl.Float64).alias("y")
    )
    future = future.with_columns(
        pl.when((pl.col("store") == "A") & (pl.col("time") == N_HIST + 1)).then(pl.lit("Snow"))
        .otherwise(pl.col("weather")).alias("weather")
    )  # fmt: skip
    rows = pl.concat([history, future])
    rows.write_csv(root / "new.csv")
    return {"ckpt": root / "run" / "checkpoints" / "last.ckpt", "rows": rows, "new": root / "new.csv", "root": root}


def test_vocabulary_from_the_training_split_sorted_with_unknown_and_missing_codes():
    frame = stores(100)
    # "Hail" only after the training split (70% of 100 hours), "Fog" only in training, one empty cell in training
    frame = frame.with_columns(
        pl.when(pl.col("time") == 90).then(pl.lit("Hail")).when(pl.col("time") == 3).then(pl.lit("Fog"))
        .when((pl.col("time") == 4) & (pl.col("store") == "A")).then(pl.lit(" ")).otherwise(pl.col("weather"))
        .alias("weather")
    )  # fmt: skip
    dm = SeriesDataModule.from_frame(frame, **options())
    dm.setup()
    assert dm.vocabularies == {"weather": ["Clouds", "Fog", "Rain", "Sun"], "store_type": ["big", "small"]}
    assert dm.categorical_sizes == {"inputs": [], "static": [4], "known_future": [6]}
    assert (dm.n_static, dm.n_future, dm.input_names) == (1, 1, ["y"])  # the numeric ones: size, promo
    codes, t = dm._built.tensors.codes[:, 0].numpy(), dm._built.tensors.times.numpy()
    expect = {"Clouds": 2, "Fog": 3, "Rain": 4, "Sun": 5, "Hail": UNKNOWN}
    labels = frame.sort("store", "time")["weather"].to_list()
    assert codes[t == 90].tolist() == [UNKNOWN] * 4 and codes[t == 3].tolist() == [3] * 4
    assert codes[(t == 4)][0] == MISSING  # store A's blank cell
    assert dm.state_dict()["preprocessing"]["categorical"]["missing_in_training"] == ["weather"]  # learned
    assert all(codes[i] == expect[w] for i, w in enumerate(labels) if w.strip() and t[i] not in (3, 4, 90))
    assert dm._built.tensors.static_codes[:, 0].tolist() == [3, 2, 3, 2]  # small, big, small, big
    # integers are labels, sorted as text
    ints = frame.with_columns(pl.col("weather").replace({"Clouds": "10", "Rain": "2", "Sun": "1"}).cast(pl.Int64,
                              strict=False))  # fmt: skip
    dm = SeriesDataModule.from_frame(ints.with_columns(pl.col("weather").fill_null(3)), **options())
    assert dm.vocabularies["weather"] == ["1", "10", "2", "3"]


def test_refusals_are_one_line_exit_2(tmp_path, capsys):
    data = tmp_path / "stores.csv"
    stores(40).write_csv(data)
    cases = [
        (["--data.targets=[weather]"], "a target is never categorical"),
        (["--data.max_categories=2"], "more than the cap of 2; raise it with --data.max_categories 3"),
        (["--data.categorical=[weather, store_type, promo2]"], "promo2"),
        (["--data.known_future=[promo]"], "must also be an input, static or known_future covariate"),
    ]
    for extra, says in cases:
        assert main(["fit", *cli_data(data, *extra), "--trainer.fast_dev_run=true", f"--run_dir={tmp_path / 'r'}"]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("cfc-forecast fit: error: ") and says in err[0], err


MARGIN_WITHOUT = 0.1  # with the weather known ahead, validation MSE below this fraction of the one without it


def weather_loss(with_weather: bool, seed: int) -> float:
    """Validation MSE of a brief fit on the stores frame, with the categorical weather known ahead or without it
    (also run for ten seeds by ``benchmarks/seeds.py --claim categorical``)."""
    import lightning.pytorch as L

    from tests.conftest import model_for

    L.seed_everything(seed)
    kw = {} if with_weather else dict(known_future=["promo"], categorical=["store_type"])
    dm = SeriesDataModule.from_frame(stores(120), **options(**kw))
    dm.setup()
    model = model_for(dm, categorical_sizes=dm.categorical_sizes, lr=1e-2)
    trainer = L.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, dm)
    return trainer.validate(model, dm, verbose=False)[0]["val/mse"]


def test_a_categorical_covariate_is_learned_better_than_without_it():
    """Two seeds: with the weather known ahead the model reaches a validation MSE far below the one without it
    (the target's level is the weather's: without it the best forecast is near the mean)."""
    losses = {(w, seed): weather_loss(w, seed) for w in (True, False) for seed in (0, 1)}
    worst_with = max(losses[True, s] for s in (0, 1))
    best_without = min(losses[False, s] for s in (0, 1))
    assert worst_with < MARGIN_WITHOUT * best_without, losses  # measured: 0.007 and 0.009 with, 0.93 and 0.94 without


def test_checkpoint_holds_the_vocabulary_as_plain_lists(fitted):
    ckpt = torch.load(fitted["ckpt"], weights_only=True, map_location="cpu")
    state = ckpt["SeriesDataModule"]["preprocessing"]
    assert state["categorical"] == {
        "inputs": [], "static": ["store_type"], "known_future": ["weather"],
        "vocabularies": {"weather": ["Clouds", "Rain", "Sun"], "store_type": ["big", "small"]},
        "missing_in_training": [],
    }  # fmt: skip
    assert ckpt["hyper_parameters"]["categorical_sizes"] == {"inputs": [], "static": [4], "known_future": [5]}
    assert set(state["static_scaler"]) == {"names", "loc", "scale"} and state["static_scaler"]["names"] == ["size"]


def test_future_category_drives_the_forecast_and_unseen_is_the_unknown_embedding(fitted, caplog):
    """Deterministic: store A's second future hour says "Snow" (unseen): its forecast equals the one computed with
    code 0 put in by hand, and is counted; changing a future weather changes the forecast at that time only."""
    result = forecast_report(fitted["ckpt"], fitted["rows"])
    assert result.unseen == {"weather": {"values": 1, "examples": ["Snow"]}}
    assert any("'weather': 1 value of categories unseen in training" in n for n in result.notes)
    assert result.frame.height == 8 and result.frame["origin_time"].unique().to_list() == [N_HIST - 1]
    model, trained = load(fitted["ckpt"])
    chunk = prepare(fitted["rows"], trained, Options())
    batch = chunk.dataset.collate(list(range(len(chunk.dataset))))
    a = int(np.flatnonzero(chunk.series_ids.gather(batch.series.numpy()).to_numpy() == "A")[0])
    assert batch.future_cat[a, :, 0].tolist()[1] == UNKNOWN
    rain = batch.future_cat.clone()
    rain[a, 1, 0] = 3  # "Rain"
    with torch.no_grad():
        snow = model(batch)
        batch.future_cat = rain
        rained = model(batch)
    got = result.frame.filter(pl.col("series") == "A").sort("time")["prediction"].to_numpy()
    unscale = lambda p: (p[a, :, 0, 0].double() * batch.target_scale[a, 0] + batch.target_loc[a, 0]).numpy()  # noqa: E731
    np.testing.assert_allclose(got, unscale(snow), rtol=0, atol=1e-9)
    assert unscale(rained)[1] != unscale(snow)[1]  # the weather at a query time moves that query's forecast
    # a future row missing for a query time: that store is skipped with the reason, the others forecast
    gap = fitted["rows"].filter(~((pl.col("store") == "B") & (pl.col("time") == N_HIST)))
    result = forecast_report(fitted["ckpt"], gap)
    assert result.skipped["series"].to_list() == ["B"]
    assert (
        "no row with the known-future covariates [promo, weather] at a query time (first: 70)"
        in (result.skipped["reason"][0])
    )
    # from an origin inside the data (the backtest's way): the actual rows after it carry the future values
    inside = forecast_report(fitted["ckpt"], stores(), origins=[60.0])
    assert inside.frame.height == 8 and inside.skipped.height == 0 and inside.unseen == {}
    with caplog.at_level("WARNING", logger="cfc_forecast.forecast.rows"):  # forecast_rows says it too
        forecast_rows(fitted["ckpt"], fitted["rows"])
    assert "'weather': 1 value of categories unseen in training, read as 'unknown' (e.g. ['Snow'])" in caplog.text


def test_predict_and_the_batch_job_with_static_and_known_future_categoricals(fitted, tmp_path, capsys):
    assert main(["predict", f"--ckpt_path={fitted['ckpt']}", f"--data.path={fitted['new']}",
                 f"--run_dir={tmp_path / 'p'}"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "series forecast: 4 of 4" in out and "'weather': 1 value of categories unseen in training" in out
    predicted = pl.read_parquet(tmp_path / "p" / "predictions.parquet")
    assert job_main(["--ckpt_path", str(fitted["ckpt"]), "--input", str(fitted["new"]), "--output",
                     str(tmp_path / "job"), "--progress=false"]) == 0  # fmt: skip
    job = pl.read_parquet(sorted((tmp_path / "job").glob("part-*.parquet")))
    keys = ["series", "origin_time", "time", "variable"]
    assert job.sort(keys)[keys].equals(predicted.sort(keys)[keys])
    np.testing.assert_allclose(job.sort(keys)["prediction"], predicted.sort(keys)["prediction"], atol=1e-5)
    summary = json.loads((tmp_path / "job" / "manifest.json").read_text())["summary"]
    assert summary["unseen_categories"] == {"weather": {"values": 1, "examples": ["Snow"]}}
    # one store per chunk: the counts add up over the chunks ("Snow" twice in store A, "Hail" in store C)
    rows = fitted["rows"].with_columns(
        pl.when((pl.col("store") == "C") & (pl.col("time") == N_HIST)).then(pl.lit("Hail")).otherwise("weather")
        .alias("weather")
    )  # fmt: skip
    rows = rows.with_columns(
        pl.when((pl.col("store") == "A") & (pl.col("time") == N_HIST)).then(pl.lit("Snow")).otherwise("weather")
        .alias("weather")
    )  # fmt: skip
    rows.write_csv(tmp_path / "more.csv")
    assert job_main(["--ckpt_path", str(fitted["ckpt"]), "--input", str(tmp_path / "more.csv"), "--output",
                     str(tmp_path / "job1"), "--chunk_size=1", "--progress=false"]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "job1" / "manifest.json").read_text())["summary"]
    assert summary["unseen_categories"] == {"weather": {"values": 3, "examples": ["Hail", "Snow"]}}
    assert any("'weather': 3 values of categories unseen" in n for n in summary["notes"])


def test_test_with_other_labels_refused_and_a_varying_static_value_skips_the_series(fitted, tmp_path, capsys):
    other = tmp_path / "other.csv"
    stores().with_columns(pl.col("weather").replace({"Sun": "Sunny"})).write_csv(other)
    assert main(["test", *cli_data(other), f"--ckpt_path={fitted['ckpt']}", f"--run_dir={tmp_path / 't'}"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("cfc-forecast")]
    assert len(err) == 1 and "categorical column 'weather': the checkpoint's training labels" in err[0], err
    rows = fitted["rows"].with_columns(
        pl.when((pl.col("store") == "C") & (pl.col("time") == 5)).then(pl.lit("big")).otherwise("store_type")
        .alias("store_type")
    )  # fmt: skip
    result = forecast_report(fitted["ckpt"], rows)
    assert result.skipped.rows() == [("C", "static column 'store_type' changes within the series")]
    assert sorted(result.frame["series"].unique()) == ["A", "B", "D"]


def test_long_layout_and_averaged_duplicates_are_refused_for_categorical_columns():
    from cfc_forecast.errors import UserError

    long = stores(20).unpivot(index=["store", "time"], on=["y", "promo"])
    with pytest.raises(UserError, match="categorical columns need the wide layout"):
        SeriesDataModule.from_frame(long, **options(layout="long", static=None, known_future=["promo"],
                                                    categorical=["promo"])).setup()  # fmt: skip
    with pytest.raises(UserError, match="duplicates='mean' cannot average the categorical columns"):
        SeriesDataModule.from_frame(stores(20), **options(duplicates="mean")).setup()


def test_a_backtest_of_a_model_with_categorical_covariates(fitted, tmp_path):
    """Without refit: 3 origins x 4 stores x 2 steps, the known-future values from the data's own rows."""
    out = tmp_path / "bt"
    assert main(["backtest", f"--config={fitted['root'] / 'run' / 'config.yaml'}", f"--ckpt_path={fitted['ckpt']}",
                 "--n_windows=3", "--step=2h", f"--output={out}"]) == 0  # fmt: skip
    model = pl.read_parquet(out / "forecasts.parquet").filter(pl.col("forecaster") == "model")
    assert model.height == 24 and model["actual"].null_count() == 0 and model["prediction"].is_finite().all()


def test_a_past_categorical_input_from_a_model_fitted_in_python():
    """A categorical past input (no future rows needed): forecast_rows from the live model and its DataModule;
    the label at the last input step moves the forecast, an unseen one is counted."""
    import lightning.pytorch as L

    from tests.conftest import model_for

    frame = stores(40)
    dm = SeriesDataModule.from_frame(frame, **options(inputs=["y", "weather"], known_future=None, static=None,
                                                      categorical=["weather"]))  # fmt: skip
    dm.setup()
    assert dm.categorical_sizes == {"inputs": [5], "static": [], "known_future": []}
    model = model_for(dm, categorical_sizes=dm.categorical_sizes, encoder="gru")
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(model, dm)  # fmt: skip
    last = pl.col("time") == 39
    base = forecast_report(model, frame, datamodule=dm).frame
    other = frame.with_columns(pl.when(last).then(pl.lit("Rain")).otherwise("weather").alias("weather"))
    snow = frame.with_columns(pl.when(last).then(pl.lit("Snow")).otherwise("weather").alias("weather"))
    rained = forecast_report(model, other, datamodule=dm)
    snowed = forecast_report(model, snow, datamodule=dm)
    assert base.height == rained.frame.height == 8 and snowed.unseen == {"weather": {"values": 4, "examples": ["Snow"]}}
    changed = frame.filter(last)["weather"] != "Rain"  # the stores whose last label did change
    moved = (base["prediction"] - rained.frame["prediction"]).abs().to_numpy().reshape(4, 2).max(axis=1) > 0
    assert moved.tolist() == changed.to_list()


def test_a_checkpoint_without_the_categorical_state_still_forecasts(tmp_path):
    """A checkpoint of a model without categorical covariates, stripped of what this version adds (as an older
    version saved it), forecasts exactly what the full one does."""
    import lightning.pytorch as L

    from tests.conftest import model_for

    frame = stores(40).select("store", "time", "y", "promo")
    dm = SeriesDataModule.from_frame(frame, id_column="store", time_unit="h", lookback=8, horizon=2)
    model = model_for(dm, encoder="gru")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    ckpt = torch.load(tmp_path / "new.ckpt", weights_only=True)
    for key in ("categorical_sizes", "embedding_dim"):
        del ckpt["hyper_parameters"][key]
    for key in ("categorical", "static_scaler"):
        del ckpt["SeriesDataModule"]["preprocessing"][key]
    torch.save(ckpt, tmp_path / "old.ckpt")
    new, old = forecast_rows(tmp_path / "new.ckpt", frame), forecast_rows(tmp_path / "old.ckpt", frame)
    assert new.height == 16 and new.equals(old)


def test_a_failed_command_leaves_the_run_folder_config_and_a_test_keeps_the_training_one(fitted, tmp_path, capsys):
    # a refused test in a training run's folder rewrote its config.yaml (data.path: other.csv): the next test
    # --config run/config.yaml was refused too
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted["root"] / "run", run, ignore=shutil.ignore_patterns(".lock"))
    config, run_json = (run / "config.yaml").read_bytes(), (run / "run.json").read_bytes()
    other = tmp_path / "other.csv"
    stores().with_columns(pl.col("weather").replace({"Sun": "Sunny"})).write_csv(other)
    ckpt = f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    args = ["test", ckpt, f"--config={run / 'config.yaml'}", f"--run_dir={run}"]
    assert main([*args, f"--data.path={other}"]) == 2
    assert "training labels" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == config and (run / "run.json").read_bytes() == run_json
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml"]
    # a test that passes writes its config beside the training one, which stays config.yaml
    assert main(args) == 0
    assert (run / "config.yaml").read_bytes() == config
    history = json.loads((run / "run.json").read_text())["history"]
    assert [(h["subcommand"], h["config"]) for h in history[1:]] == [("test", "config.2.yaml")]
    assert (run / "config.2.yaml").is_file()
    # fit --resume reads the training config.yaml; the earlier one is kept under its own entry's number
    assert main(["fit", "--resume", str(run), "--trainer.max_epochs=2"]) == 0
    history = json.loads((run / "run.json").read_text())["history"]
    assert [(h["subcommand"], h["config"]) for h in history] == [
        ("fit", "config.1.yaml"), ("test", "config.2.yaml"), ("fit", "config.yaml")
    ]  # fmt: skip
    assert (run / "config.1.yaml").read_bytes() == config


def test_empty_labels_never_seen_in_training_are_counted_on_every_path(fitted, tmp_path, capsys, caplog):
    """Training had no empty weather: three empty future weathers (B's two, C's first) read the untrained 'missing'
    embedding: counted beside the unseen "Snow" in Forecasts.unseen, the notes, forecast_rows' warning, predict's
    summary and the batch job's ``unseen_categories``; the forecast equals the one with code MISSING put in."""
    model, trained = load(fitted["ckpt"])
    assert trained.missing_in_training == []  # recorded in the checkpoint
    b_future, c_first = pl.col("time") >= N_HIST, pl.col("time") == N_HIST
    empty = ((pl.col("store") == "B") & b_future) | ((pl.col("store") == "C") & c_first)
    rows = fitted["rows"].with_columns(pl.when(empty).then(None).otherwise("weather").alias("weather"))
    result = forecast_report(fitted["ckpt"], rows)
    assert result.unseen == {"weather": {"values": 1, "examples": ["Snow"], "empty": 3}}
    note = "categorical column 'weather': 3 empty values, a category never seen in training, read as 'missing' "
    note += "(untrained)"
    assert note in result.notes and result.frame.height == 8
    chunk = prepare(rows, trained, Options())
    batch = chunk.dataset.collate(list(range(len(chunk.dataset))))
    b = int(np.flatnonzero(chunk.series_ids.gather(batch.series.numpy()).to_numpy() == "B")[0])
    assert batch.future_cat[b, :, 0].tolist() == [MISSING, MISSING]
    with torch.no_grad():
        out = model(batch)
    got = result.frame.filter(pl.col("series") == "B").sort("time")["prediction"].to_numpy()
    want = (out[b, :, 0, 0].double() * batch.target_scale[b, 0] + batch.target_loc[b, 0]).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    with caplog.at_level("WARNING", logger="cfc_forecast.forecast.rows"):
        forecast_rows(fitted["ckpt"], rows)
    assert note in caplog.text
    rows.write_csv(tmp_path / "empty.csv")
    assert main(["predict", f"--ckpt_path={fitted['ckpt']}", f"--data.path={tmp_path / 'empty.csv'}",
                 f"--run_dir={tmp_path / 'p'}"]) == 0  # fmt: skip
    assert note in capsys.readouterr().out
    assert job_main(["--ckpt_path", str(fitted["ckpt"]), "--input", str(tmp_path / "empty.csv"), "--output",
                     f"{tmp_path / 'job'}/", "--chunk_size=1", "--progress=false"]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "job" / "manifest.json").read_text())["summary"]
    assert summary["unseen_categories"] == {"weather": {"values": 1, "examples": ["Snow"], "empty": 3}}
    assert note in summary["notes"]
    # a skipped series: the summary names <output>/skipped_series.csv with one slash, the output given with a '/'
    gap = fitted["rows"].filter(~((pl.col("store") == "B") & (pl.col("time") == N_HIST)))
    gap.write_csv(tmp_path / "gap.csv")
    capsys.readouterr()
    assert job_main(["--ckpt_path", str(fitted["ckpt"]), "--input", str(tmp_path / "gap.csv"), "--output",
                     f"{tmp_path / 'gap'}/", "--progress=false"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"series skipped: 1 (see {tmp_path / 'gap' / 'skipped_series.csv'})" in out and "//" not in out
    # a column that had empty values in training is not reported
    trained.missing_in_training = ["weather"]
    assert prepare(rows, trained, Options()).unseen == {"weather": {"values": 1, "examples": ["Snow"]}}


def test_a_number_written_otherwise_than_a_training_label_gets_a_hint():
    from cfc_forecast.forecast.rows import unseen_notes
    from datamodules.categories import label_hint, unseen

    vocab = ["1", "2", "10"]
    labels = pl.Series(["1.0", "2", "1.0", "7"], dtype=pl.String)
    assert unseen(labels, vocab) == (3, ["1.0", "7"])
    hint = label_hint(["1.0", "7"], vocab)
    assert hint == "'1.0' looks like '1' of the training labels: write integers without a decimal point (labels " \
                   "are compared as text)"  # fmt: skip
    assert label_hint(["7", "x"], vocab) is None
    assert label_hint(["2"], ["2.0"]) == "'2' looks like '2.0' of the training labels: write them as training did " \
                                         "(labels are compared as text)"  # fmt: skip
    notes = unseen_notes({"c": {"values": 1, "examples": ["1.0"], "hint": hint}, "d": {"values": 2, "examples": ["x"]}})
    assert notes == [
        f"categorical column 'c': 1 value of categories unseen in training, read as 'unknown' (e.g. ['1.0']); {hint}",
        "categorical column 'd': 2 values of categories unseen in training, read as 'unknown' (e.g. ['x'])",
    ]


def test_integer_labels_stay_labels_when_a_few_are_written_as_decimals(tmp_path, capsys):
    """A user trial: training labels 0/1 (promo, a known-future categorical); prediction rows with two cells
    written `1.0`. The CSV column used to be read as floats as a whole, so every label in it was unseen (and the
    forecasts moved); now categorical columns are read as text: exactly those two cells are unseen."""
    data = tmp_path / "stores.csv"
    frame = stores().with_columns(pl.col("promo").cast(pl.Int64))  # 0 / 1 in the file
    frame.write_csv(data)
    fit = ["fit", *cli_data(data, "--data.categorical=[weather, store_type, promo]"), "--model.hidden_size=8",
           "--model.backbone_units=16", "--model.head_hidden_sizes=[16]", f"--run_dir={tmp_path / 'run'}",
           "--trainer.max_epochs=1", "--seed_everything=0", "--trainer.enable_progress_bar=false",
           "--trainer.enable_model_summary=false"]  # fmt: skip
    assert main(fit) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["SeriesDataModule"]["preprocessing"]["categorical"]
    assert state["vocabularies"]["promo"] == ["0", "1"]
    history = frame.filter(pl.col("time") < N_HIST)
    future = frame.filter(pl.col("time").is_between(N_HIST, N_HIST + 1))
    rows = pl.concat([history, future.with_columns(pl.lit(None, pl.Float64).alias("y"))])
    rows = rows.with_columns(pl.col("promo").cast(pl.String))
    decimals = (pl.col("store").is_in(["A", "B"])) & (pl.col("time") == N_HIST + 1)
    rows = rows.with_columns(pl.when(decimals).then(pl.col("promo") + ".0").otherwise(pl.col("promo")).alias("promo"))
    rows.write_csv(tmp_path / "new.csv")
    capsys.readouterr()
    assert main(["predict", f"--ckpt_path={ckpt}", f"--data.path={tmp_path / 'new.csv'}",
                 f"--run_dir={tmp_path / 'p'}"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "'promo': 2 values of categories unseen in training" in out, out
    assert job_main(["--ckpt_path", str(ckpt), "--input", str(tmp_path / "new.csv"), "--output",
                     str(tmp_path / "job"), "--progress=false"]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "job" / "manifest.json").read_text())["summary"]
    assert summary["unseen_categories"]["promo"]["values"] == 2
