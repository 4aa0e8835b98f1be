"""Calendar-correct time on every path (fit, ``cfc-forecast predict``, ``forecast_rows``, the batch job): forecasts of
series spaced by whole days fall on the same wall-clock time across both DST changes and month ends, the calendar
inputs are those of the forecast stamps, durations in days are calendar days in a time zone, and the default grid of
other series is a clean step. The tiny models' forecasts are never asserted, only their time stamps and inputs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest

from cfc_forecast.commands import main
from cfc_forecast.errors import UserError
from cfc_forecast.forecast import forecast_rows
from cfc_forecast.forecast import main as job_main
from cfc_forecast.forecast.options import options_for
from cfc_forecast.forecast.prepare import prepare
from cfc_forecast.forecast.trained import read_checkpoint
from datamodules import SeriesDataModule
from tests.conftest import model_for

BERLIN = "Europe/Berlin"
WEEKDAY = {"Mon": 0, "Tue": 1, "Wed": 2, "Thu": 3, "Fri": 4, "Sat": 5, "Sun": 6}


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


def local_series(start: datetime, end: datetime, every: str, n_series: int = 2, zone: str = BERLIN) -> pl.DataFrame:
    """Series at a local wall-clock time every ``every`` ("1d", "1w", "1h") in ``zone``: id, t, y."""
    naive = pl.datetime_range(start, end, every, eager=True)
    t = (
        naive.dt.replace_time_zone(zone)
        if every != "1h"
        else naive.dt.replace_time_zone("UTC").dt.convert_time_zone(zone)
    )
    rows = [
        pl.DataFrame({"id": f"s{s}", "t": t, "y": 10.0 * s + np.sin(np.arange(len(t)) * 2 * np.pi / 7)})
        for s in range(n_series)
    ]
    return pl.concat(rows)


def fit(frame: pl.DataFrame, root: Path, head: str = "direct", **data: object) -> Path:
    """A tiny model (two training batches) and its checkpoint; ``root/train.parquet`` holds ``frame``."""
    frame.write_parquet(root / "train.parquet")
    dm = SeriesDataModule.from_frame(frame, id_column="id", time_column="t", targets=["y"], batch_size=8, **data)
    dm.setup()
    L.seed_everything(0, verbose=False)
    model = model_for(dm, hidden_size=8, backbone_units=8, head_hidden_sizes=[8], query_cell_units=8, head=head)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, dm)
    trainer.save_checkpoint(root / "model.ckpt")
    return root / "model.ckpt"


def local(frame: pl.DataFrame, series: str = "s0") -> list[str]:
    p = frame.filter(pl.col("series") == series).sort("origin_time", "time")
    return p["time"].dt.strftime("%a %Y-%m-%d %H:%M %Z").to_list()


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """Daily series at local midnight in Berlin, 2026-01-01 .. 2026-10-29, with a day_of_week input."""
    root = tmp_path_factory.mktemp("daily")
    frame = local_series(datetime(2026, 1, 1), datetime(2026, 10, 29), "1d")
    ckpt = fit(frame, root, time_unit="d", lookback=14, horizon=4, stride=7, calendar=["day_of_week"])
    return {"root": root, "frame": frame, "ckpt": ckpt}


def test_daily_training_inputs_are_the_local_weekdays(daily):
    dm = SeriesDataModule.from_frame(daily["frame"], id_column="id", time_column="t", targets=["y"], time_unit="d",
                                     lookback=14, horizon=4, calendar=["day_of_week"])  # fmt: skip
    dm.setup()
    stamps = dm.decode_times(dm._built.tensors.times.numpy())
    assert stamps.dt.hour().unique().to_list() == [0]  # local midnight throughout, summer time included
    want = (stamps.dt.weekday().to_numpy() - 1) / 6.0 - 0.5
    np.testing.assert_allclose(dm._built.tensors.future[:, 0].numpy(), want, atol=1e-6)


def test_daily_forecasts_fall_on_local_midnight_across_a_month_end_in_predict_and_the_job(daily, tmp_path, capsys):
    args = ["predict", f"--ckpt_path={daily['ckpt']}", f"--data.path={daily['root'] / 'train.parquet'}"]
    assert main([*args, f"--run_dir={tmp_path / 'p'}"]) == 0
    want = [
        "Fri 2026-10-30 00:00 CET",
        "Sat 2026-10-31 00:00 CET",
        "Sun 2026-11-01 00:00 CET",
        "Mon 2026-11-02 00:00 CET",
    ]
    predicted = pl.read_parquet(tmp_path / "p" / "predictions.parquet")
    assert local(predicted) == want
    job = ["--ckpt_path", str(daily["ckpt"]), "--input", str(daily["root"] / "train.parquet"), "--progress=false"]
    assert job_main([*job, "--output", str(tmp_path / "job")]) == 0
    assert local(pl.read_parquet(tmp_path / "job" / "*.parquet")) == want
    assert local(forecast_rows(daily["ckpt"], daily["frame"])) == want


@pytest.mark.parametrize(
    ("origin", "want"),
    [  # spring forward (a 23 h day), then a month end; fall back (a 25 h day)
        ("2026-03-28", ["Sun 2026-03-29 00:00 CET", "Mon 2026-03-30 00:00 CEST", "Tue 2026-03-31 00:00 CEST",
                        "Wed 2026-04-01 00:00 CEST"]),
        ("2026-10-24", ["Sun 2026-10-25 00:00 CEST", "Mon 2026-10-26 00:00 CET", "Tue 2026-10-27 00:00 CET",
                        "Wed 2026-10-28 00:00 CET"]),
    ],
)  # fmt: skip
def test_daily_forecasts_and_their_weekday_inputs_across_both_dst_changes(daily, tmp_path, origin, want):
    job = ["--ckpt_path", str(daily["ckpt"]), "--input", str(daily["root"] / "train.parquet"), "--progress=false"]
    assert job_main([*job, "--output", str(tmp_path / "job"), f"--origins=['{origin}']"]) == 0
    assert local(pl.read_parquet(tmp_path / "job" / "*.parquet")) == want
    assert local(forecast_rows(daily["ckpt"], daily["frame"], origins=[origin])) == want
    # the day_of_week input the head reads at each query is the forecast stamp's own weekday
    _, trained = read_checkpoint(daily["ckpt"])
    options = options_for(trained, daily["frame"].schema["t"], origins=[origin])
    chunk = prepare(daily["frame"].filter(pl.col("id") == "s0"), trained, options)
    future = chunk.dataset.query_future[0, :, 0].numpy()
    np.testing.assert_allclose(future, [WEEKDAY[w[:3]] / 6.0 - 0.5 for w in want], atol=1e-6)


def test_weekly_forecasts_keep_the_local_clock_time(tmp_path):
    frame = local_series(datetime(2025, 1, 6, 9), datetime(2026, 3, 23, 9), "1w")  # Mondays 09:00, to spring 2026
    ckpt = fit(frame, tmp_path, time_unit="d", lookback=6, horizon=3, stride=2, calendar=["hour_of_day"])
    got = local(forecast_rows(ckpt, frame))
    assert got == ["Mon 2026-03-30 09:00 CEST", "Mon 2026-04-06 09:00 CEST", "Mon 2026-04-13 09:00 CEST"]


def test_hourly_series_across_both_dst_changes_stay_one_hour_apart(tmp_path):
    spring = local_series(datetime(2026, 3, 27), datetime(2026, 3, 29, 0), "1h")  # ends 01:00 CET on 03-29
    ckpt = fit(spring, tmp_path, time_unit="h", lookback=8, horizon=3, stride=4, calendar=["hour_of_day"])
    got = forecast_rows(ckpt, spring).filter(pl.col("series") == "s0")
    assert got["time"].dt.strftime("%H:%M %Z").to_list() == ["03:00 CEST", "04:00 CEST", "05:00 CEST"]
    autumn = local_series(datetime(2026, 10, 23), datetime(2026, 10, 25, 0), "1h")  # ends 02:00 CEST on 10-25
    got = forecast_rows(ckpt, autumn).filter(pl.col("series") == "s0")
    assert got["time"].dt.strftime("%H:%M %Z").to_list() == ["02:00 CET", "03:00 CET", "04:00 CET"]


def test_irregular_series_get_a_clean_default_grid(tmp_path):
    rng = np.random.default_rng(0)
    start = datetime(2026, 1, 1)
    rows = []
    for s in range(2):  # about every 33 minutes, never twice the same spacing
        minutes = np.cumsum(30 + rng.uniform(0, 6, 60))
        t = [start + timedelta(minutes=float(m)) for m in minutes]
        rows.append(pl.DataFrame({"id": f"s{s}", "t": t, "y": np.sin(minutes / 60.0)}))
    frame = pl.concat(rows).with_columns(pl.col("t").dt.cast_time_unit("us"))
    ckpt = fit(frame, tmp_path, time_unit="h", lookback=8, horizon=3, stride=4)
    got = forecast_rows(ckpt, frame)
    ahead = (got["time"] - got["origin_time"]).dt.total_seconds().unique().sort().to_list()
    assert ahead == [1800, 3600, 5400]  # 30 min steps, not 00:32:14.999916


def test_the_default_grid_of_a_duration_model_stays_within_its_forecast_span(tmp_path):
    # readings about every 48 minutes, a 6 h forecast span: the clean step is 1 h, so 6 queries, the last at
    # origin + 6 h (the number of steps once came from the raw 48 min median: 7 steps of 1 h, past the span)
    rng = np.random.default_rng(1)
    start = datetime(2026, 1, 1)
    rows = []
    for s in range(2):
        minutes = np.cumsum(45 + rng.uniform(0, 6, 150))
        t = [start + timedelta(minutes=float(m)) for m in minutes]
        rows.append(pl.DataFrame({"id": f"s{s}", "t": t, "y": np.sin(minutes / 90.0)}))
    frame = pl.concat(rows).with_columns(pl.col("t").dt.cast_time_unit("us"))
    ckpt = fit(frame, tmp_path, head="continuous", time_unit="h", observe="24h", forecast="6h", every="6h")
    got = forecast_rows(ckpt, frame)
    ahead = (got["time"] - got["origin_time"]).dt.total_seconds().unique().sort().to_list()
    assert ahead == [3600.0 * k for k in range(1, 7)]


def test_query_times_in_days_are_calendar_days_in_predict_and_the_job(tmp_path):
    frame = local_series(datetime(2026, 10, 20), datetime(2026, 10, 24, 12), "1h")  # ends Sat 14:00 CEST
    ckpt = fit(frame, tmp_path, head="continuous", time_unit="h", observe="12h", forecast="3h", every="6h")
    frame.write_parquet(tmp_path / "new.parquet")  # a CSV keeps offsets, not the zone: its forecasts are in UTC
    args = [
        "predict",
        f"--ckpt_path={ckpt}",
        f"--data.path={tmp_path / 'new.parquet'}",
        "--query_times=[30min, 6h, 1d]",
    ]
    assert main([*args, f"--run_dir={tmp_path / 'p'}"]) == 0
    want = ["Sat 2026-10-24 14:30 CEST", "Sat 2026-10-24 20:00 CEST", "Sun 2026-10-25 14:00 CET"]  # the day: 25 h
    assert local(pl.read_parquet(tmp_path / "p" / "predictions.parquet")) == want
    job = ["--ckpt_path", str(ckpt), "--input", str(tmp_path / "new.parquet"), "--progress=false"]
    assert job_main([*job, "--output", str(tmp_path / "job"), "--query_times=[30min, 6h, 1d]"]) == 0
    assert local(pl.read_parquet(tmp_path / "job" / "*.parquet")) == want


def test_window_origins_every_day_keep_their_local_time_across_both_dst_changes():
    for start, end in ((datetime(2026, 3, 25), datetime(2026, 4, 2)), (datetime(2026, 10, 21), datetime(2026, 10, 29))):
        frame = local_series(start, end, "1h", n_series=1)
        hourly = dict(id_column="id", time_column="t", targets=["y"], time_unit="h", observe="1d", forecast="6h",
                      split_fractions=(1.0, 0.0, 0.0))  # fmt: skip
        dm = SeriesDataModule.from_frame(frame, every="1d", **hourly)
        dm.setup()
        origins = dm.decode_times(dm._built.windows["train"].origin)
        assert len(origins) == 7 and origins.dt.strftime("%H:%M").n_unique() == 1
        # in UTC: one day of 23 h or of 25 h among them
        gaps = np.diff(dm._built.windows["train"].origin)
        assert sorted(set(gaps.tolist())) == ([23.0, 24.0] if start.month == 3 else [24.0, 25.0])
        # an absolute spacing stays absolute
        dm = SeriesDataModule.from_frame(frame, every="24h", **hourly)
        dm.setup()
        np.testing.assert_array_equal(np.diff(dm._built.windows["train"].origin), 24.0)


def offsets_csv(frame: pl.DataFrame, path: Path) -> Path:
    """``frame`` as a CSV writes it: stamps with UTC offsets (+01:00 / +02:00) but no zone name."""
    frame.with_columns(pl.col("t").dt.strftime("%Y-%m-%dT%H:%M:%S%:z")).write_csv(path)
    return path


FALL_BACK = ["Sun 2026-10-25 00:00 CEST", "Mon 2026-10-26 00:00 CET", "Tue 2026-10-27 00:00 CET",
             "Wed 2026-10-28 00:00 CET"]  # fmt: skip


def test_a_csv_with_utc_offsets_read_in_its_time_zone_keeps_local_midnight_across_dst(tmp_path):
    # a CSV keeps offsets, not the zone: read as UTC, local midnight is 22:00 or 23:00 and the days drift by an
    # hour across the change; --data.time_zone names the zone
    frame = local_series(datetime(2026, 8, 1), datetime(2026, 10, 24), "1d")  # ends Sat 24 Oct, CEST
    path = offsets_csv(frame, tmp_path / "daily.csv")
    dm = SeriesDataModule(path=str(path), id_column="id", time_column="t", targets=["y"], time_unit="d", lookback=14,
                          horizon=4, calendar=["day_of_week"], time_zone=BERLIN)  # fmt: skip
    dm.setup()
    stamps = dm.decode_times(dm._built.tensors.times.numpy())
    assert stamps.dtype.time_zone == BERLIN and stamps.dt.hour().unique().to_list() == [0]
    ckpt = fit(pl.read_csv(path), tmp_path, time_unit="d", lookback=14, horizon=4, stride=7,
               calendar=["day_of_week"], time_zone=BERLIN)  # fmt: skip
    assert local(forecast_rows(ckpt, pl.read_csv(path))) == FALL_BACK
    run = tmp_path / "p"
    assert main(["predict", f"--ckpt_path={ckpt}", f"--data.path={path}", f"--run_dir={run}"]) == 0
    assert local(pl.read_parquet(run / "predictions.parquet")) == FALL_BACK
    # the same rows as naive wall-clock stamps (the training format without its offset, or another separator): read
    # in the model's zone, the same forecasts (they were all "unparseable time stamps")
    with_offsets = forecast_rows(ckpt, pl.read_csv(path))
    for stamp in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"):
        naive = frame.with_columns(pl.col("t").dt.strftime(stamp))
        assert forecast_rows(ckpt, naive).equals(with_offsets), stamp


def test_prediction_input_is_read_in_the_training_data_zone(daily, tmp_path):
    # a model trained on zone-aware Berlin stamps, given a CSV of the same rows (offsets, read as UTC): forecasts in
    # Berlin time, on local midnights across the change
    path = offsets_csv(daily["frame"], tmp_path / "daily.csv")
    assert local(forecast_rows(daily["ckpt"], pl.read_csv(path), origins=["2026-10-24"])) == FALL_BACK
    job = ["--ckpt_path", str(daily["ckpt"]), "--input", str(path), "--progress=false", "--origins=['2026-10-24']"]
    assert job_main([*job, "--output", str(tmp_path / "job")]) == 0
    assert local(pl.read_parquet(tmp_path / "job" / "*.parquet")) == FALL_BACK


def test_naive_stamps_read_in_a_time_zone_refuse_a_repeated_hour(tmp_path):
    frame = pl.DataFrame({"id": "a", "t": [datetime(2026, 10, 25, h, 30) for h in range(5)], "y": range(5)})
    with pytest.raises(UserError, match=r"2026-10-25 02:30 occurs twice in time zone Europe/Berlin"):
        SeriesDataModule.from_frame(frame, id_column="id", time_column="t", targets=["y"], lookback=2, horizon=1,
                                    time_zone=BERLIN)._ensure_built()  # fmt: skip
    with pytest.raises(UserError, match="--data.time_zone 'Europe/Berlinn' is not a time zone"):
        SeriesDataModule.from_frame(frame, id_column="id", time_column="t", targets=["y"], lookback=2, horizon=1,
                                    time_zone="Europe/Berlinn")._ensure_built()  # fmt: skip


def test_an_origin_before_the_data_skips_every_series_with_its_reason(daily, tmp_path, capsys):
    # a model with calendar inputs and no window left once every origin is skipped: the job once crashed (exit 1
    # with a traceback) building the calendar inputs of zero windows
    job = ["--ckpt_path", str(daily["ckpt"]), "--input", str(daily["root"] / "train.parquet"), "--progress=false"]
    assert job_main([*job, "--output", str(tmp_path / "job"), "--origins=['2025-06-01']"]) == 1
    skipped = pl.read_csv(tmp_path / "job" / "skipped_series.csv")
    assert skipped.height == 2 and skipped["reason"].str.contains("too short for the model's context").all()
    assert "nothing could be forecast" in capsys.readouterr().out
