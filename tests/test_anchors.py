"""Origins on the clock (``origin_anchor``): a car-park-style frame built here, readings 08:00-16:30 Europe/Berlin
every 30 minutes across the change to summer time (29 March 2026); one origin per day at 12:00 local, in training
windows, in ``forecast_rows`` (``predict`` and the batch job) and in the backtest."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest

from cfc_forecast.errors import UserError
from cfc_forecast.forecast import forecast_rows
from cfc_forecast.forecast import main as job_main
from datamodules import SeriesDataModule
from datamodules.build import make_windows
from datamodules.io import SERIES, TIME
from datamodules.stamps import anchor_origins, parse_anchor
from datamodules.timing import TimeCodec
from tests.conftest import model_for

ZONE = "Europe/Berlin"
DAYS = [date(2026, 3, 23) + timedelta(days=d) for d in range(12)]  # 23 March - 3 April


def car_park(days: list[date] = DAYS) -> pl.DataFrame:
    """Two car parks, occupancy every 30 min from 08:00 to 16:30 local time."""
    rng = np.random.default_rng(0)
    rows = []
    for park in ("north", "south"):
        for d in days:
            for k in range(18):  # 08:00 .. 16:30
                stamp = datetime(d.year, d.month, d.day, 8) + timedelta(minutes=30 * k)
                rows.append((park, stamp, 50 + 30 * np.sin(np.pi * k / 17) + rng.normal()))
    frame = pl.DataFrame(rows, schema=["park", "t", "occupied"], orient="row")
    return frame.with_columns(pl.col("t").dt.replace_time_zone(ZONE))


def anchored(frame: pl.DataFrame, **kwargs: object) -> SeriesDataModule:
    args = dict(id_column="park", time_column="t", targets=["occupied"], observe="4h", forecast="4h", every="1d",
                origin_anchor="12:00", batch_size=8)  # fmt: skip
    return SeriesDataModule.from_frame(frame, **{**args, **kwargs})


def local(stamps: pl.Series) -> list[str]:
    return stamps.dt.strftime("%m-%d %H:%M %z").to_list()


def test_one_origin_per_day_at_noon_local_across_the_dst_change():
    dm = anchored(car_park())
    dm.setup()
    table = dm._table.frame
    series, times = table[SERIES].to_numpy().astype(np.int64), table[TIME].to_numpy()
    offsets = np.searchsorted(series, np.arange(3))
    w = make_windows(series, offsets, times, dm.spec, dm._table.codec)
    stamps = dm.decode_times(w.origin)
    # the first day's 12:00 is its first reading + observe (08:00 + 4 h); the last day's 12:00 + 4 h fits before 16:30
    assert len(w) == 2 * len(DAYS) and (np.bincount(w.series) == len(DAYS)).all()
    assert set(stamps.dt.strftime("%H:%M").to_list()) == {"12:00"}
    assert local(stamps[:7]) == [f"03-{d:02d} 12:00 +0{1 if d < 29 else 2}00" for d in range(23, 30)]
    gaps = np.diff(w.origin[w.series == 0]) * 3600  # hours -> seconds
    assert gaps.tolist() == [86400] * 5 + [82800] + [86400] * 5  # 23 h from the 28th to the 29th
    # no reading is needed at the anchor: inputs [08:00, 12:00), targets [12:00, 16:00]
    first = w.select(np.arange(len(w)) == 0)
    assert (first.in_hi - first.in_lo)[0] == 8 and (first.tg_hi - first.tg_lo)[0] == 9
    # the splits take whole windows; each of them keeps its noon origin
    built = np.concatenate([dm._built.windows[s].origin for s in ("train", "val", "test")])
    assert set(dm.decode_times(built).dt.strftime("%H:%M").to_list()) == {"12:00"}


def test_anchor_rules_and_refusals():
    assert parse_anchor("12:00") == (None, 720) and parse_anchor("Mon 06:30") == (1, 390)
    for bad in ("25:00", "noon", "Xyz 06:00"):
        with pytest.raises(UserError, match="origin_anchor"):
            parse_anchor(bad)
    frame = car_park(DAYS[:3])
    with pytest.raises(UserError, match="count windows"):
        SeriesDataModule.from_frame(frame, id_column="park", time_column="t", lookback=4, horizon=2,
                                    origin_anchor="12:00")  # fmt: skip
    with pytest.raises(UserError, match="every whole day"):
        anchored(frame, every="6h")
    with pytest.raises(UserError, match="every whole week"):
        anchored(frame, origin_anchor="Mon 06:00", every="1d")
    numeric = pl.DataFrame({"park": ["a"] * 20, "t": np.arange(20.0), "occupied": np.arange(20.0)})
    with pytest.raises(UserError, match="date-time"):
        anchored(numeric, observe=4.0, forecast=4.0, every="1d").setup()


def test_weekly_anchor_and_a_skipped_local_time():
    codec = TimeCodec("h", True, ZONE)
    start = pl.select(codec.encode(pl.lit(datetime(2026, 3, 1)).dt.replace_time_zone(ZONE))).item()
    owner, origin, skipped = anchor_origins(np.array([start]), np.array([start + 24 * 40]), "Mon 06:00", 7, codec)
    assert local(codec.decode(origin)) == ["03-02 06:00 +0100", "03-09 06:00 +0100", "03-16 06:00 +0100",
                                           "03-23 06:00 +0100", "03-30 06:00 +0200", "04-06 06:00 +0200"]  # fmt: skip
    # 02:30 does not exist on 29 March in Berlin: no origin that day, and it is counted
    owner, origin, skipped = anchor_origins(np.array([start]), np.array([start + 24 * 40]), "02:30", 1, codec)
    assert skipped == 1 and len(origin) == 39


def test_predict_and_the_batch_job_forecast_from_each_series_last_anchor(tmp_path):
    frame = car_park()
    dm = anchored(frame)
    dm.setup()
    L.seed_everything(0, verbose=False)
    model = model_for(dm, hidden_size=8, backbone_units=8, head="continuous")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, dm)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    got = forecast_rows(str(ckpt), frame)
    assert local(got["origin_time"].unique()) == ["04-03 12:00 +0200"]  # the last day's noon, not its 16:30
    frame.write_parquet(tmp_path / "rows.parquet")  # the batch job prepares its chunks the same way
    args = ["--ckpt_path", str(ckpt), "--input", str(tmp_path / "rows.parquet"), "--output", str(tmp_path / "job")]
    assert job_main([*args, "--progress=false"]) == 0
    job = pl.read_parquet(sorted((tmp_path / "job").glob("part-*.parquet")))
    assert local(job["origin_time"].unique()) == ["04-03 12:00 +0200"] and job.height == got.height
    # readings up to 11:30 on 3 April: the last noon is 2 April's
    early = frame.filter(pl.col("t") < datetime(2026, 4, 3, 12).replace(tzinfo=got["origin_time"][0].tzinfo))
    assert local(forecast_rows(str(ckpt), early)["origin_time"].unique()) == ["04-02 12:00 +0200"]


def test_backtest_origins_are_anchor_times_across_the_dst_change():
    from cfc_forecast.backtest.plan import origins

    codec = TimeCodec("h", True, ZONE)
    end = pl.select(codec.encode(pl.lit(datetime(2026, 3, 30, 16, 30)).dt.replace_time_zone(ZONE))).item()
    # the last noon with 4 h after it before 16:30 on the 30th, then one calendar day back each
    when = origins(end, 4.0, 3, "1d", codec, "12:00")
    assert local(codec.decode(when)) == ["03-28 12:00 +0100", "03-29 12:00 +0200", "03-30 12:00 +0200"]
    assert local(codec.decode(origins(end, 5.0, 1, "1d", codec, "12:00"))) == ["03-29 12:00 +0200"]
    for step in ("5h", 3.0):  # origins `step` apart would leave the anchor (they once did, silently)
        with pytest.raises(UserError, match="anchored at '12:00'; give whole days"):
            origins(end, 4.0, 3, step, codec, "12:00")
