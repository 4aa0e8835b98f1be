"""Time stamps are never silently reinterpreted: one format per column (inferred once, refused when ambiguous, saved
in the checkpoint), local times that do not exist or exist twice are refused by name, files in several zones are
read in one, and numbers that are not in the declared time unit are named with the fix."""

from __future__ import annotations

import io
import logging

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest
import torch

from cfc_forecast.errors import UserError
from cfc_forecast.forecast import forecast_rows
from cfc_forecast.forecast import main as job_main
from datamodules import SeriesDataModule
from tests.conftest import model_for


def built(stamps: list[str], **kw: object) -> SeriesDataModule:
    frame = pl.read_csv(io.StringIO("t,y\n" + "\n".join(f"{s},{i}" for i, s in enumerate(stamps))))
    dm = SeriesDataModule.from_frame(
        frame, time_column="t", lookback=2, horizon=1, split_fractions=(1.0, 0.0, 0.0), scaling="none", **kw
    )
    dm.setup()
    return dm


def checkpoint(dm: SeriesDataModule, path) -> None:
    """A tiny model fitted on ``dm`` for one batch, saved with the DataModule's state at ``path``."""
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model_for(dm, hidden_size=8, backbone_units=8, head="direct"), dm)
    trainer.save_checkpoint(path)


def decoded(dm: SeriesDataModule) -> list[str]:
    return [str(s) for s in dm.decode_times(dm._built.tensors.times.numpy()).to_list()]


def test_utc_offsets_across_a_dst_change_are_read_as_utc_one_hour_apart():
    dm = built(["2021-10-31T00:30:00+02:00", "2021-10-31T01:30:00+02:00", "2021-10-31T02:30:00+02:00",
                "2021-10-31T02:30:00+01:00", "2021-10-31T03:30:00+01:00"])  # fmt: skip
    assert dm._table.codec.time_zone == "UTC"
    np.testing.assert_array_equal(np.diff(dm._built.tensors.times.numpy()), 1.0)


@pytest.mark.parametrize(
    ("stamps", "kw", "message"),
    [
        (["2021-01-01T00:00:00Z", "2021-01-01T01:00:00Z", "2021-01-01T02:00:00", "2021-01-01T03:00:00Z"], {},
         "mixes stamps with a UTC offset"),
        (["2021-01-01T00:00:00", "2021-01-01T01:00:00", "2021-01-01T02:00:00Z", "2021-01-01T03:00:00"], {},
         "mixes stamps with a UTC offset"),
        (["2016-12-31T23:59:58", "2016-12-31T23:59:59", "2016-12-31T23:59:60", "2017-01-01T00:00:00"],
         {"time_unit": "s"}, "leap second"),
        (["01/02/2021", "02/02/2021", "03/02/2021", "04/02/2021"], {"time_unit": "d"},
         "read as '%d/%m/%Y' or as '%m/%d/%Y'; say which with --data.time_format"),
        (["2021-01-01 00:00", "2021-01-01 01:00", "2021/01/01 02:00", "2021-01-01T03:00"], {},
         "no one format reads every stamp"),
        (["01/02/21", "02/02/21", "03/02/21", "04/02/21"], {"time_unit": "d"},  # which century, which order?
         "does not parse as date-times.*--data.time_format"),
    ],
)  # fmt: skip
def test_stamps_that_would_be_reinterpreted_are_refused_with_the_fix(stamps, kw, message):
    with pytest.raises(UserError, match=message):
        built(stamps, **kw)


