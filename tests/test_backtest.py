"""``cfc-forecast backtest``: origins on the calendar, the model through the one forecast function, the baselines
and the scores recomputed by hand, resuming, refusals, and a refit backtest equal to a hand-made sequence of fits.

Nothing here depends on how well the tiny models learned: the model's rows are compared with ``forecast_rows`` of
the same checkpoint, the naive baseline with the last value before each origin, the scores with numpy.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
import yaml

from cfc_forecast.backtest import backtest
from cfc_forecast.cli import cli
from cfc_forecast.commands import main
from cfc_forecast.errors import UserError
from cfc_forecast.forecast import forecast_rows

ZONE = "Europe/Berlin"


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


def hourly(path: Path) -> pl.DataFrame:
    """Three hourly series in Berlin time, 16-30 March 2026 (across the change to summer time on the 29th)."""
    rng = np.random.default_rng(0)
    stamps = pl.datetime_range(datetime(2026, 3, 16), datetime(2026, 3, 30, 23), "1h", time_zone=ZONE, eager=True)
    h = np.arange(len(stamps), dtype=np.float64)
    frame = pl.concat([
        pl.DataFrame({"id": f"s{s}", "t": stamps, "y": 5.0 * s + np.sin(h / 4) + 0.1 * rng.standard_normal(len(h)),
                      "x": np.cos(h / 4)})
        for s in range(3)
    ])  # fmt: skip
    frame.write_parquet(path)
    return frame


def config(tmp: Path, **data: object) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 2,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "data": {"class_path": "datamodules.SeriesDataModule",
                 "init_args": {"path": str(tmp / "rows.parquet"), "id_column": "id", "time_column": "t",
                               "targets": ["y"], "lookback": 8, "horizon": 3, "stride": 4, "time_unit": "h", **data}},
        "model": {"hidden_size": 8, "backbone_units": 8, "head": "direct"},
    }  # fmt: skip
    path = tmp / f"fit{len(list(tmp.glob('fit*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backtest")
    frame = hourly(tmp / "rows.parquet")
    cfg = config(tmp, split_times=["2026-03-26 00:00", "2026-03-28 00:00"])
    with pytest.MonkeyPatch.context() as mp:  # the CLI runs on its args, not pytest's
        mp.setattr("sys.argv", ["cfc-forecast"])
        cli(["fit", f"--config={cfg}", f"--run_dir={tmp / 'run'}"])
    return tmp, frame, cfg, tmp / "run" / "checkpoints" / "best.ckpt"


def test_origins_keep_the_wall_clock_time_across_dst_and_the_model_rows_are_forecast_rows(fitted):
    tmp, frame, cfg, ckpt = fitted
    out = tmp / "bt"
    overall = backtest(str(cfg), n_windows=3, step="1d", output=str(out), ckpt_path=str(ckpt))
    got = pl.read_parquet(out / "forecasts.parquet")
    origins = got["origin_time"].unique().sort()
    # the last origin is the last stamp (30 Mar 23:00) minus the 3 h the model forecasts; one calendar day apart
    assert [o.strftime("%d %H:%M %z") for o in origins] == ["28 20:00 +0100", "29 20:00 +0200", "30 20:00 +0200"]
    assert np.diff(origins.dt.epoch("s").to_numpy()).tolist() == [23 * 3600, 24 * 3600]
    assert sorted(got["forecaster"].unique()) == ["linear", "model", "naive"]
    model = got.filter(pl.col("forecaster") == "model")
    for origin in origins:
        alone = forecast_rows(str(ckpt), frame, origins=[origin.isoformat()])
        mine = model.filter(pl.col("origin_time") == origin).select(alone.columns)
        assert mine.shape == alone.shape == (3 * 3, 5)
        np.testing.assert_allclose(mine["prediction"].to_numpy(), alone["prediction"].to_numpy(), rtol=0, atol=1e-6)
    assert got["actual"].null_count() == 0 and got["step"].max() == 3

    # the naive baseline is the last value before each origin
    naive = got.filter(pl.col("forecaster") == "naive")
    for series, origin, value in naive.select("series", "origin_time", "prediction").unique().iter_rows():
        before = frame.filter((pl.col("id") == series) & (pl.col("t") < origin))["y"][-1]
        assert value == pytest.approx(before, abs=1e-5)

    # the overall scores, by hand from the forecasts
    for who in ("model", "naive", "linear"):
        part = got.filter(pl.col("forecaster") == who)
        err = part["prediction"].to_numpy() - part["actual"].to_numpy()
        row = overall.filter(pl.col("forecaster") == who).row(0, named=True)
        assert row["n"] == 27
        assert row["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-9)
        assert row["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-9)
        assert row["wql"] == pytest.approx(np.abs(err).sum() / np.abs(part["actual"].to_numpy()).sum(), rel=1e-9)
    assert pl.read_csv(out / "metrics_by_origin.csv").height == 3 * 3
    assert (out / "backtest.png").stat().st_size > 0


def test_a_killed_backtest_continues_with_the_origins_not_done(fitted):
    tmp, _, cfg, ckpt = fitted
    out = tmp / "resume"
    args = dict(n_windows=2, step="1d", output=str(out), ckpt_path=str(ckpt))
    backtest(str(cfg), **args)
    first = pl.read_parquet(out / "forecasts.parquet")
    kept = (out / "origins" / "0000.parquet").stat().st_mtime_ns
    (out / "origins" / "0001.parquet").unlink()  # as if killed before the last origin
    backtest(str(cfg), **args)
    assert (out / "origins" / "0000.parquet").stat().st_mtime_ns == kept
    assert pl.read_parquet(out / "forecasts.parquet").equals(first)
    with pytest.raises(UserError, match="other settings"):
        backtest(str(cfg), **{**args, "n_windows": 1})


def test_refusals_are_one_line(fitted, capsys):
    tmp, _, cfg, ckpt = fitted
    # a fourth origin (27 Mar 20:00) lies in the validation split, which picked best.ckpt
    args = [
        "backtest",
        f"--config={cfg}",
        "--n_windows=4",
        "--step=1d",
        f"--output={tmp / 'no'}",
        f"--ckpt_path={ckpt}",
    ]
    assert main(args) == 2
    assert "inside the checkpoint's train / validation range" in capsys.readouterr().err
    assert not (tmp / "no").exists()  # a refused backtest leaves no folder (a rerun into it would be refused)
    assert main(["backtest", f"--config={cfg}", "--n_windows=2", "--step=1d", "--refit=sometimes"]) == 2
    assert "--refit must be" in capsys.readouterr().err
    assert main(["backtest", f"--config={tmp / 'none.yaml'}", "--n_windows=2", "--step=1d", "--refit=every"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_refit_backtest_equals_a_hand_made_sequence_of_fits(fitted):
    tmp, frame, _, _ = fitted
    cfg = config(tmp)  # split_fractions 0.7 / 0.15 / 0.15: each fold's validation is the last 0.15/0.85 before it
    out = tmp / "refit"
    backtest(str(cfg), n_windows=2, step="1d", output=str(out), refit="every")
    got = pl.read_parquet(out / "forecasts.parquet").filter(pl.col("forecaster") == "model")
    first = frame["t"].min().astimezone(timezone.utc)  # absolute times: aware datetimes subtract wall clocks
    for i, origin in enumerate(got["origin_time"].unique().sort()):
        cut = first + (origin.astimezone(timezone.utc) - first) * (0.7 / 0.85)
        run = tmp / f"hand{i}"
        cli(["fit", f"--config={cfg}", f"--run_dir={run}", "--test_after_fit=false",
             f'--data.split_times=["{cut.isoformat()}", "{origin.isoformat()}"]'])  # fmt: skip
        hand = forecast_rows(str(run / "checkpoints" / "best.ckpt"), frame, origins=[origin.isoformat()])
        mine = got.filter(pl.col("origin_time") == origin)
        assert mine["time"].equals(hand["time"])
        np.testing.assert_allclose(mine["prediction"].to_numpy(), hand["prediction"].to_numpy(), rtol=0, atol=1e-6)
        assert (out / "fits" / f"{i:04d}" / "checkpoints" / "best.ckpt").is_file()
    folds = yaml.safe_load((out / "backtest.json").read_text())["folds"]
    assert [f["seed"] for f in folds.values()] == [0, 0]


def continuous_fit(tmp: Path, data_class: str, data: dict) -> tuple[dict, Path, Path]:
    """One brief ``fit`` of a small continuous-head model on ``data_class(**data)``: (config, its file, best.ckpt)."""
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "data": {"class_path": data_class, "init_args": {**data, "batch_size": 16}},
        "model": {"hidden_size": 8, "backbone_units": 16, "query_cell_units": 8, "head": "continuous"},
    }  # fmt: skip
    path = tmp / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli(["fit", f"--config={path}", f"--run_dir={tmp / 'run'}"])
    return cfg, path, tmp / "run" / "checkpoints" / "best.ckpt"


def test_an_irregular_series_is_forecast_at_its_own_observed_times(tmp_path, capsys):
    """A continuous-time head is queried at each series' observed times after the origin: every observed target
    value in [origin, origin + forecast] is scored, none is resampled."""
    data = {"n_series": 8, "mean_observations": 60, "duration": 40, "observe": 4, "forecast": 2, "every": 1}
    cfg, path, ckpt = continuous_fit(tmp_path, "datamodules.SyntheticDataModule", data)
    out = tmp_path / "bt"
    overall = backtest(str(path), n_windows=2, step=2.0, output=str(out), ckpt_path=str(ckpt))
    got = pl.read_parquet(out / "forecasts.parquet")
    from datamodules import SyntheticDataModule

    rows = SyntheticDataModule(**cfg["data"]["init_args"])._read()
    targets = [c for c in rows.columns if c not in ("series", "time")]
    for origin in got["origin_time"].unique():
        model = got.filter((pl.col("forecaster") == "model") & (pl.col("origin_time") == origin))
        lead = (model["time"] - model["origin_time"]).to_numpy()
        assert lead.min() >= 0 and lead.max() <= 2
        forecast = rows.filter(pl.col("series").is_in(model["series"].unique().implode()))
        span = forecast.filter(pl.col("time").is_between(origin, origin + 2))
        observed = sum(span[t].is_not_null().sum() for t in targets)
        assert model["actual"].is_not_null().sum() == observed > 0
        naive = got.filter((pl.col("forecaster") == "naive") & (pl.col("origin_time") == origin))
        assert naive.select("series", "time", "variable").equals(model.select("series", "time", "variable"))
    assert (
        overall.filter(pl.col("forecaster") == "model")["n"].sum()
        == got.filter((pl.col("forecaster") == "model") & pl.col("actual").is_not_null()).height
    )
    # refusals show numeric times with at most 6 significant digits, and name --horizon
    args = ["backtest", f"--config={path}", f"--ckpt_path={ckpt}", f"--output={tmp_path / 'no'}"]
    assert main([*args, "--n_windows=5", "--step=2.001"]) == 2
    err = capsys.readouterr().err
    assert "lies inside the checkpoint's train / validation range" in err, err
    numbers = re.findall(r"(?:origin|starts at) (-?[0-9.]+)", err)
    assert len(numbers) == 2 and all(len(n.replace(".", "").replace("-", "").lstrip("0")) <= 6 for n in numbers)
    assert main([*args, "--n_windows=2", "--step=2", "--horizon=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--horizon must be a positive duration such as '6h'" in err, err


def test_refit_every_k_origins_and_a_fold_killed_before_its_end_resumes(fitted):
    tmp, _, _, _ = fitted
    cfg = config(tmp)
    out = tmp / "refit2"
    args = dict(n_windows=2, step="1d", output=str(out), refit=2)
    backtest(str(cfg), **args)
    got = pl.read_parquet(out / "forecasts.parquet")
    assert got["fold"].unique().to_list() == [0] and sorted(p.name for p in (out / "fits").iterdir()) == ["0000"]
    # as if killed after the fit's last.ckpt, before the fold was recorded and the second origin written
    (out / "fits" / "0000" / "fold.json").unlink()
    (out / "origins" / "0001.parquet").unlink()
    backtest(str(cfg), **args)
    history = json.loads((out / "fits" / "0000" / "run.json").read_text())["history"]
    assert [h["subcommand"] for h in history] == ["fit", "fit"] and "resumed_from" in history[1]
    assert pl.read_parquet(out / "forecasts.parquet").equals(got)


def test_step_fit_args_and_horizon_leftovers(fitted, capsys):
    tmp, _, cfg, ckpt = fitted
    base = ["backtest", f"--config={cfg}", "--n_windows=2", f"--ckpt_path={ckpt}"]
    # a negative --step, written with a space (argparse took -1d for an option) or with '='
    for step in (["--step", "-1d"], ["--step=-1d"], ["--step=-3"], ["--step=0"]):
        assert main([*base, *step, f"--output={tmp / 'neg'}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--step must be a positive duration such as '1d'" in err, err
    # --fit_args without refit would be ignored: refused
    assert main([*base, "--step=1d", "--fit_args=[--trainer.max_epochs=2]", f"--output={tmp / 'fa'}"]) == 2
    err = capsys.readouterr().err
    assert "--fit_args" in err and "--refit never fits nothing" in err and err.count("\n") == 1
    # a horizon past the 3 h the model forecasts: one warning line, counted in the summary and backtest.json
    out = tmp / "long"
    assert main([*base, "--step=1d", "--horizon=5h", f"--output={out}"]) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "warning" in line]
    assert warned == ["cfc-forecast backtest: warning: --horizon 5h (5 h) is beyond the 3 h the model was trained to "
                      "forecast: past that its forecasts are extrapolations (a fixed-step head forecasts its K steps "
                      "only)"]  # fmt: skip
    assert "2 origins; 1 warning (backtest.json)" in captured.out
    assert json.loads((out / "backtest.json").read_text())["warnings"] == [warned[0].split("warning: ")[1]]
    assert main([*base, "--step=1d", "--horizon=3h", f"--output={tmp / 'same'}"]) == 0
    assert "warning" not in capsys.readouterr().err
    # a --horizon that is not a positive duration: one line naming it, nothing written
    for horizon in (["--horizon=0"], ["--horizon=0h"], ["--horizon", "-2"], ["--horizon=-2h"]):
        assert main([*base, "--step=1d", *horizon, f"--output={tmp / 'h0'}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--horizon must be a positive duration such as '6h'" in err, err
        assert not (tmp / "h0").exists()
    assert main([*base, "--step=1d", "--horizon=2x", f"--output={tmp / 'h0'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --horizon='2x': 'x' is not a time unit; write a number and one of" in err
    assert not (tmp / "h0").exists()


def test_a_failing_first_refit_fold_names_its_fold_origin_and_folder(fitted, capsys):
    tmp, _, _, _ = fitted
    cfg = config(tmp)
    out = tmp / "failing"
    args = ["backtest", f"--config={cfg}", "--n_windows=2", "--step=1d", "--refit=every", f"--output={out}"]
    assert main([*args, "--fit_args=[--model.loss=pinball]"]) == 2  # pinball without quantiles: the fit refuses
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"fold 0 (origin 2026-03-29T20:00:00+02:00, run folder {out / 'fits' / '0000'}): " in err
    assert "--model.loss pinball needs --model.quantiles" in err


def test_a_calibrated_checkpoint_backtests_with_its_intervals(fitted, capsys):
    from cfc_forecast.calibrate import calibrate

    tmp, _, cfg, ckpt = fitted
    calibrated = calibrate(str(ckpt), [0.5, 0.8], config=str(cfg), output=str(tmp / "cal.ckpt"), min_scores=5).path
    out = tmp / "bt-cal"
    overall = backtest(str(cfg), n_windows=2, step="1d", output=str(out), ckpt_path=str(calibrated))
    got = pl.read_parquet(out / "forecasts.parquet").filter(pl.col("forecaster") == "model")
    assert {"q0.1", "q0.25", "q0.5", "q0.75", "q0.9"} <= set(got.columns)
    assert (got["q0.1"] <= got["prediction"]).all() and (got["prediction"] <= got["q0.9"]).all()
    # a coverage and a width per calibrated level, each by hand from the forecasts
    model = overall.filter(pl.col("forecaster") == "model").row(0, named=True)
    y = got["actual"].to_numpy()
    for level, lo, hi in ((50, "q0.25", "q0.75"), (80, "q0.1", "q0.9")):
        inside = (y >= got[lo].to_numpy()) & (y <= got[hi].to_numpy())
        assert model[f"coverage_{level}"] == pytest.approx(inside.mean(), rel=1e-12)
        assert model[f"width_{level}"] == pytest.approx((got[hi] - got[lo]).mean(), rel=1e-9)
    assert model["width_80"] > model["width_50"] > 0
    assert {"coverage_50", "width_50", "coverage_80", "width_80"} <= set(pl.read_csv(out / "metrics.csv").columns)
    naive = overall.filter(pl.col("forecaster") == "naive")
    assert naive["coverage_80"].is_null().all()  # a point forecast has no interval
    assert "coverage" not in overall.columns


def test_series_skipped_or_not_scored_at_some_origins_are_counted_and_warned(fitted, capsys):
    """s1 has no rows before 30 Mar (skipped at the first two origins: too short), s2 none after 29 Mar 00:00 (its
    last two origins' forecasts have no actual): 5 of the 9 (series, origin) pairs are scored."""
    tmp, frame, _, ckpt = fitted
    (tmp / "holes").mkdir()
    holes = frame.filter(
        ~((pl.col("id") == "s1") & (pl.col("t") < datetime(2026, 3, 30, tzinfo=ZoneInfo(ZONE))))
        & ~((pl.col("id") == "s2") & (pl.col("t") >= datetime(2026, 3, 29, tzinfo=ZoneInfo(ZONE))))
    )
    holes.write_parquet(tmp / "holes" / "rows.parquet")
    cfg = config(tmp / "holes", split_times=["2026-03-26 00:00", "2026-03-28 00:00"])
    out = tmp / "bt-holes"
    assert main(["backtest", f"--config={cfg}", "--n_windows=3", "--step=1d", f"--ckpt_path={ckpt}",
                 f"--output={out}"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "warning" in line]
    assert warned == [
        "cfc-forecast backtest: warning: scored 5 of 9 (series, origin) pairs (3 of 3 origins, 3 "
        "series): 2 skipped (skipped_series.csv), 2 forecast only at times without an observed value (a direct-head "
        "model forecasts on its grid, origin + k x each series' spacing: where the data has no rows at those times, "
        "fit with --model.head continuous)"
    ]
    skipped = pl.read_csv(out / "skipped_series.csv")
    assert skipped["series"].to_list() == ["s1", "s1"]
    assert skipped["reason"].to_list() == [
        f"origin {o}: too short for the model's context: fewer than 8 rows before the origin"
        for o in ("2026-03-28T20:00:00+01:00", "2026-03-29T20:00:00+02:00")
    ]
    assert f"series skipped: 2 of 9 (series, origin) (see {out / 'skipped_series.csv'})" in captured.out
    assert "3 origins; 2 (series, origin) skipped (skipped_series.csv); 1 warning (backtest.json)" in captured.out
    saved = json.loads((out / "backtest.json").read_text())
    assert saved["warnings"] == [warned[0].split("warning: ")[1]]
    assert {k: saved["counts"][k] for k in ("series_origins", "skipped", "forecast", "scored")} == {
        "series_origins": 9, "skipped": 2, "forecast": 7, "scored": 5}  # fmt: skip


def test_the_partial_warning_names_only_what_was_written_and_the_grid_hint_for_a_grid_head(fitted):
    # "0 skipped (skipped_series.csv)" once pointed to a file never written
    from dataclasses import replace

    from cfc_forecast.backtest.report import partial_warning
    from cfc_forecast.forecast.trained import read_checkpoint

    direct = read_checkpoint(fitted[3])[1]
    assert direct.head == "direct"
    tally = {"series_origins": 12, "skipped": 0, "forecast": 12, "scored": 1, "scored_origins": 1, "scored_series": 1}
    head = "fit with --model.head continuous"
    start = "scored 1 of 12 (series, origin) pairs (1 of 4 origins, 1 series): 11 forecast only at times without an"
    [line] = partial_warning(tally, 4, direct)
    assert line.startswith(start) and "skipped" not in line and line.endswith(f"{head})")
    [line] = partial_warning(tally, 4, replace(direct, head="continuous"))
    assert line == f"{start} observed value"
    [line] = partial_warning(tally | {"skipped": 11, "forecast": 1}, 4, direct)
    assert line.endswith("1 series): 11 skipped (skipped_series.csv)")  # every forecast pair scored: no hint


def irregular(path: Path) -> None:
    """Three series read every 30-90 minutes (never on a regular grid), with a categorical ``weather``."""
    rng = np.random.default_rng(1)
    parts = []
    for s in range(3):
        seconds = np.cumsum(rng.integers(1800, 5401, 300))
        parts.append(pl.DataFrame({
            "id": f"s{s}", "t": [datetime(2026, 1, 1) + timedelta(seconds=int(m)) for m in seconds],
            "y": np.sin(seconds / 18000) + s, "weather": rng.choice(["sun", "rain"], len(seconds)),
        }))  # fmt: skip
    pl.concat(parts).write_csv(path)


@pytest.mark.parametrize("future", [True, False], ids=["known_future", "numeric"])
def test_a_grid_head_on_irregular_data_scores_nothing_and_is_refused(tmp_path, capsys, future):
    """A direct head forecasts at origin + k x spacing; irregular rows are never there: with a known-future
    covariate every series is skipped (no row at the query times), without one no forecast has an actual. Either
    way the backtest says so and exits 2, keeping the forecasts and the skipped series."""
    irregular(tmp_path / "rows.csv")
    data = {"path": str(tmp_path / "rows.csv"), "inputs": ["y"]}
    if future:
        data |= {"known_future": ["weather"], "categorical": ["weather"]}
    cfg = config(tmp_path, **data)
    cli(["fit", f"--config={cfg}", f"--run_dir={tmp_path / 'run'}", "--trainer.limit_val_batches=1"])
    out = tmp_path / "bt"
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert main(["backtest", f"--config={cfg}", "--n_windows=3", "--step=12h", f"--ckpt_path={ckpt}",
                 f"--output={out}"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cfc-forecast backtest: error: "), err
    assert "a direct-head model forecasts on its grid (origin + k x each series' spacing" in err
    assert "fit with --model.head continuous" in err and f"kept in {out}" in err
    got = pl.read_parquet(out / "forecasts.parquet")
    counts = json.loads((out / "backtest.json").read_text())["counts"]
    assert not (out / "metrics.csv").exists()
    if future:
        assert err.startswith("cfc-forecast backtest: error: no series could be forecast at any origin (9 ")
        skipped = pl.read_csv(out / "skipped_series.csv")
        assert skipped.height == 9 and sorted(skipped["series"].unique()) == ["s0", "s1", "s2"]
        assert skipped["reason"].str.contains("no row with the known-future covariates [weather]", literal=True).all()
        assert skipped["reason"].str.contains(r"^origin 2026-01-\d\dT\d\d:\d\d:\d\d: ").all()  # as written
        # the fix a backtest can act on: rows after the origin are the data's own, none to add
        assert not skipped["reason"].str.contains("rows after the end").any()
        assert (
            skipped["reason"]
            .str.ends_with(
                "the data has no row with them at that time: a direct-head model forecasts on its grid (origin + k x "
                "each series' spacing) and those times do not match the data's rows; fit with --model.head continuous"
            )
            .all()
        )
        # one reason counted over every origin, keyed without its origin (a date-time's colons once kept them apart)
        assert counts["skipped_by_reason"] == {
            "no row with the known-future covariates at a query time; the data has no row with them at that time: a "
            "direct-head model forecasts on its grid and those times do not match the data's rows; fit with "
            "--model.head continuous": 9
        }
        assert err.count("--model.head continuous") == 1 and "rows after the end" not in err
        assert got.filter(pl.col("forecaster") == "model").height == 0
        assert (counts["skipped"], counts["forecast"], counts["scored"]) == (9, 0, 0)
    else:
        assert "no forecast time has an observed value" in err
        assert not (out / "skipped_series.csv").exists()
        model = got.filter(pl.col("forecaster") == "model")
        assert model.height == 3 * 3 * 3 and model["actual"].null_count() == model.height
        assert (counts["skipped"], counts["forecast"], counts["scored"]) == (0, 9, 0)


def test_times_in_messages_are_written_in_the_datas_own_form():
    from datamodules.stamps import shown_time, user_time
    from datamodules.timing import TimeCodec

    numbers = TimeCodec("h", is_datetime=False)
    assert [shown_time(t, numbers) for t in (18.998999999999995, 84.99915, 1.7e9 + 0.123, 3.0)] == [
        "18.999", "84.9992", "1700000000", "3"]  # fmt: skip
    t = datetime(2026, 3, 29, 20, tzinfo=ZoneInfo(ZONE)).timestamp() / 3600
    assert shown_time(t, TimeCodec("h", True, ZONE)) == "2026-03-29T20:00:00+02:00"
    formatted = TimeCodec("h", True, None, "%d/%m/%Y %H:%M")  # naive stamps read with a format: written with it
    t = datetime(2026, 3, 29, 20, tzinfo=timezone.utc).timestamp() / 3600
    assert shown_time(t, formatted) == "29/03/2026 20:00"
    assert user_time(shown_time(t, formatted), formatted, "x") == pytest.approx(t, abs=1e-9)


def test_a_count_window_model_with_a_continuous_head_backtests_beside_a_linear_map_to_its_query_times(tmp_path):
    """A user trial: count windows (lookback 8, horizon 3) with ``--model.head continuous`` crashed the backtest:
    the linear baseline, fitted as a map to the 3 grid steps, was reshaped to the model's query times. It is now
    fitted in the model's form (to each query time) and scored on the same rows."""
    from datamodules import SyntheticDataModule

    rows = SyntheticDataModule(n_series=8, mean_observations=60, duration=40)._read()  # irregular times
    rows.write_parquet(tmp_path / "rows.parquet")
    targets = [c for c in rows.columns if c not in ("series", "time")]
    data = {"path": str(tmp_path / "rows.parquet"), "id_column": "series", "time_column": "time", "targets": targets,
            "lookback": 8, "horizon": 3, "stride": 2}  # fmt: skip
    _, path, ckpt = continuous_fit(tmp_path, "datamodules.SeriesDataModule", data)
    out = tmp_path / "bt"
    overall = backtest(str(path), n_windows=2, step=2.0, output=str(out), ckpt_path=str(ckpt))
    got = pl.read_parquet(out / "forecasts.parquet")
    model = got.filter(pl.col("forecaster") == "model").select("series", "origin_time", "time", "variable")
    linear = got.filter(pl.col("forecaster") == "linear")
    assert model.height and linear.select(model.columns).sort(model.columns).equals(model.sort(model.columns))
    assert linear["prediction"].is_finite().all()
    assert set(overall["forecaster"]) == {"model", "naive", "linear"}