def test_numbers_as_text_reach_the_command_line_as_one_line(tmp_path, capsys):
    from cfc_forecast.commands import main

    pl.DataFrame({"t": [str(1_609_459_200 + 3600 * i) for i in range(30)], "y": np.arange(30.0)}).write_parquet(
        tmp_path / "text.parquet"
    )
    args = ["fit", "--data=SeriesDataModule", f"--data.path={tmp_path / 'text.parquet'}", "--data.time_column=t",
            "--data.lookback=4", "--data.horizon=1", f"--run_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "numbers stored as text" in err[0] and "--data.time_unit" in err[0]


def test_day_first_dates_with_an_explicit_format_or_an_unambiguous_day():
    dm = built(["01/02/2021", "02/02/2021", "03/02/2021", "04/02/2021"], time_unit="d", time_format="%d/%m/%Y")
    assert decoded(dm) == [f"2021-02-0{d} 00:00:00" for d in range(1, 5)]
    dm = built(["12/02/2021", "13/02/2021", "14/02/2021", "15/02/2021"], time_unit="d")
    assert decoded(dm) == [f"2021-02-{d} 00:00:00" for d in range(12, 16)]
    assert dm._table.codec.format == "%d/%m/%Y"


def test_two_digit_years_with_their_format():
    dm = built(["01/02/21", "02/02/21", "03/02/21", "04/02/21"], time_unit="d", time_format="%d/%m/%y")
    assert decoded(dm) == [f"2021-02-0{d} 00:00:00" for d in range(1, 5)]


def test_midnight_written_as_a_date_and_optional_fractions_are_one_format():
    dm = built(["2021-01-01", "2021-01-01 06:00", "2021-01-01 12:00", "2021-01-02"])
    np.testing.assert_array_equal(np.diff(dm._built.tensors.times.numpy()), [6.0, 6.0, 12.0])
    dm = built(["2021-01-01 00:00:00", "2021-01-01 00:00:00.5", "2021-01-01 00:00:01", "2021-01-01 00:00:01.250"],
               time_unit="s")  # fmt: skip
    np.testing.assert_allclose(np.diff(dm._built.tensors.times.numpy()), [0.5, 0.5, 0.25])


def berlin_hourly(start, end) -> pl.DataFrame:
    t = pl.datetime_range(start, end, "1h", eager=True, time_zone="UTC").dt.convert_time_zone("Europe/Berlin")
    return pl.DataFrame({"t": t, "y": [float(i % 24) for i in range(len(t))]})


@pytest.mark.parametrize(
    ("arg", "value", "message"),
    [
        ("split_times", ["2021-03-28 02:30", "2021-04-01 00:00"], "split_times=.*does not exist in time zone "
         "Europe/Berlin .*'2021-03-28 02:30\\+01:00'"),
        ("origin", "2021-03-28 02:30", "origin=.*does not exist.*UTC offset"),
        ("split_times", ["2021-10-31 02:30", "2021-11-02 00:00"], "occurs twice in time zone Europe/Berlin.*"
         "'2021-10-31 02:30\\+02:00' \\(the first\\) or '2021-10-31 02:30\\+01:00' \\(the second\\)"),
    ],
)  # fmt: skip
def test_local_times_that_do_not_exist_or_exist_twice_are_refused_by_name(arg, value, message):
    frame = berlin_hourly(pl.datetime(2021, 3, 20), pl.datetime(2021, 11, 5))
    window = {"origin": value, "observe": "1d", "forecast": "6h"} if arg == "origin" else {arg: value}
    if arg != "origin":
        window |= {"lookback": 24, "horizon": 6}
    with pytest.raises(UserError, match=message):
        SeriesDataModule.from_frame(frame, time_column="t", **window).setup()


def test_a_repeated_local_time_with_its_offset_is_exact(tmp_path, capsys):
    from datamodules.stamps import user_time
    from datamodules.timing import TimeCodec

    codec = TimeCodec("h", True, "Europe/Berlin")
    first, second = (user_time(f"2021-10-31 02:30{o}", codec, "origin") for o in ("+02:00", "+01:00"))
    assert second - first == 1.0
    frame = berlin_hourly(pl.datetime(2021, 10, 25), pl.datetime(2021, 11, 5))
    dm = SeriesDataModule.from_frame(frame, time_column="t", lookback=24, horizon=6,
                                     split_times=["2021-10-31 02:30+01:00", "2021-11-02"])  # fmt: skip
    dm.setup()
    assert dm._built.windows["val"].origin.min() >= second - 1.0  # no target before the cut-off in val
    # the batch job: an ambiguous --origins is one line and exit status 2
    frame.with_columns(pl.lit("a").alias("id")).write_parquet(tmp_path / "berlin.parquet")
    dm = SeriesDataModule(str(tmp_path / "berlin.parquet"), id_column="id", time_column="t", lookback=24, horizon=6)
    dm.setup()
    checkpoint(dm, tmp_path / "m.ckpt")
    capsys.readouterr()
    job = ["--ckpt_path", str(tmp_path / "m.ckpt"), "--input", str(tmp_path / "berlin.parquet"), "--progress=false"]
    assert job_main([*job, "--output", str(tmp_path / "o"), "--origins=['2021-10-31 02:30']"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cfc-forecast forecast: error: --origins='2021-10-31 02:30'")
    assert job_main([*job, "--output", str(tmp_path / "o"), "--origins=['2021-10-31 02:30+01:00']"]) == 0


@pytest.mark.parametrize("how", ["first", "last"])
def test_long_layout_duplicates_keep_the_first_or_last_row_of_the_input(how):
    ids, ts = np.repeat(np.arange(2), 50), np.tile(np.arange(50), 2).astype(float)
    orig = pl.DataFrame({"id": ids, "t": ts, "variable": "y", "value": 0.0})
    long = pl.concat([orig, orig.with_columns(pl.lit(1.0).alias("value"))])  # every reading re-sent with value 1
    for layout, frame in [("long", long), ("wide", long.rename({"value": "y"}).drop("variable"))]:
        dm = SeriesDataModule.from_frame(frame, id_column="id", time_column="t", time_unit="step", lookback=4,
                                         horizon=1, scaling="none", duplicates=how, layout=layout)  # fmt: skip
        dm.setup()
        assert (dm._table.frame["y"].to_numpy() == (0.0 if how == "first" else 1.0)).all(), layout


def zone_files(tmp_path) -> tuple[str, str, str]:
    a = pl.datetime_range(pl.datetime(2021, 1, 1), pl.datetime(2021, 1, 31, 23), "1h", eager=True, time_zone="UTC")
    b = pl.datetime_range(pl.datetime(2021, 2, 1), pl.datetime(2021, 2, 28, 23), "1h", eager=True)
    pl.DataFrame({"t": a.dt.convert_time_zone("Europe/Berlin"), "y": np.arange(len(a), dtype=float)}).write_parquet(
        tmp_path / "a_jan.parquet"
    )
    y = np.arange(len(a), len(a) + len(b), dtype=float)
    pl.DataFrame({"t": b, "y": y}).write_parquet(tmp_path / "b_feb.parquet")
    pl.DataFrame({"t": b.dt.replace_time_zone("UTC"), "y": y}).write_parquet(tmp_path / "c_feb_utc.parquet")
    return tuple(str(tmp_path / n) for n in ("a_jan.parquet", "b_feb.parquet", "c_feb_utc.parquet"))


def test_files_in_two_zones_are_read_in_one_and_aware_with_naive_is_refused(tmp_path):
    a, b, c = zone_files(tmp_path)
    with pytest.raises(UserError, match=r"a_jan.parquet \(Europe/Berlin\).*b_feb.parquet.*without one"):
        SeriesDataModule([a, b], time_column="t", lookback=24, horizon=6).setup()
    dm = SeriesDataModule([a, c], time_column="t", lookback=24, horizon=6)
    dm.setup()
    assert dm._table.codec.time_zone == "Europe/Berlin"
    np.testing.assert_array_equal(np.diff(dm._built.tensors.times.numpy()), 1.0)  # no gap, no overlap


def test_the_job_reads_files_in_two_zones_in_one_and_refuses_aware_with_naive(tmp_path, capsys):
    a, b, c = zone_files(tmp_path)
    dm = SeriesDataModule([a, c], time_column="t", lookback=24, horizon=6, batch_size=32)
    dm.setup()
    checkpoint(dm, tmp_path / "m.ckpt")
    job = ["--ckpt_path", str(tmp_path / "m.ckpt"), "--progress=false"]
    assert job_main([*job, f"--input=['{a}', '{c}']", "--output", str(tmp_path / "ok")]) == 0
    out = pl.read_parquet(tmp_path / "ok" / "*.parquet")
    # after the last stamp, 2021-02-28 23:00 UTC: hourly, in the first file's zone
    assert out["time"].dt.strftime("%Y-%m-%d %H:%M %Z").unique().sort().to_list() == [
        f"2021-03-01 {h:02d}:00 CET" for h in range(1, 7)
    ]
    capsys.readouterr()
    assert job_main([*job, f"--input=['{a}', '{b}']", "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a_jan.parquet (Europe/Berlin)" in err[0] and "b_feb.parquet" in err[0]


def test_a_numeric_column_with_empty_cells_as_time_column_names_the_option():
    frame = pl.DataFrame({"t": [1.0, None, 3.0, None, 5.0, 6.0], "y": np.arange(6.0)})
    with pytest.raises(UserError, match="time column 't' holds numbers with 2 empty cells.*--data.time_column"):
        SeriesDataModule.from_frame(frame, time_column="t", lookback=2, horizon=1).setup()


def test_epoch_seconds_with_time_unit_h_are_named_with_the_fix(caplog):
    t = 1.6e9 + 3600.0 * np.arange(120)
    frame = pl.DataFrame({"t": t, "y": np.sin(np.arange(120) / 6)})
    with caplog.at_level(logging.WARNING, logger="datamodules.stamps"):
        SeriesDataModule.from_frame(frame, time_column="t", lookback=16, horizon=4).setup()
    assert "3600 h apart" in caplog.text and "--data.time_unit s" in caplog.text
    with pytest.raises(UserError, match="no training window.*--data.time_unit s"):
        SeriesDataModule.from_frame(frame, time_column="t", observe="16h", forecast="4h").setup()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.stamps"):
        SeriesDataModule.from_frame(frame, time_column="t", time_unit="s", lookback=16, horizon=4).setup()
    assert "apart" not in caplog.text


def day_first_csv(days: range) -> str:
    rows = [f"s{s},{d:02d}/{m:02d}/2021 {h:02d}:00,{float(h)}" for s in range(2) for m in (1, 2) for d in days
            for h in range(0, 24, 6)]  # fmt: skip
    return "id,t,y\n" + "\n".join(rows)


def test_the_format_inferred_in_training_is_the_one_every_later_reading_uses(tmp_path):
    (tmp_path / "train.csv").write_text(day_first_csv(range(1, 29)))  # days past 12: day/month is the one reading
    dm = SeriesDataModule(str(tmp_path / "train.csv"), id_column="id", time_column="t", targets=["y"],
                          lookback=8, horizon=2, stride=4, batch_size=32)  # fmt: skip
    dm.setup()
    assert dm.state_dict()["preprocessing"]["time_format"] == "%d/%m/%Y %H:%M"
    checkpoint(dm, tmp_path / "m.ckpt")
    # new rows whose days are all <= 12: alone they could be month/day; read as in training
    (tmp_path / "new.csv").write_text(day_first_csv(range(1, 6)))
    got = forecast_rows(tmp_path / "m.ckpt", str(tmp_path / "new.csv"))
    assert [str(t) for t in got["origin_time"].unique()] == ["2021-02-05 18:00:00"]  # 5 February, not 2 May
    got = forecast_rows(tmp_path / "m.ckpt", str(tmp_path / "new.csv"), origins=["03/02/2021 00:00"])
    assert [str(t) for t in got["origin_time"].unique()] == ["2021-02-03 00:00:00"]  # an origin in the data's format
    assert job_main(["--ckpt_path", str(tmp_path / "m.ckpt"), "--input", str(tmp_path / "new.csv"), "--output",
                     str(tmp_path / "job"), "--progress=false"]) == 0  # fmt: skip
    assert str(pl.read_parquet(tmp_path / "job" / "*.parquet")["origin_time"].max()) == "2021-02-05 18:00:00"
    # a checkpoint from before the stored format still loads and forecasts (polars infers it per chunk, as then)
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    for value in ckpt.values():
        if isinstance(value, dict) and "preprocessing" in value:
            del value["preprocessing"]["time_format"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert forecast_rows(tmp_path / "old.ckpt", str(tmp_path / "new.csv")).height > 0
